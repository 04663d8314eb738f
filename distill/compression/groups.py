"""Channel groups: output channels that must be pruned together to be removable.

A channel can be physically removed only when every layer that writes it is zero there: the
convs feeding one residual add share their output channels, and a BatchNorm after a conv would
otherwise turn a zeroed channel into its bias. Torch-Pruning's dependency graph finds these
couplings; channel masks are then applied to whole groups.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
import torch_pruning as tp
from torch import nn

from distill.compression.selection import PRUNABLE_TYPES

NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass(frozen=True)
class ChannelGroup:
    """Layers (`producers`) whose output channels are coupled, and the norms that follow them."""

    producers: tuple[str, ...]
    norms: tuple[str, ...]
    channels: int

    @property
    def name(self) -> str:
        return self.producers[0]


def find_channel_groups(
    model: nn.Module, example_inputs: torch.Tensor, selected: Sequence[str]
) -> list[ChannelGroup]:
    """Groups whose producers are all in `selected`; other groups are left dense.

    A group with one producer outside the selection (the stem conv kept dense, the classifier)
    cannot lose a channel without changing that layer too, so it is not pruned at all.
    """
    names = {module: name for name, module in model.named_modules()}
    was_training = model.training
    model.eval()
    try:
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
    finally:
        model.train(was_training)
    chosen = set(selected)
    groups: dict[tuple[str, ...], ChannelGroup] = {}
    for name in selected:
        module = model.get_submodule(name)
        handler = (
            tp.prune_linear_out_channels
            if isinstance(module, nn.Linear)
            else tp.prune_conv_out_channels
        )
        producers, norms = set(), set()
        for item in graph.get_pruning_group(module, handler, idxs=[0]):
            target = item.dep.target.module
            if getattr(item.dep.handler, "__name__", "") != "prune_out_channels":
                continue
            if isinstance(target, PRUNABLE_TYPES):
                producers.add(names[target])
            elif isinstance(target, NORM_TYPES):
                norms.add(names[target])
        if not producers <= chosen:
            continue
        ordered = tuple(n for n in selected if n in producers)
        groups[ordered] = ChannelGroup(
            producers=ordered,
            norms=tuple(sorted(norms, key=list(names.values()).index)),
            channels=_out_channels(module),
        )
    return list(groups.values())


def _out_channels(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features
    return cast(nn.modules.conv._ConvNd, module).out_channels
