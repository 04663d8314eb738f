"""How a criterion's masks are attached to and applied on the student: per weight, or per
coupled channel group. `PruningCallback` owns the schedule and layer selection and hands
each update's per-unit targets to one of these.

A strategy's units are what a final sparsity is given for: layers (`UnstructuredStrategy`) or
channel groups named by their first producer (`ChannelGroupStrategy`).
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

import torch
from torch import Tensor, nn

from distill.compression.criteria import (
    ROUND_TO_ALLOWED,
    channel_mask,
    expand_channel_mask,
    kept_channels,
)
from distill.compression.groups import ChannelGroup, find_channel_groups
from distill.compression.masks import attach_mask, get_mask, set_mask
from distill.compression.pruners import ChannelPruning, PruningCriterion, WeightCriterion
from distill.errors import ConfigError
from distill.validate import require_int

log = logging.getLogger(__name__)

# Masked tensors of a layer in a channel group: a zeroed channel needs its bias zeroed too.
CHANNEL_TENSORS = ("weight", "bias")


class PruningStrategy(abc.ABC):
    """Attach masks for a criterion, compute new keep-masks for given targets, apply them."""

    criterion: PruningCriterion

    def __init__(self) -> None:
        self.layers: list[str] = []  # layers whose weights carry masks
        self.final: dict[str, float] = {}  # final sparsity per unit
        self.round_to = 1  # channels kept per group: a multiple of this (channel groups only)

    @property
    def removes_channels(self) -> bool:
        return self.criterion.removes_channels

    @abc.abstractmethod
    def attach(
        self,
        model: nn.Module,
        example_inputs: Tensor,
        selected: Sequence[str],
        finals: Mapping[str, float],
    ) -> None:
        """Choose the units among the `selected` layers (final sparsity per layer in `finals`)
        and register their masks."""

    @abc.abstractmethod
    def masks_for(self, model: nn.Module, targets: Mapping[str, float]) -> dict[str, Tensor]:
        """Keep-masks, one per unit, for the sparsity `targets` of each unit."""

    @abc.abstractmethod
    def apply(self, model: nn.Module, keeps: Mapping[str, Tensor]) -> None:
        """Write the keep-masks of `masks_for` (possibly broadcast from rank 0) into the model."""

    def state_dict(self) -> dict[str, Any]:
        return self.criterion.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.criterion.load_state_dict(state)


class UnstructuredStrategy(PruningStrategy):
    """One mask per selected layer's weight (magnitude per layer or global, N:M, random)."""

    def __init__(self, criterion: WeightCriterion) -> None:
        super().__init__()
        self.criterion: WeightCriterion = criterion

    def attach(
        self,
        model: nn.Module,
        example_inputs: Tensor,
        selected: Sequence[str],
        finals: Mapping[str, float],
    ) -> None:
        self.final = dict(finals)
        self.layers = list(selected)
        for name in self.layers:
            attach_mask(model.get_submodule(name), "weight")

    def masks_for(self, model: nn.Module, targets: Mapping[str, float]) -> dict[str, Tensor]:
        layers = {name: model.get_submodule(name) for name in self.layers}
        return self.criterion.weight_masks(layers, targets)

    def apply(self, model: nn.Module, keeps: Mapping[str, Tensor]) -> None:
        for name, keep in keeps.items():
            set_mask(model.get_submodule(name), "weight", keep)


