"""Criteria as configurable objects: each turns the student's current state into new masks.

The math lives in `criteria.py` as pure functions; these thin classes only gather the tensors a
criterion needs (effective weights, their gradients, BatchNorm scales) and say what kind of
mask they make. `PruningCallback` applies the result.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from distill.compression import criteria
from distill.compression.groups import ChannelGroup
from distill.errors import ConfigError


def weight_grad(module: nn.Module) -> Tensor | None:
    """The gradient of the effective weight (the mask's original holds it once attached)."""
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations["weight"].original.grad
    return module.weight.grad


class WeightCriterion:
    """Makes one keep-mask per layer weight (unstructured or N:M)."""

    structured = False
    needs_grad = False

    def weight_masks(
        self, layers: Mapping[str, nn.Module], targets: Mapping[str, float]
    ) -> dict[str, Tensor]:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class Magnitude(WeightCriterion):
    """Smallest |w| pruned, per layer (`scope="layer"`) or with one global threshold."""

    def __init__(self, scope: str = "layer") -> None:
        if scope not in ("layer", "global"):
            raise ConfigError("pruning.criterion.scope", scope, "'layer' or 'global'")
        self.scope = scope

    def weight_masks(self, layers, targets):
        weights = {name: layer.weight for name, layer in layers.items()}
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
        for field, value in (("n", n), ("m", m)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"pruning.criterion.{field}", value, "a positive integer")
        if n >= m:
            raise ConfigError("pruning.criterion.n", n, f"N < M (M={m})")
        self.n, self.m = n, m

    def weight_masks(self, layers, targets):
        return {
            name: criteria.nm_mask(layer.weight, self.n, self.m, name=name)
            if targets[name] > 0
            else torch.ones_like(layer.weight, dtype=torch.bool)
            for name, layer in layers.items()
        }


class RandomPruning(WeightCriterion):
    """Uniformly random masks, a baseline; the generator state is checkpointed for resume."""

    def __init__(self, seed: int = 0) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def weight_masks(self, layers, targets):
        masks = {}
        for name, layer in layers.items():
            # Keep what is already pruned, and draw the rest of this step's target among the
            # surviving weights, so sparsity only grows as the schedule raises it.
            current = layer.weight != 0
            fresh = criteria.random_mask(layer.weight.shape, targets[name], self.generator)
            masks[name] = _monotone(current, fresh, targets[name])
        return masks

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
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


CHANNEL_SCORES = ("l1", "l2", "bn_gamma", "taylor")


class ChannelPruning:
    """Structured: whole output channels (conv filters, linear neurons) of a coupled group.

    Scores: `l1` (Li et al. 2017), `l2`, `bn_gamma` (network slimming, Liu et al. 2017) or
    `taylor` (first order, Molchanov et al. 2019), summed over the group's producers.
    """

    structured = True

    def __init__(self, score: str = "l1") -> None:
        if score not in CHANNEL_SCORES:
            raise ConfigError("pruning.criterion.score", score, f"one of {CHANNEL_SCORES}")
        self.score = score
        self.needs_grad = score == "taylor"

    def channel_scores(self, group: ChannelGroup, model: nn.Module) -> Tensor:
        if self.score == "bn_gamma":
            if not group.norms:
                raise ConfigError(
                    "pruning.criterion.score",
                    "bn_gamma",
                    f"layers followed by BatchNorm; {group.name} has none",
                )
            layers = [model.get_submodule(n) for n in group.norms]
            return sum(criteria.bn_gamma_scores(layer.weight) for layer in layers)
        total = torch.zeros(group.channels)
        for name in group.producers:
            layer = model.get_submodule(name)
            if self.score == "l1":
                total += criteria.l1_channel_scores(layer.weight)
            elif self.score == "l2":
                total += criteria.l2_channel_scores(layer.weight)
            else:
                total += criteria.taylor_channel_scores(layer.weight, weight_grad(layer))
        return total

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
