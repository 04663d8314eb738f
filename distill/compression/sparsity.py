"""Weight sparsity of a model: the one measurement behind `summary.json` and the logged metrics."""

from __future__ import annotations

import torch
from torch import nn

from distill.compression.selection import PRUNABLE_TYPES, layer_weight


@torch.no_grad()
def weight_sparsity(model: nn.Module) -> tuple[float, dict[str, float]]:
    """Fraction of exactly-zero weights, over all conv/linear weights and per layer.

    The weights are the effective ones (masked, and fake-quantized where QAT is on), in
    `named_modules` order. 0.0 for a model without conv/linear layers.
    """
    layers: dict[str, float] = {}
    zeros = total = 0
    for name, module in model.named_modules():
        if isinstance(module, PRUNABLE_TYPES):
            weight = layer_weight(module).detach()
            layer_zeros = int((weight == 0).sum())
            layers[name] = layer_zeros / weight.numel()
            zeros += layer_zeros
            total += weight.numel()
    return (zeros / total if total else 0.0), layers


def sparsity_metrics(model: nn.Module) -> dict[str, float]:
    """`weight_sparsity` as logged metrics: `sparsity/<layer>` for each, then `sparsity/global`."""
    overall, layers = weight_sparsity(model)
    metrics = {f"sparsity/{name}": value for name, value in layers.items()}
    metrics["sparsity/global"] = overall
    return metrics
