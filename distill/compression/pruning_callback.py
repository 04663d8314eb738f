"""PruningCallback: raises the student's sparsity by a schedule while it learns from the teacher."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from distill.compression.criteria import channel_mask, expand_channel_mask
from distill.compression.groups import ChannelGroup, find_channel_groups
from distill.compression.masks import attach_mask, get_mask, set_mask
from distill.compression.pruners import ChannelPruning, Magnitude, WeightCriterion
from distill.compression.schedules import SparsitySchedule
from distill.compression.selection import (
    layer_final_sparsities,
    prunable_layer_names,
    select_layers,
)
from distill.errors import ConfigError

UNITS = ("step", "epoch")


def example_inputs_for_attach(trainer: pl.Trainer, field: str, callback: pl.Callback) -> Tensor:
    """A batch to attach a compression callback with, when `fit` starts and nothing attached it
    before (the pipeline attaches before building the trainer, so checkpoint keys are stable)."""
    datamodule = trainer.datamodule
    if datamodule is None or not hasattr(datamodule, "example_input_batch"):
        raise ConfigError(
            field,
            type(callback).__name__,
            "call attach(student, example_inputs) before fit, or fit with a distill DataModule",
        )
    return datamodule.example_input_batch(2)


class PruningCallback(pl.Callback):
    """Prunes `pl_module.student` (never the teacher) by `criterion` on `schedule`.

    Masks are parametrizations attached by `attach()` before training, so checkpoint keys never
    change and a resumed run restores them with the weights. The callback's own state (the last
    update, the criterion's random state) is checkpointed too: stopping at any step and resuming
    ends with the same masks as an uninterrupted run. Masks are recomputed just before an
    optimizer step, when gradients exist (the Taylor criterion needs them), and under DDP rank
    0's masks are broadcast so every rank holds identical ones.

    `unit` says whether the schedule counts optimizer steps or epochs. `layer_sparsity` maps
    name patterns to a final sparsity of their own; the schedule's shape is scaled to reach it.
    """

    def __init__(
        self,
        criterion: WeightCriterion | ChannelPruning,
        schedule: SparsitySchedule,
        unit: str = "epoch",
        include: Sequence[str] = ("*",),
        exclude: Sequence[str] = (),
        keep_first_last_dense: bool = True,
        layer_sparsity: Mapping[str, float] | None = None,
    ) -> None:
        if unit not in UNITS:
            raise ConfigError("pruning.unit", unit, f"one of {UNITS}")
        if not isinstance(criterion, (WeightCriterion, ChannelPruning)):
            raise ConfigError(
                "pruning.criterion",
                type(criterion).__name__,
                "a criterion from distill.compression (Magnitude, NMSparsity, RandomPruning, "
                "ChannelPruning)",
            )
        if layer_sparsity and isinstance(criterion, Magnitude) and criterion.scope == "global":
            raise ConfigError(
                "pruning.layer_sparsity",
                dict(layer_sparsity),
                "no per-layer targets with a global threshold (use scope=layer)",
            )
        self.criterion = criterion
        self.schedule = schedule
        self.unit = unit
        self.include = tuple(include)
        self.exclude = tuple(exclude)
        self.keep_first_last_dense = keep_first_last_dense
        self.layer_sparsity = dict(layer_sparsity or {})
        self.layers: list[str] = []  # layers whose weights carry masks
        self.groups: list[ChannelGroup] = []  # for channel pruning
        self.final: dict[str, float] = {}  # final sparsity per layer (or per group)
        self.last_update: int | None = None

    # -- setup ---------------------------------------------------------------------------
    @property
    def attached(self) -> bool:
        return bool(self.layers)

    @property
    def removes_channels(self) -> bool:
        """Whether whole channels are pruned (the slim student can drop them)."""
        return isinstance(self.criterion, ChannelPruning)

    def attach(self, model: nn.Module, example_inputs: Tensor) -> None:
        """Choose the layers, register their masks, and check every setting against `model`."""
        selected = select_layers(model, self.include, self.exclude, self.keep_first_last_dense)
        frozen = [n for n in selected if not model.get_submodule(n).weight.requires_grad]
        if getattr(self.criterion, "needs_grad", False) and frozen:
            raise ConfigError(
                "pruning.criterion",
                type(self.criterion).__name__,
                f"a criterion without gradients for frozen layers {frozen[:5]} (taylor needs "
                "them), or exclude those layers",
            )
        finals = layer_final_sparsities(selected, self.schedule.final_sparsity, self.layer_sparsity)
        if isinstance(self.criterion, ChannelPruning):
            self.groups = find_channel_groups(model, example_inputs, selected)
            if not self.groups:
                raise ConfigError(
                    "pruning.include",
                    list(self.include),
                    "layers whose output channels can be removed together; every selected "
                    "layer is coupled to a layer kept dense (try keep_first_last_dense=false)",
                )
            self.final = {group.name: finals[group.name] for group in self.groups}
            self.layers = [name for group in self.groups for name in group.producers]
            for group in self.groups:
                for name in (*group.producers, *group.norms):
                    module = model.get_submodule(name)
                    for tensor in ("weight", "bias"):
                        if getattr(module, tensor, None) is not None:
                            attach_mask(module, tensor)
        else:
            self.final = finals
            self.layers = selected
            for name in selected:
                attach_mask(model.get_submodule(name), "weight")

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not self.attached:
            self.attach(pl_module.student, example_inputs_for_attach(trainer, "pruning", self))

    # -- updates -------------------------------------------------------------------------
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        t = trainer.global_step if self.unit == "step" else trainer.current_epoch
        if self.last_update is not None and t <= self.last_update:
            return
        if not self.schedule.is_update(t):
            return
        self.apply(pl_module.student, t, trainer)
        self.last_update = t
        metrics = self.sparsity_metrics(pl_module.student)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def target_at(self, name: str, t: int) -> float:
        """The schedule's sparsity at t, scaled to this layer's own final sparsity."""
        final = self.schedule.final_sparsity
        if final == 0:
            return 0.0
        return self.schedule.sparsity_at(t) * self.final[name] / final

    @torch.no_grad()
    def apply(self, model: nn.Module, t: int, trainer: pl.Trainer | None = None) -> None:
        """Recompute every mask for step/epoch t."""
        if isinstance(self.criterion, ChannelPruning):
            keeps = {group.name: self._group_keep(model, group, t) for group in self.groups}
        else:
            layers = {name: model.get_submodule(name) for name in self.layers}
            targets = {name: self.target_at(name, t) for name in self.layers}
            keeps = self.criterion.weight_masks(layers, targets)
        if trainer is not None and trainer.world_size > 1:
            keeps = trainer.strategy.broadcast(keeps, src=0)
        if isinstance(self.criterion, ChannelPruning):
            for group in self.groups:
                self._set_group(model, group, keeps[group.name])
        else:
            for name, keep in keeps.items():
                set_mask(model.get_submodule(name), "weight", keep)

    def _group_keep(self, model: nn.Module, group: ChannelGroup, t: int) -> Tensor:
        scores = self.criterion.channel_scores(group, model)
        # Channels already pruned stay pruned: they rank below every live channel.
        alive = get_mask(model.get_submodule(group.producers[0]), "weight").mask
        alive = alive.flatten(1).any(dim=1)
        scores = torch.where(alive, scores.clamp_min(0) + 1, torch.zeros_like(scores))
        return channel_mask(scores, self.target_at(group.name, t))

    @staticmethod
    def _set_group(model: nn.Module, group: ChannelGroup, keep: Tensor) -> None:
        for name in (*group.producers, *group.norms):
            module = model.get_submodule(name)
            for tensor in ("weight", "bias"):
                if get_mask(module, tensor) is not None:
                    shape = getattr(module, tensor).shape
                    set_mask(module, tensor, expand_channel_mask(keep, shape))

    @staticmethod
    def sparsity_metrics(model: nn.Module) -> dict[str, float]:
        """`sparsity/global` over all conv/linear weights, and `sparsity/<layer>` for each."""
        metrics, zeros, total = {}, 0, 0
        for name in prunable_layer_names(model):
            weight = model.get_submodule(name).weight
            layer_zeros = int((weight == 0).sum())
            metrics[f"sparsity/{name}"] = layer_zeros / weight.numel()
            zeros, total = zeros + layer_zeros, total + weight.numel()
        metrics["sparsity/global"] = zeros / total
        return metrics

    # -- checkpointing -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "last_update": self.last_update,
            "layers": list(self.layers),
            "final": dict(self.final),
            "criterion": self.criterion.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.layers and state_dict["layers"] != self.layers:
            raise ConfigError(
                "ckpt_path",
                "pruning state",
                f"a checkpoint pruned on the same layers; it has {state_dict['layers'][:5]}..., "
                f"this run prunes {self.layers[:5]}...",
            )
        self.last_update = state_dict["last_update"]
        self.criterion.load_state_dict(state_dict["criterion"])