class ChannelGroupStrategy(PruningStrategy):
    """Whole output channels of coupled groups (found by `find_channel_groups`): one channel
    mask per group, on the weight and bias of its producers and of the norms after them.

    With `round_to` > 1 every update keeps a multiple of `round_to` channels per group
    (`criteria.kept_channels` says how it rounds), so the slim model's layers match the channel
    blocks of CPU kernels (onnxruntime's NCHWc: 8 on AVX2, 16 on AVX-512; XNNPACK likewise).
    """

    def __init__(self, criterion: ChannelPruning, round_to: int = 1) -> None:
        super().__init__()
        self.criterion: ChannelPruning = criterion
        self.round_to = require_int("round_to", round_to, minimum=1, allowed=ROUND_TO_ALLOWED)
        self.groups: list[ChannelGroup] = []

    def attach(
        self,
        model: nn.Module,
        example_inputs: Tensor,
        selected: Sequence[str],
        finals: Mapping[str, float],
    ) -> None:
        self.groups = find_channel_groups(model, example_inputs, selected)
        if not self.groups:
            raise ConfigError(
                "pruning.include",
                list(selected),
                "layers whose output channels can be removed together; every selected "
                "layer is coupled to a layer kept dense (try keep_first_last_dense=false)",
            )
        self.final = {group.name: finals[group.name] for group in self.groups}
        self.layers = [name for group in self.groups for name in group.producers]
        self._warn_of_groups_left_whole()
        for group in self.groups:
            for module in self._members(model, group):
                for tensor in CHANNEL_TENSORS:
                    if getattr(module, tensor, None) is not None:
                        attach_mask(module, tensor)

    def masks_for(self, model: nn.Module, targets: Mapping[str, float]) -> dict[str, Tensor]:
        return {group.name: self._group_keep(model, group, targets) for group in self.groups}

    def _group_keep(
        self, model: nn.Module, group: ChannelGroup, targets: Mapping[str, float]
    ) -> Tensor:
        scores = self.criterion.score(group, model)
        # Channels already pruned stay pruned: they rank below every live channel.
        first = get_mask(model.get_submodule(group.producers[0]), "weight")
        if first is None:
            raise RuntimeError(f"{group.name} has no mask; call attach() first")
        alive = first.mask.flatten(1).any(dim=1)
        scores = torch.where(alive, scores.clamp_min(0) + 1, torch.zeros_like(scores))
        return channel_mask(scores, targets[group.name], self.round_to)

    def apply(self, model: nn.Module, keeps: Mapping[str, Tensor]) -> None:
        for group in self.groups:
            keep = keeps[group.name]
            for module in self._members(model, group):
                for tensor in CHANNEL_TENSORS:
                    if get_mask(module, tensor) is not None:
                        shape = getattr(module, tensor).shape
                        set_mask(module, tensor, expand_channel_mask(keep, shape))

    def _warn_of_groups_left_whole(self) -> None:
        """Say so when rounding undoes a group's pruning: too few channels for a block to
        round to (the default recipe's 16-channel groups at round_to=16 stay dense)."""
        if self.round_to == 1:
            return
        whole = [
            f"{group.name} ({group.channels} channels, the target keeps "
            f"{kept_channels(group.channels, self.final[group.name])})"
            for group in self.groups
            if self.final[group.name] > 0
            and kept_channels(group.channels, self.final[group.name], self.round_to)
            == group.channels
        ]
        if whole:
            log.warning(
                "pruning.round_to=%d leaves %d of %d channel groups whole, unpruned: %s",
                self.round_to,
                len(whole),
                len(self.groups),
                ", ".join(whole),
            )

    @staticmethod
    def _members(model: nn.Module, group: ChannelGroup) -> list[nn.Module]:
        return [model.get_submodule(name) for name in (*group.producers, *group.norms)]


def check_round_to(round_to: object, criterion: PruningCriterion) -> int:
    """`pruning.round_to` as an int (null is 1: off), refused above 1 for a criterion that
    removes no whole channels (there is no channel count to round)."""
    if round_to is None:
        return 1
    value = require_int("pruning.round_to", round_to, minimum=1, allowed=ROUND_TO_ALLOWED)
    if value > 1 and not criterion.removes_channels:
        raise ConfigError(
            "pruning.round_to",
            round_to,
            f"null or 1 with {type(criterion).__name__}, which removes no whole channels "
            "(round_to rounds the channels ChannelPruning keeps: pruning=channel_l1, "
            "channel_taylor)",
        )
    return value


def strategy_for(criterion: PruningCriterion, round_to: int | None = None) -> PruningStrategy:
    """The strategy that applies `criterion`'s masks (the one place that asks its kind), with
    `round_to` checked against it (`check_round_to`)."""
    if not isinstance(criterion, PruningCriterion):
        _refuse_criterion(criterion)
    rounding = check_round_to(round_to, criterion)
    if isinstance(criterion, ChannelPruning):
        return ChannelGroupStrategy(criterion, rounding)
    if isinstance(criterion, WeightCriterion):
        return UnstructuredStrategy(criterion)
    _refuse_criterion(criterion)


def _refuse_criterion(criterion: object) -> NoReturn:
    raise ConfigError(
        "pruning.criterion",
        type(criterion).__name__,
        "a criterion from distill.compression (Magnitude, NMSparsity, RandomPruning, "
        "ChannelPruning)",
    )
