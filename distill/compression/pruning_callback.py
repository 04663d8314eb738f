"""PruningCallback: raises the student's sparsity by a schedule while it learns from the teacher."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from distill.compression.pruners import PruningCriterion
from distill.compression.pruning_strategies import PruningStrategy, strategy_for
from distill.compression.schedules import SparsitySchedule
from distill.compression.selection import (
    layer_final_sparsities,
    layer_weight,
    select_layers,
)
from distill.errors import ConfigError
from distill.validate import require_bool, require_choice

UNITS = ("step", "epoch")


def example_inputs_for_attach(trainer: pl.Trainer, field: str, callback: pl.Callback) -> Tensor:
    """A batch to attach a compression callback with, when `fit` starts and nothing attached it
    before (the pipeline attaches before building the trainer, so checkpoint keys are stable)."""
    datamodule = getattr(trainer, "datamodule", None)
    if datamodule is None or not hasattr(datamodule, "example_input_batch"):
        raise ConfigError(
            field,
            type(callback).__name__,
            "call attach(student, example_inputs) before fit, or fit with a distill DataModule",
        )
    return cast(Tensor, datamodule.example_input_batch(2))


@dataclass(frozen=True)
class MaskUpdate:
    """The `index`-th mask update of this process, made at optimizer step `step`."""

    index: int
    step: int


class PruningCallback(pl.Callback):
    """Prunes `pl_module.student` (never the teacher) by `criterion` on `schedule`.

    Masks are parametrizations attached by `attach()` before training, so checkpoint keys never
    change and a resumed run restores them with the weights. The callback's own state (the last
    update, the criterion's random state) is checkpointed too: stopping at any step and resuming
    ends with the same masks as an uninterrupted run. Masks are recomputed just before an
    optimizer step, when gradients exist (the Taylor criterion needs them), and under DDP rank
    0's masks are broadcast so every rank holds identical ones.

    How masks are attached and applied is the criterion's strategy (`pruning_strategies.py`):
    per weight, or per coupled channel group. `unit` says whether the schedule counts
    optimizer steps or epochs. `layer_sparsity` maps name patterns to a final sparsity of their
    own; the schedule's shape is scaled to reach it. `round_to` (channel pruning only; null or
    1 is off) makes every update keep a multiple of that many channels in each coupled group,
    to match the channel blocks of CPU kernels: the schedule's sparsity is then a target, and
    what is logged and recorded is the sparsity the masks achieve. `SparsityLogger` logs each
    update.
    """

    def __init__(
        self,
        criterion: PruningCriterion,
        schedule: SparsitySchedule,
        unit: str = "epoch",
        include: Sequence[str] = ("*",),
        exclude: Sequence[str] = (),
        keep_first_last_dense: bool = True,
        layer_sparsity: Mapping[str, float] | None = None,
        round_to: int | None = None,
    ) -> None:
        self.unit = require_choice("pruning.unit", unit, UNITS)
        self.strategy: PruningStrategy = strategy_for(criterion, round_to)
        if layer_sparsity and not criterion.per_layer_targets:
            raise ConfigError(
                "pruning.layer_sparsity",
                dict(layer_sparsity),
                "no per-layer targets with a global threshold (use scope=layer)",
            )
        self.criterion = criterion
        self.schedule = schedule  # its fractions of the run become counts in resolve_schedule
        self.schedule_resolved = False
        self.include = tuple(include)
        self.exclude = tuple(exclude)
        self.keep_first_last_dense = require_bool(
            "pruning.keep_first_last_dense", keep_first_last_dense
        )
        self.layer_sparsity = dict(layer_sparsity or {})
        self.last_update: int | None = None  # t (step or epoch) of the last mask update
        self.latest_update: MaskUpdate | None = None  # what SparsityLogger watches

    # -- what the strategy chose ---------------------------------------------------------
    @property
    def layers(self) -> list[str]:
        """Layers whose weights carry masks."""
        return self.strategy.layers

    @property
    def final(self) -> dict[str, float]:
        """Final sparsity per layer (or per channel group, named by its first layer)."""
        return self.strategy.final

    @property
    def removes_channels(self) -> bool:
        """Whether pruned channels are whole, so the trained student can be slimmed."""
        return self.strategy.removes_channels

    @property
    def round_to(self) -> int:
        """Channels kept per group are a multiple of this (1: any count)."""
        return self.strategy.round_to

    @property
    def attached(self) -> bool:
        return bool(self.layers)

    # -- setup ---------------------------------------------------------------------------
    def attach(self, model: nn.Module, example_inputs: Tensor) -> None:
        """Choose the layers, register their masks, and check every setting against `model`."""
        selected = select_layers(model, self.include, self.exclude, self.keep_first_last_dense)
        frozen = [n for n in selected if not layer_weight(model.get_submodule(n)).requires_grad]
        if self.criterion.needs_grad and frozen:
            raise ConfigError(
                "pruning.criterion",
                type(self.criterion).__name__,
                f"a criterion without gradients for frozen layers {frozen[:5]} (taylor needs "
                "them), or exclude those layers",
            )
        finals = layer_final_sparsities(selected, self.schedule.final_sparsity, self.layer_sparsity)
        self.strategy.attach(model, example_inputs, selected, finals)

    def resolve_schedule(self, run_length: int | None) -> None:
        """Turn the schedule's fractions into epochs (or steps: `unit`) of a run `run_length`
        long, and refuse a schedule that would not reach its target within it."""
        self.schedule = self.check_schedule(run_length)
        self.schedule_resolved = True

    def check_schedule(self, run_length: int | None) -> SparsitySchedule:
        """The schedule resolved for a run `run_length` long, this callback left as it is; a
        ConfigError naming the pruning field if it would not reach its target within it."""
        length_name = "trainer.max_epochs" if self.unit == "epoch" else "the fit's optimizer steps"
        try:
            return self.schedule.resolved(run_length, length_name, self.unit)
        except ConfigError as error:
            raise ConfigError(f"pruning.{error.field}", error.value, error.allowed) from error

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not self.attached:
            self.attach(_student(pl_module), example_inputs_for_attach(trainer, "pruning", self))
        if not self.schedule_resolved:
            # Steps are known only now; the pipeline resolves an epoch schedule before any work.
            length = (
                trainer.max_epochs if self.unit == "epoch" else trainer.estimated_stepping_batches
            )
            finite = length is not None and length not in (-1, float("inf"))
            self.resolve_schedule(int(length) if length is not None and finite else None)

    # -- updates -------------------------------------------------------------------------
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        t = trainer.global_step if self.unit == "step" else trainer.current_epoch
        if self.last_update is not None and t <= self.last_update:
            return
        if not self.schedule.is_update(t):
            return
        self.apply(_student(pl_module), t, trainer)
        self.last_update = t
        index = self.latest_update.index + 1 if self.latest_update else 0
        self.latest_update = MaskUpdate(index=index, step=trainer.global_step)

    def target_at(self, name: str, t: int) -> float:
        """The schedule's sparsity at t, scaled to this unit's own final sparsity."""
        final = self.schedule.final_sparsity
        if final == 0:
            return 0.0
        return self.schedule.sparsity_at(t) * self.final[name] / final

    @torch.no_grad()
    def apply(self, model: nn.Module, t: int, trainer: pl.Trainer | None = None) -> None:
        """Recompute every mask for step/epoch t."""
        targets = {name: self.target_at(name, t) for name in self.final}
        keeps = self.strategy.masks_for(model, targets)
        if trainer is not None and trainer.world_size > 1:
            keeps = trainer.strategy.broadcast(keeps, src=0)
        self.strategy.apply(model, keeps)

    # -- checkpointing -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "last_update": self.last_update,
            "layers": list(self.layers),
            "final": dict(self.final),
            "round_to": self.round_to,
            "criterion": self.strategy.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.layers and state_dict["layers"] != self.layers:
            raise ConfigError(
                "ckpt_path",
                "pruning state",
                f"a checkpoint pruned on the same layers; it has {state_dict['layers'][:5]}..., "
                f"this run prunes {self.layers[:5]}...",
            )
        # Checkpoints from before round_to existed rounded nothing.
        saved_round_to = state_dict.get("round_to", 1)
        if saved_round_to != self.round_to:
            raise ConfigError(
                "pruning.round_to",
                self.round_to,
                f"the checkpoint's round_to={saved_round_to}: its masks were rounded so, and a "
                "resumed run must keep rounding the same way to end with the same masks",
            )
        self.last_update = state_dict["last_update"]
        self.strategy.load_state_dict(state_dict["criterion"])


def _student(pl_module: pl.LightningModule) -> nn.Module:
    """The module pruned: a DistillationModule's student."""
    return cast(nn.Module, pl_module.student)
