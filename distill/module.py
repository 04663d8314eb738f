"""DistillationModule: a student learning from a frozen teacher (or from labels alone)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torchmetrics.classification import MulticlassAccuracy

from distill.ensemble import TeacherEnsemble
from distill.errors import ConfigError
from distill.losses import StepOutputs, WeightedSum
from distill.taps import FeatureTaps
from distill.teacher import FrozenTeacher
from distill.teacher_outputs import TeacherOutputs

OptimizerFactory = Callable[[Iterator[nn.Parameter]], Optimizer]
SchedulerFactory = Callable[[Optimizer], Any]

TEACHER_PREFIX = "teacher."


class DistillationModule(pl.LightningModule):
    """Trains `student` on `loss`; `teacher`, when given, is frozen for good.

    Only the student's parameters (and any the loss terms own, such as feature adapters) reach
    the optimizer. Teacher weights are kept out of checkpoints: a teacher is provisioned from
    its own checkpoint, and saving it again in every student checkpoint would only bloat them.
    Without a teacher the same module trains a model on labels alone (how teachers are trained).
    """

    def __init__(
        self,
        student: nn.Module,
        loss: WeightedSum,
        optimizer: OptimizerFactory,
        num_classes: int,
        teacher: nn.Module | None = None,
        lr_scheduler: SchedulerFactory | None = None,
        lr_scheduler_interval: str = "epoch",
        example_inputs: Tensor | None = None,
        num_train_samples: int = 0,
        teacher_outputs: TeacherOutputs | None = None,
    ) -> None:
        """`example_inputs` (one small batch) size the loss terms that need it; leave it out
        when `build_loss_terms` was already called on this loss. `teacher_outputs`, when given,
        replace the teacher's forward pass in training (batches must then carry indices)."""
        super().__init__()
        if loss.requires_teacher and teacher is None:
            raise ConfigError(
                "loss",
                sorted(n for n, t in loss.terms.items() if t.requires_teacher),
                "terms that need a teacher only when a teacher is configured",
            )
        if lr_scheduler_interval not in ("epoch", "step"):
            raise ConfigError("lr_scheduler_interval", lr_scheduler_interval, "'epoch' or 'step'")
        self.student = student
        self.teacher = (
            teacher
            if teacher is None or isinstance(teacher, (FrozenTeacher, TeacherEnsemble))
            else FrozenTeacher(teacher)
        )
        self.loss = loss
        self.teacher_outputs = teacher_outputs
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.lr_scheduler_interval = lr_scheduler_interval
        self.num_classes = num_classes

        def accuracy(top_k: int = 1) -> MulticlassAccuracy:
            return MulticlassAccuracy(num_classes=num_classes, top_k=top_k, average="micro")

        self.val_acc = accuracy()
        self.test_acc = accuracy()
        self.test_acc_top5 = accuracy(top_k=5) if num_classes > 5 else None
        self.test_teacher_acc = accuracy() if self.teacher is not None else None
        # Agreement is accuracy against the teacher's predictions instead of the labels.
        self.test_agreement = accuracy() if self.teacher is not None else None

        terms = loss.terms.values()
        self.student_taps = FeatureTaps(
            student, [k for t in terms for k in t.student_taps], field="loss (student tap)"
        )
        ensemble = self.teacher if isinstance(self.teacher, TeacherEnsemble) else None
        teacher_model = self.teacher.model if isinstance(self.teacher, FrozenTeacher) else ensemble
        self.teacher_taps = FeatureTaps(
            teacher_model if teacher_model is not None else nn.Identity(),
            [k for t in terms for k in t.teacher_taps],
            field="loss (teacher tap)",
            prefixes=ensemble.tap_prefixes() if ensemble is not None else None,
        )
        if example_inputs is not None:
            build_loss_terms(
                loss, self.student_taps, self.teacher_taps, example_inputs, num_train_samples
            )

    def forward(self, inputs: Tensor) -> Tensor:
        return self.student(inputs)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Student parameters plus those of the loss terms; never the teacher's."""
        parameters = [*self.student.parameters(), *self.loss.parameters()]
        return [p for p in parameters if p.requires_grad]

    def on_fit_start(self) -> None:
        self.student_taps.install()
        if self.teacher_outputs is None:
            self.teacher_taps.install()

    def on_fit_end(self) -> None:
        self.student_taps.remove()
        self.teacher_taps.remove()

    def teardown(self, stage: str) -> None:
        self.on_fit_end()

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        inputs, targets, *rest = batch
        self.student_taps.clear()
        self.teacher_taps.clear()
        student_logits = self.student(inputs)
        teacher_logits, ensemble_logits, ensemble_weights = None, None, None
        if self.teacher_outputs is not None and self.loss.requires_teacher:
            if not rest:
                raise RuntimeError("cached teacher outputs need batches with sample indices")
            teacher_logits, cached_features = self.teacher_outputs.lookup(rest[0], inputs.device)
            self.teacher_taps.features.update(cached_features)
        elif isinstance(self.teacher, TeacherEnsemble) and self.loss.requires_teacher:
            teacher_logits, ensemble_logits, ensemble_weights = self.teacher.outputs(
                inputs, targets
            )
        elif self.teacher is not None and self.loss.requires_teacher:
            teacher_logits = self.teacher(inputs)
        outputs = StepOutputs(
            student_logits,
            targets,
            teacher_logits,
            student_features=dict(self.student_taps.features),
            teacher_features=dict(self.teacher_taps.features),
            indices=rest[0] if rest else None,
            ensemble_logits=ensemble_logits,
            ensemble_weights=ensemble_weights,
        )
        total, terms = self.loss(outputs)
        self.student_taps.clear()
        self.teacher_taps.clear()
        batch_size = targets.shape[0]
        self.log("train/loss", total, prog_bar=True, batch_size=batch_size)
        for name, value in terms.items():
            self.log(f"train/loss_{name}", value, batch_size=batch_size)
        return total

    def validation_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        inputs, targets, *_ = batch
        logits = self.student(inputs)
        self.val_acc(logits, targets)
        loss = nn.functional.cross_entropy(logits, targets)
        self.log("val/loss", loss, batch_size=targets.shape[0])
        self.log("val/acc", self.val_acc, prog_bar=True)

    def test_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        inputs, targets, *_ = batch
        logits = self.student(inputs)
        self.test_acc(logits, targets)
        self.log("test/acc", self.test_acc)
        if self.test_acc_top5 is not None:
            self.test_acc_top5(logits, targets)
            self.log("test/acc_top5", self.test_acc_top5)
        if self.teacher is not None:
            teacher_logits = self.teacher(inputs)
            self.test_teacher_acc(teacher_logits, targets)
            self.test_agreement(logits, teacher_logits.argmax(dim=-1))
            self.log("test/teacher_acc", self.test_teacher_acc)
            self.log("test/agreement", self.test_agreement)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.trainable_parameters())
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.lr_scheduler_interval},
        }

    def on_train_epoch_start(self) -> None:
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(TEACHER_PREFIX)]:
            del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Checkpoints hold no teacher weights; put back the provisioned teacher's so that
        # Lightning's strict loading checks every student key and nothing else.
        if self.teacher is not None:
            teacher_state = {
                TEACHER_PREFIX + key: value for key, value in self.teacher.state_dict().items()
            }
            checkpoint["state_dict"].update(teacher_state)


def build_loss_terms(
    loss: WeightedSum,
    student_taps: FeatureTaps,
    teacher_taps: FeatureTaps,
    example_inputs: Tensor,
    num_train_samples: int,
) -> None:
    """Size the loss terms' own parameters (adapters, heads, banks) from one probe batch.

    Only shapes matter, so an untrained teacher will do: a run calls this before it spends
    time training the teacher, and a shape that cannot be matched stops it there.
    """
    shapes: list[dict[str, torch.Size]] = [{}, {}]
    for index, taps in enumerate((student_taps, teacher_taps)):
        if not taps.keys:
            continue
        model = taps.model
        was_training = model.training
        model.eval()  # the probe must not move BatchNorm statistics
        try:
            with taps, torch.no_grad():
                model(example_inputs)
                shapes[index] = {key: value.shape for key, value in taps.features.items()}
        finally:
            model.train(was_training)
    for term in loss.terms.values():
        term.build(shapes[0], shapes[1], num_train_samples)
