"""DistillationModule: a student learning from a frozen teacher (or from labels alone)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, cast

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import DDPStrategy, DeepSpeedStrategy, Strategy
from pytorch_lightning.trainer.states import TrainerFn
from torch import Tensor, nn
from torch.optim import Optimizer
from torchmetrics.classification import MulticlassAccuracy

from distill.divergence import finite_everywhere, loss_divergence, weights_divergence
from distill.errors import ConfigError
from distill.losses import LossTerm, StepOutputs, WeightedSum
from distill.taps import FeatureTaps
from distill.teachers import Teacher, TeacherOutputs, TeacherStep, as_teacher

OptimizerFactory = Callable[[Iterable[nn.Parameter]], Optimizer]
SchedulerFactory = Callable[[Optimizer], Any]

TEACHER_PREFIX = "teacher."


class DistillationModule(pl.LightningModule):
    """Trains `student` on `loss`; `teacher`, when given, is frozen for good.

    A `Teacher` (one frozen model or an ensemble) is driven only through its interface; a plain
    model is wrapped as a `FrozenTeacher`. The module owns the feature taps on both models
    (`student_taps`, `teacher_taps`): it builds them once, and sizes the loss terms with them.
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
        """`example_inputs` (one small batch) size the loss terms that need it (adapters,
        heads, banks), with `num_train_samples` for memory banks. `teacher_outputs`, when given
        (here or later with `use_teacher_outputs`), replace the teacher's forward pass in
        training (batches must then carry indices)."""
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
        self.teacher: Teacher | None = as_teacher(teacher) if teacher is not None else None
        self.loss = loss
        self.teacher_outputs: TeacherOutputs | None = teacher_outputs
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

        terms = loss_terms(loss)
        self.student_taps = FeatureTaps(
            student, [k for t in terms for k in t.student_taps], field="loss (student tap)"
        )
        self.teacher_taps = FeatureTaps(
            self.teacher.tap_model if self.teacher is not None else nn.Identity(),
            [k for t in terms for k in t.teacher_taps],
            field="loss (teacher tap)",
            prefixes=self.teacher.tap_prefixes() if self.teacher is not None else None,
        )
        if example_inputs is not None:
            build_loss_terms(
                loss, self.student_taps, self.teacher_taps, example_inputs, num_train_samples
            )

    @property
    def requires_indices(self) -> bool:
        """Whether training batches must carry sample indices (a term keeps per-sample state)."""
        return any(term.requires_indices for term in loss_terms(self.loss))

    def use_teacher_outputs(self, outputs: TeacherOutputs) -> None:
        """Read the teacher's outputs from `outputs` in training instead of running it (they
        are computed once the teacher is trained, after this module is built). Batches must
        then carry sample indices."""
        if self.teacher_taps.installed:
            raise RuntimeError("teacher outputs must be given before fit starts")
        self.teacher_outputs = outputs

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
        teacher = self.teacher_step(inputs, targets, rest[0] if rest else None)
        outputs = StepOutputs(
            student_logits,
            targets,
            teacher.logits if teacher is not None else None,
            student_features=dict(self.student_taps.features),
            teacher_features=dict(self.teacher_taps.features),
            indices=rest[0] if rest else None,
            ensemble_logits=teacher.member_logits if teacher is not None else None,
            ensemble_weights=teacher.member_weights if teacher is not None else None,
        )
        total, terms = self.loss(outputs)
        self.student_taps.clear()
        self.teacher_taps.clear()
        # Before backward and the update: a NaN never reaches the weights (distill.divergence).
        if not finite_everywhere(torch.isfinite(total), self.strategy):
            raise loss_divergence(
                self.loss.weights,
                total,
                terms,
                self.gather_ranks,
                self.global_step,
                self.current_epoch,
            )
        batch_size = targets.shape[0]
        self.log("train/loss", total, prog_bar=True, batch_size=batch_size)
        for name, value in terms.items():
            self.log(f"train/loss_{name}", value, batch_size=batch_size)
        return total

    def teacher_step(
        self, inputs: Tensor, targets: Tensor, indices: Tensor | None
    ) -> TeacherStep | None:
        """The teacher's part of a training step (its tapped features land in teacher_taps):
        read from the cached outputs when there are any, else from the teacher's forward
        pass; None when no loss term reads it."""
        if not self.loss.requires_teacher:
            return None
        if self.teacher_outputs is not None:
            if indices is None:
                raise RuntimeError("cached teacher outputs need batches with sample indices")
            logits, cached_features = self.teacher_outputs.lookup(indices, inputs.device)
            self.teacher_taps.features.update(cached_features)
            return TeacherStep(logits)
        if self.teacher is None:
            return None
        return self.teacher.outputs(inputs, targets)

    def validation_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        inputs, targets, *_ = batch
        logits = self.student(inputs)
        self.val_acc(logits, targets)
        loss = nn.functional.cross_entropy(logits, targets)
        # Under DDP each rank sees a shard of the validation set: average the ranks' losses.
        self.log("val/loss", loss, batch_size=targets.shape[0], sync_dist=True)
        self.log("val/acc", self.val_acc, prog_bar=True)

    def test_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        inputs, targets, *_ = batch
        logits = self.student(inputs)
        self.test_acc(logits, targets)
        self.log("test/acc", self.test_acc)
        if self.test_acc_top5 is not None:
            self.test_acc_top5(logits, targets)
            self.log("test/acc_top5", self.test_acc_top5)
        teacher_acc, agreement = self.test_teacher_acc, self.test_agreement
        if self.teacher is not None and teacher_acc is not None and agreement is not None:
            teacher_logits = self.teacher(inputs)
            teacher_acc(teacher_logits, targets)
            agreement(logits, teacher_logits.argmax(dim=-1))
            self.log("test/teacher_acc", teacher_acc)
            self.log("test/agreement", agreement)

    @property
    def strategy(self) -> Strategy | None:
        """The Trainer's strategy (how many ranks there are); None without a Trainer, when a
        step is called directly (benchmarks, tests): one process then."""
        return self._trainer.strategy if self._trainer is not None else None

    def gather_ranks(self, values: Tensor) -> Tensor:
        """`values` of every rank, stacked (ranks first) under DDP; as they are otherwise."""
        if self.strategy is None:
            return values
        return cast(Tensor, self.all_gather(values))

    def on_validation_epoch_end(self) -> None:
        # Before ModelCheckpoint saves (its hook, on_validation_end, comes after this one).
        if self.trainer.state.fn == TrainerFn.FITTING and not self.trainer.sanity_checking:
            self.stop_if_weights_not_finite()

    def on_train_epoch_end(self) -> None:
        # Without validation ModelCheckpoint saves at the end of the training epoch, in a hook
        # Lightning calls after this one.
        self.stop_if_weights_not_finite()

    def stop_if_weights_not_finite(self) -> None:
        """Raise `TrainingDiverged` if an update left a trainable weight NaN or infinite (from a
        finite loss, an overflow the loss check cannot see); before each checkpoint, one read."""
        parameters = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        if not parameters:
            return
        finite = torch.stack([torch.isfinite(p.detach()).all() for _, p in parameters])
        # Under DDP every rank holds the same weights (the same averaged gradients, the same
        # update), so each rank decides alone. A collective here ran out of step with the one a
        # rank-0-only progress bar starts at epoch end (it computes the epoch's sync_dist
        # metrics before this hook; the other ranks after it): gloo aborted the run.
        replicated = isinstance(self.strategy, DDPStrategy) and not isinstance(
            self.strategy, DeepSpeedStrategy
        )
        if not finite_everywhere(finite, None if replicated else self.strategy):
            raise weights_divergence(parameters, self.global_step, self.current_epoch)

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
        # The same on every rank; synced so that DDP logs it like every other epoch metric.
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], sync_dist=True)

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
    for term in loss_terms(loss):
        term.build(shapes[0], shapes[1], num_train_samples)


def loss_terms(loss: WeightedSum) -> list[LossTerm]:
    """The terms of `loss` (an nn.ModuleDict, which types its values as plain modules)."""
    return [cast(LossTerm, term) for term in loss.terms.values()]
