"""Criteria as configurable objects: each turns the student's current state into new masks.

The math lives in `criteria.py` as pure functions; these thin classes only gather the tensors a
criterion needs (effective weights, their gradients, BatchNorm scales) and say what kind of
mask they make: per-weight masks (`WeightCriterion`) or whole channels (`ChannelPruning`, with
a `ChannelScore` from `channel_scores.py`). The strategies in `pruning_strategies.py` attach
and apply them for `PruningCallback`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from distill.compression import criteria
from distill.compression.channel_scores import CHANNEL_SCORES, ChannelScore, L1Score
from distill.compression.selection import layer_weight
from distill.errors import ConfigError
from distill.validate import require_choice, require_int


class PruningCriterion:
    """What every criterion says about itself; `PruningCallback` accepts only these."""

    # Whether masks need the gradients of the step they are computed on (frozen layers have none).
    needs_grad = False
    # Whether whole output channels are zeroed, so the trained student can be physically slimmed.
    removes_channels = False
    # Whether each layer may have its own final sparsity (`pruning.layer_sparsity`).
    per_layer_targets = True

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class WeightCriterion(PruningCriterion):
    """Makes one keep-mask per layer weight (unstructured or N:M)."""

    def weight_masks(
        self, layers: Mapping[str, nn.Module], targets: Mapping[str, float]
    ) -> dict[str, Tensor]:
        raise NotImplementedError


class Magnitude(WeightCriterion):
    """Smallest |w| pruned, per layer (`scope="layer"`) or with one global threshold.

    Han et al. 2015, "Learning both Weights and Connections for Efficient Neural Networks".
    """

    def __init__(self, scope: str = "layer") -> None:
        self.scope = require_choice("pruning.criterion.scope", scope, ("layer", "global"))
        # One threshold over all layers decides each layer's sparsity itself.
        self.per_layer_targets = self.scope == "layer"

    def weight_masks(
        self, layers: Mapping[str, nn.Module], targets: Mapping[str, float]
    ) -> dict[str, Tensor]:
        weights = {name: layer_weight(layer) for name, layer in layers.items()}
        if self.scope == "global":
            # One threshold over all layers; the first layer's target is the global target.
            return criteria.global_magnitude_masks(weights, next(iter(targets.values())))
        return {name: criteria.magnitude_mask(w, targets[name]) for name, w in weights.items()}


class NMSparsity(WeightCriterion):
    """N:M semi-structured: the N largest of every M consecutive weights kept.

    The pattern fixes the sparsity at 1 - N/M; the schedule only says when it is applied (the
    first update with a target above zero).
    """

    def __init__(self, n: int = 2, m: int = 4) -> None:
        n = require_int("pruning.criterion.n", n, minimum=1, allowed="a positive integer")
        m = require_int("pruning.criterion.m", m, minimum=1, allowed="a positive integer")
        if n >= m:
            raise ConfigError("pruning.criterion.n", n, f"N < M (M={m})")
        self.n, self.m = n, m

    def weight_masks(
        self, layers: Mapping[str, nn.Module], targets: Mapping[str, float]
    ) -> dict[str, Tensor]:
        masks = {}
        for name, layer in layers.items():
            weight = layer_weight(layer)
            masks[name] = (
                criteria.nm_mask(weight, self.n, self.m, name=name)
                if targets[name] > 0
                else torch.ones_like(weight, dtype=torch.bool)
            )
        return masks


class RandomPruning(WeightCriterion):
    """Uniformly random masks, a baseline; the generator state is checkpointed for resume."""

    def __init__(self, seed: int = 0) -> None:
        self.generator = torch.Generator().manual_seed(require_int("pruning.criterion.seed", seed))

    def weight_masks(
        self, layers: Mapping[str, nn.Module], targets: Mapping[str, float]
    ) -> dict[str, Tensor]:
        masks = {}
        for name, layer in layers.items():
            weight = layer_weight(layer)
            # Keep what is already pruned, and draw the rest of this step's target among the
            # surviving weights, so sparsity only grows as the schedule raises it.
            current = weight != 0
            fresh = criteria.random_mask(weight.shape, targets[name], self.generator)
            masks[name] = _monotone(current, fresh, targets[name])
        return masks

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


def _monotone(current: Tensor, proposed: Tensor, sparsity: float) -> Tensor:
    """A keep-mask with exactly round(sparsity * n) pruned that prunes every already-pruned one."""
    num_pruned = round(sparsity * current.numel())
    # Already pruned first (score 0), then the proposal's picks (1), then the rest (2).
    scores = current.float().flatten() + proposed.float().flatten() * current.float().flatten()
    order = torch.sort(scores, stable=True).indices
    keep = torch.ones(current.numel(), dtype=torch.bool)
    keep[order[:num_pruned]] = False
    return keep.view(current.shape)


class ChannelPruning(PruningCriterion):
    """Structured: whole output channels (conv filters, linear neurons) of a coupled group,
    the lowest-scoring first.

    `score` is a `ChannelScore` (L1Score by default), named in a config by its `_target_`:
    `pruning.criterion.score._target_=distill.compression.TaylorScore`.
    """

    removes_channels = True

    def __init__(self, score: ChannelScore | None = None) -> None:
        if score is None:
            score = L1Score()
        if not isinstance(score, ChannelScore):
            # The old string form (`score: l1`) would otherwise be silently misread.
            raise ConfigError(
                "pruning.criterion.score",
                score,
                "a channel score given by its _target_, one of "
                f"{', '.join(CHANNEL_SCORES)} "
                "(e.g. pruning.criterion.score._target_=distill.compression.L2Score)",
            )
        self.score = score
        self.needs_grad = score.needs_grad
