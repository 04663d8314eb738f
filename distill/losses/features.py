"""Base for terms that compare intermediate features of student and teacher."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from distill.errors import ConfigError
from distill.losses.base import LossTerm, StepOutputs
from distill.validate import require_choice

ADAPTERS = ("auto", "none")


def as_tap_list(value: str | Sequence[str], field: str) -> list[str]:
    taps = [value] if isinstance(value, str) else list(value)
    if not taps or not all(isinstance(tap, str) and tap for tap in taps):
        raise ConfigError(field, value, "a module name or a list of module names")
    return taps


def batch_vectors(
    student_feature: Tensor, teacher_feature: Tensor, min_batch: int, what: str
) -> tuple[Tensor, Tensor]:
    """Both features flattened to `(batch, -1)`, for terms that relate samples in a batch."""
    batch = student_feature.shape[0]
    if teacher_feature.shape[0] != batch:
        raise ValueError(
            f"student and teacher batches differ: {batch} vs {teacher_feature.shape[0]}"
        )
    if batch < min_batch:
        raise ValueError(
            f"{what} needs at least {min_batch} samples in a batch; got a batch of {batch}"
        )
    return student_feature.reshape(batch, -1), teacher_feature.reshape(batch, -1)


def check_same_spatial_size(
    term: str,
    student_taps: Sequence[str],
    teacher_taps: Sequence[str],
    student_shapes: Mapping[str, torch.Size],
    teacher_shapes: Mapping[str, torch.Size],
) -> None:
    """Each pair must be feature maps with equal spatial sizes (channels may differ).

    Raised at build time, before training, naming the pair: these terms compare positions
    (or per-channel spatial patterns), and no adapter changes resolution.
    """
    for student_tap, teacher_tap in zip(student_taps, teacher_taps, strict=True):
        s_shape, t_shape = tuple(student_shapes[student_tap]), tuple(teacher_shapes[teacher_tap])
        for field, tap, shape in (
            ("student", student_tap, s_shape),
            ("teacher", teacher_tap, t_shape),
        ):
            if len(shape) < 3:
                raise ConfigError(
                    field,
                    tap,
                    f"a tap giving a feature map (batch, channels, *spatial) for {term}; "
                    f"{tap} gives {shape}",
                )
        if s_shape[2:] != t_shape[2:]:
            raise ConfigError(
                "teacher",
                teacher_tap,
                f"a tap with the spatial size of student {student_tap}: {term} compares "
                f"spatial maps, and student {student_tap} gives {s_shape[1:]} while teacher "
                f"{teacher_tap} gives {t_shape[1:]} (channels, *spatial); choose taps with "
                f"the same spatial size",
            )


def make_adapter(student_shape: torch.Size, teacher_shape: torch.Size) -> nn.Module:
    """A learned map from a student feature to the teacher's shape.

    1x1 convolution for feature maps (FitNets' regressor, Romero et al. 2015), linear for
    vectors. Spatial sizes must already agree: an adapter changes channels, not resolution.
    """
    if len(student_shape) != len(teacher_shape):
        raise ValueError(f"ranks differ: {tuple(student_shape)} vs {tuple(teacher_shape)}")
    if len(student_shape) == 2:
        return nn.Linear(student_shape[1], teacher_shape[1], bias=False)
    if student_shape[2:] != teacher_shape[2:]:
        raise ValueError(
            f"spatial sizes differ: {tuple(student_shape[2:])} vs {tuple(teacher_shape[2:])}"
        )
    conv = {3: nn.Conv1d, 4: nn.Conv2d, 5: nn.Conv3d}.get(len(student_shape))
    if conv is None:
        raise ValueError(f"no adapter for features of rank {len(student_shape)}")
    return nn.Sequential(
        conv(student_shape[1], teacher_shape[1], kernel_size=1, bias=False),
        {3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}[len(student_shape)](
            teacher_shape[1]
        ),
    )


class FeatureLossTerm(LossTerm):
    """A term over pairs of (student tap, teacher tap), averaged over the pairs.

    `student` and `teacher` name modules (`named_modules()` names, `:in` for a module's input)
    and pair up in order. Subclasses implement `pair_loss(student_feature, teacher_feature)`.
    Terms whose formula compares features element by element set `needs_same_shape`: where a
    pair's shapes differ, an adapter maps the student feature to the teacher's shape
    (`adapter="auto"`), or the run stops with an error (`adapter="none"`). Adapters belong to
    the term, are optimized with the student, and are not part of the exported student.
    """

    requires_teacher = True
    needs_same_shape = False
    # Terms that compare positions (attention maps, channel patterns) need pairs of feature
    # maps with the same spatial size; an adapter changes channels, not resolution.
    needs_same_spatial_size = False
    # Terms that relate samples within a batch need a few of them; a smaller batch (the last,
    # partial one of an epoch) contributes zero instead of stopping the run.
    min_batch = 1

    def __init__(
        self,
        student: str | Sequence[str],
        teacher: str | Sequence[str],
        weight: float = 1.0,
        adapter: str = "auto",
    ) -> None:
        super().__init__(weight)
        self._student_taps = as_tap_list(student, "student")
        self._teacher_taps = as_tap_list(teacher, "teacher")
        if len(self._student_taps) != len(self._teacher_taps):
            raise ConfigError(
                "teacher",
                self._teacher_taps,
                f"as many teacher taps as student taps ({len(self._student_taps)}), in pairs",
            )
        self.adapter_mode = require_choice("adapter", adapter, ADAPTERS)
        self.adapters = nn.ModuleList()

    @property
    def student_taps(self) -> list[str]:
        return list(self._student_taps)

    @property
    def teacher_taps(self) -> list[str]:
        return list(self._teacher_taps)

    def build(
        self,
        student_shapes: Mapping[str, torch.Size],
        teacher_shapes: Mapping[str, torch.Size],
        num_train_samples: int,
    ) -> None:
        if self.needs_same_spatial_size:
            check_same_spatial_size(
                type(self).__name__,
                self._student_taps,
                self._teacher_taps,
                student_shapes,
                teacher_shapes,
            )
        self.adapters = nn.ModuleList()
        for student_tap, teacher_tap in zip(self._student_taps, self._teacher_taps, strict=True):
            s_shape, t_shape = student_shapes[student_tap], teacher_shapes[teacher_tap]
            if not self.needs_same_shape or s_shape[1:] == t_shape[1:]:
                self.adapters.append(nn.Identity())
                continue
            if self.adapter_mode == "none":
                raise ConfigError(
                    "adapter",
                    "none",
                    f"'auto' (student {student_tap} gives {tuple(s_shape[1:])}, teacher "
                    f"{teacher_tap} gives {tuple(t_shape[1:])}: shapes differ)",
                )
            try:
                self.adapters.append(make_adapter(s_shape, t_shape))
            except ValueError as error:
                raise ConfigError(
                    "student",
                    student_tap,
                    f"a student feature the teacher's {teacher_tap} can be matched to ({error})",
                ) from error

    def pair_loss(self, student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
        raise NotImplementedError

    def compute(self, outputs: StepOutputs) -> Tensor:
        if len(self.adapters) != len(self._student_taps):
            raise RuntimeError(f"{type(self).__name__}.build() was not called before training")
        if outputs.student_logits.shape[0] < self.min_batch:
            return outputs.student_logits.sum() * 0.0
        losses = [
            self.pair_loss(
                adapter(outputs.student_features[student_tap]),
                outputs.teacher_features[teacher_tap],
            )
            for adapter, student_tap, teacher_tap in zip(
                self.adapters, self._student_taps, self._teacher_taps, strict=True
            )
        ]
        return torch.stack(losses).mean()
