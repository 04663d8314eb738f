"""Attention Transfer (Zagoruyko & Komodakis 2017, "Paying More Attention to Attention", ICLR)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.errors import ConfigError
from distill.losses.features import FeatureLossTerm


def attention_map(feature: Tensor, p: float = 2.0) -> Tensor:
    """Spatial attention of a feature map `(batch, channels, *spatial)`: `(batch, positions)`.

    The mean over channels of |f|^p (the paper's F_sum^p up to the channel count, which the
    normalization removes), flattened and L2-normalized per sample, so that only where a
    network attends matters, not how strongly its features fire.
    """
    if feature.dim() < 3:
        raise ValueError(
            f"attention_map needs a feature map (batch, channels, *spatial), got "
            f"{tuple(feature.shape)}"
        )
    attention = feature.abs().pow(p).mean(dim=1).flatten(1)
    return F.normalize(attention, p=2.0, dim=1)


def attention_transfer(student_feature: Tensor, teacher_feature: Tensor, p: float = 2.0) -> Tensor:
    """Mean over the batch of ||a_s - a_t||_2^2, with a = `attention_map(f, p)`.

    Normalization: the squared distance is summed over positions and averaged over samples.
    Both maps are unit vectors with non-negative entries, so each sample's value lies in
    [0, 2] whatever the resolution, and layers of different sizes weigh alike. The paper
    writes beta/2 * ||a_s - a_t||_p (a norm, not squared); the authors' code squares it and
    averages over samples *and* positions, which is this value divided by the number of
    positions, so its beta (10^3) shrinks as maps get larger. Channels may differ.
    """
    if student_feature.shape[0] != teacher_feature.shape[0]:
        raise ValueError(
            f"batch sizes differ: {student_feature.shape[0]} vs {teacher_feature.shape[0]}"
        )
    if student_feature.shape[2:] != teacher_feature.shape[2:]:
        raise ValueError(
            f"attention maps compare positions, and spatial sizes differ: "
            f"{tuple(student_feature.shape[2:])} vs {tuple(teacher_feature.shape[2:])}"
        )
    difference = attention_map(student_feature, p) - attention_map(teacher_feature, p)
    return difference.pow(2).sum(dim=1).mean()


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


def check_real(value: float, field: str, minimum: float, allowed: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < minimum
    ):
        raise ConfigError(field, value, allowed)
    return float(value)


class AttentionTransfer(FeatureLossTerm):
    """Activation-based attention transfer between pairs of feature maps, averaged over pairs.

    `p` is the exponent of |f|^p (the paper's default 2). Channels may differ between
    student and teacher; spatial sizes must agree, which `build` checks.
    """

    def __init__(
        self,
        student: str | Sequence[str],
        teacher: str | Sequence[str],
        p: float = 2.0,
        weight: float = 1.0,
    ) -> None:
        super().__init__(student, teacher, weight=weight)
        # Below 1, |f|^p has an infinite slope at 0, and ReLU features are often exactly 0.
        self.p = check_real(p, "p", 1.0, "a finite number >= 1 (the paper uses 2)")

    def build(
        self,
        student_shapes: Mapping[str, torch.Size],
        teacher_shapes: Mapping[str, torch.Size],
        num_train_samples: int,
    ) -> None:
        check_same_spatial_size(
            type(self).__name__,
            self.student_taps,
            self.teacher_taps,
            student_shapes,
            teacher_shapes,
        )
        super().build(student_shapes, teacher_shapes, num_train_samples)

    def pair_loss(self, student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
        return attention_transfer(student_feature, teacher_feature, self.p)
