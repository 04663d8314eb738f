"""Channel scores: how important each output channel of a coupled group is.

One class per score, chosen in a config by `_target_` (as Torch-Pruning's importance classes
are): `pruning.criterion.score._target_=distill.compression.L2Score`. Each is a callable
`score(group, model) -> Tensor` with one score per channel of the group, and says whether it
needs gradients (`needs_grad`). The math is in `criteria.py`; these only fetch the tensors.
"""

from __future__ import annotations

import abc
from typing import cast

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from distill.compression import criteria
from distill.compression.groups import ChannelGroup
from distill.compression.selection import layer_weight
from distill.errors import ConfigError


def weight_grad(module: nn.Module) -> Tensor | None:
    """The gradient of the effective weight (the mask's original holds it once attached)."""
    if parametrize.is_parametrized(module, "weight"):
        original = module.parametrizations["weight"].original  # type: ignore[index,union-attr]
        return cast(Tensor, original).grad
    return layer_weight(module).grad


def _summed(channels: int, scores: list[Tensor]) -> Tensor:
    """Per-channel scores of several layers added up, on the layers' device."""
    device = scores[0].device if scores else None
    total = torch.zeros(channels, device=device)
    for score in scores:
        total += score
    return total


class ChannelScore(abc.ABC):
    """One importance score per output channel of a `ChannelGroup`; low scores are pruned first."""

    needs_grad = False

    @abc.abstractmethod
    def __call__(self, group: ChannelGroup, model: nn.Module) -> Tensor:
        """Scores of shape `(group.channels,)`."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class _ProducerSum(ChannelScore):
    """A per-layer score summed over the group's producers (every layer writing the channels)."""

    def __call__(self, group: ChannelGroup, model: nn.Module) -> Tensor:
        layers = [model.get_submodule(name) for name in group.producers]
        return _summed(group.channels, [self.layer_scores(layer) for layer in layers])

    @abc.abstractmethod
    def layer_scores(self, layer: nn.Module) -> Tensor: ...


class L1Score(_ProducerSum):
    """Sum of |w| per filter; Li et al. 2017, "Pruning Filters for Efficient ConvNets"."""

    def layer_scores(self, layer: nn.Module) -> Tensor:
        return criteria.l1_channel_scores(layer_weight(layer))


class L2Score(_ProducerSum):
    """Euclidean norm of each filter."""

    def layer_scores(self, layer: nn.Module) -> Tensor:
        return criteria.l2_channel_scores(layer_weight(layer))


class TaylorScore(_ProducerSum):
    """First-order Taylor importance from the current gradients; Molchanov et al. 2019,
    "Importance Estimation for Neural Network Pruning"."""

    needs_grad = True

    def layer_scores(self, layer: nn.Module) -> Tensor:
        return criteria.taylor_channel_scores(layer_weight(layer), weight_grad(layer))


class BNGammaScore(ChannelScore):
    """|gamma| of the BatchNorms after the group, summed; Liu et al. 2017, "Learning Efficient
    Convolutional Networks through Network Slimming"."""

    def __call__(self, group: ChannelGroup, model: nn.Module) -> Tensor:
        if not group.norms:
            raise ConfigError(
                "pruning.criterion.score",
                "bn_gamma",
                f"layers followed by BatchNorm; {group.name} has none",
            )
        norms = [layer_weight(model.get_submodule(name)) for name in group.norms]
        return _summed(group.channels, [criteria.bn_gamma_scores(gamma) for gamma in norms])


# The classes a config may name, by the `_target_` that names them.
CHANNEL_SCORES: dict[str, type[ChannelScore]] = {
    f"distill.compression.{cls.__name__}": cls
    for cls in (L1Score, L2Score, BNGammaScore, TaylorScore)
}
