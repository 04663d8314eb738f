"""Pruning criteria as pure functions: tensors in, boolean keep-masks out (True = keep).

Every criterion prunes exactly `k = round(sparsity * n)` entries (Python's `round`, so halves go
to the even neighbour) and breaks ties by index with a stable sort: the lowest-scoring entries
go first, and among equal scores the one with the lower flat index goes first. Identical inputs
therefore give identical masks on every DDP rank. Channel masks may round that count further,
to multiples of a kernel's channel block (`kept_channels`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from distill.compression.selection import SPARSITY_ALLOWED
from distill.errors import ConfigError
from distill.validate import require_fraction, require_int

# Channel scores and N:M need output channels first and the inputs after them.
LAYER_WEIGHT_ALLOWED = "a conv or linear weight with at least 2 dims, output channels first"
ROUND_TO_ALLOWED = "an integer >= 1 (channels kept per group: a multiple of it) or null (off)"


def _keep_all_but_lowest(scores: Tensor, num_pruned: int) -> Tensor:
    """Flat boolean keep-mask that drops the `num_pruned` lowest scores, ties by lower index."""
    if torch.isnan(scores).any():
        raise ConfigError("scores", "tensor containing NaN", "finite scores; check the weights")
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    order = torch.sort(scores.flatten(), stable=True).indices
    keep[order[:num_pruned]] = False
    return keep


def magnitude_mask(weight: Tensor, sparsity: float) -> Tensor:
    """Unstructured layer-wise magnitude pruning: drop the smallest |w|.

    Han et al. 2015, "Learning both Weights and Connections for Efficient Neural Networks".
    """
    sparsity = require_fraction("sparsity", sparsity, allowed=SPARSITY_ALLOWED)
    num_pruned = round(sparsity * weight.numel())
    return _keep_all_but_lowest(weight.detach().abs(), num_pruned).view(weight.shape)


def global_magnitude_masks(weights: Mapping[str, Tensor], sparsity: float) -> dict[str, Tensor]:
    """Magnitude pruning with one threshold over all layers: `round(sparsity * total)` pruned.

    Ties across layers fall to the layer that comes first in `weights`, so pass the layers in
    the same order on every rank (e.g. `named_modules` order).
    """
    sparsity = require_fraction("sparsity", sparsity, allowed=SPARSITY_ALLOWED)
    if not weights:
        raise ConfigError("weights", dict(weights), "at least one named weight")
    tensors = list(weights.values())
    # A common dtype, so that concatenating fp16 and fp32 layers never rounds a score.
    dtype = functools.reduce(torch.promote_types, (t.dtype for t in tensors))
    device = tensors[0].device
    scores = torch.cat([t.detach().abs().flatten().to(device=device, dtype=dtype) for t in tensors])
    keep = _keep_all_but_lowest(scores, round(sparsity * scores.numel()))
    chunks = keep.split([t.numel() for t in tensors])
    return {
        name: chunk.view(weight.shape).to(weight.device)
        for (name, weight), chunk in zip(weights.items(), chunks, strict=True)
    }


def l1_channel_scores(weight: Tensor) -> Tensor:
    """Sum of |w| per output channel (dim 0).

    Li et al. 2017, "Pruning Filters for Efficient ConvNets".
    """
    require_int(
        "weight",
        weight.dim(),
        minimum=2,
        allowed=f"{LAYER_WEIGHT_ALLOWED} (shape {tuple(weight.shape)})",
    )
    return weight.detach().abs().flatten(1).sum(dim=1)


def l2_channel_scores(weight: Tensor) -> Tensor:
    """Euclidean norm of each output channel (dim 0)."""
    require_int(
        "weight",
        weight.dim(),
        minimum=2,
        allowed=f"{LAYER_WEIGHT_ALLOWED} (shape {tuple(weight.shape)})",
    )
    return torch.linalg.vector_norm(weight.detach().flatten(1), ord=2, dim=1)


def bn_gamma_scores(bn_weight: Tensor) -> Tensor:
    """|gamma| of a BatchNorm layer, one per channel.

    Liu et al. 2017, "Learning Efficient Convolutional Networks through Network Slimming".
    """
    if bn_weight.dim() != 1:
        raise ConfigError(
            "bn_weight", f"tensor of shape {tuple(bn_weight.shape)}", "a 1-D BatchNorm weight"
        )
    return bn_weight.detach().abs()


def taylor_channel_scores(weight: Tensor, grad: Tensor | None) -> Tensor:
    """First-order Taylor importance per output channel: `(sum over the channel of w * g)^2`.

    Molchanov et al. 2019, "Importance Estimation for Neural Network Pruning": the group form of
    the criterion, with the group being the weights of one output channel.
    """
    if grad is None:
        raise ConfigError(
            "criterion",
            "taylor",
            "the taylor criterion needs gradients; prune on a step after backward",
        )
    require_int(
        "weight",
        weight.dim(),
        minimum=2,
        allowed=f"{LAYER_WEIGHT_ALLOWED} (shape {tuple(weight.shape)})",
    )
    if grad.shape != weight.shape:
        raise ConfigError(
            "grad",
            f"tensor of shape {tuple(grad.shape)}",
            f"the weight's shape {tuple(weight.shape)}",
        )
    return (weight.detach() * grad.detach()).flatten(1).sum(dim=1).pow(2)


def kept_channels(channels: int, sparsity: float, round_to: int = 1) -> int:
    """How many of a group's `channels` survive `sparsity`.

    Without rounding (`round_to=1`): `channels - round(sparsity * channels)`, at least one (a
    layer with no channels left would cut the network in two). With `round_to=r > 1`, that
    count moves to the nearest count a kernel blocks evenly: a multiple of r from r up to
    `channels`, or `channels` itself (the group left whole); a tie goes to the larger count
    (fewer channels pruned). So a group never loses every channel, never keeps more than it
    has, and one smaller than r stays whole. Nearest rather than always up: the achieved
    sparsity stays within half a block of the target per group, on either side, instead of
    falling short by up to a whole block everywhere (which would give back much of the
    latency the rounding is for). The count never grows with `sparsity`, so a schedule that
    only raises the target never revives a pruned channel.
    """
    channels = require_int("channels", channels, minimum=1)
    round_to = require_int("round_to", round_to, minimum=1, allowed=ROUND_TO_ALLOWED)
    sparsity = require_fraction("sparsity", sparsity, allowed=SPARSITY_ALLOWED)
    kept = max(channels - round(sparsity * channels), 1)
    if round_to == 1:
        return kept
    allowed = {*range(round_to, channels + 1, round_to), channels}
    # Nearest allowed count; among two equally near, the larger one (-count sorts it first).
    return min(allowed, key=lambda count: (abs(count - kept), -count))


def channel_mask(scores: Tensor, sparsity: float, round_to: int = 1) -> Tensor:
    """Keep-mask over channels: the `kept_channels(C, sparsity, round_to)` highest scores."""
    if scores.dim() != 1 or scores.numel() == 0:
        raise ConfigError(
            "scores", f"tensor of shape {tuple(scores.shape)}", "one score per channel (1-D)"
        )
    channels = scores.numel()
    return _keep_all_but_lowest(scores, channels - kept_channels(channels, sparsity, round_to))


def expand_channel_mask(channel_mask: Tensor, weight_shape: Sequence[int]) -> Tensor:
    """Broadcast a per-output-channel mask to a tensor of `weight_shape` (weight or bias)."""
    shape = tuple(weight_shape)
    if channel_mask.dim() != 1 or not shape or channel_mask.numel() != shape[0]:
        raise ConfigError(
            "channel_mask",
            f"tensor of shape {tuple(channel_mask.shape)}",
            f"a 1-D mask with one entry per output channel of shape {shape}",
        )
    view = channel_mask.view(-1, *([1] * (len(shape) - 1)))
    return view.expand(shape).contiguous()


def nm_mask(weight: Tensor, n: int = 2, m: int = 4, name: str | None = None) -> Tensor:
    """N:M semi-structured sparsity: keep the N largest |w| in every M consecutive inputs.

    Groups run along the flattened input of each output channel (in_features for linear,
    in_channels * kh * kw in PyTorch's memory order for conv). Mishra et al. 2021, "Accelerating
    Sparse Deep Neural Networks" (2:4 on NVIDIA Ampere); Zhou et al. 2021, "Learning N:M
    Fine-grained Structured Sparse Neural Networks From Scratch".
    """
    for field, value in (("n", n), ("m", m)):
        require_int(field, value, allowed="an integer, with 0 < N < M")
    if not 0 < n < m:
        raise ConfigError("n", n, f"0 < N < M; got N={n}, M={m}")
    layer = name or "weight"
    require_int(
        layer,
        weight.dim(),
        minimum=2,
        allowed=f"{LAYER_WEIGHT_ALLOWED} (shape {tuple(weight.shape)})",
    )
    inputs = math.prod(weight.shape[1:])
    if inputs % m != 0:
        raise ConfigError(
            "m",
            m,
            f"a divisor of the input size of {layer}: {inputs} per output channel "
            f"(shape {tuple(weight.shape)})",
        )
    groups = weight.detach().abs().reshape(weight.shape[0], inputs // m, m)
    # Stable descending sort keeps the lower index among equal magnitudes.
    largest = torch.sort(groups, dim=-1, descending=True, stable=True).indices[..., :n]
    keep = torch.zeros(groups.shape, dtype=torch.bool, device=weight.device)
    keep.scatter_(-1, largest, True)
    return keep.view(weight.shape)


def random_mask(shape: Sequence[int], sparsity: float, generator: torch.Generator) -> Tensor:
    """Baseline: exactly `round(sparsity * n)` entries pruned uniformly at random.

    Pass a generator seeded identically on every rank to get identical masks.
    """
    shape = tuple(shape)
    numel = math.prod(shape)
    sparsity = require_fraction("sparsity", sparsity, allowed=SPARSITY_ALLOWED)
    num_pruned = round(sparsity * numel)
    order = torch.randperm(numel, generator=generator, device=generator.device)
    keep = torch.ones(numel, dtype=torch.bool, device=generator.device)
    keep[order[:num_pruned]] = False
    return keep.view(shape)
