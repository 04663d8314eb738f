"""BatchNorm during QAT: statistics frozen, or folded into the conv before them.

Why folding is exact for deployment: weights are quantized per output channel and
symmetrically, so scaling a channel by the BatchNorm factor gamma / sigma scales its quantization
step by the same factor and leaves its integers unchanged. A conv trained with frozen statistics
and the same conv with the BatchNorm folded in deploy to the same int8 weights; folding during
training only changes what the optimizer sees.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from distill.compression.parametrizations import get_mask, original


def freeze_batchnorm(model: nn.Module) -> None:
    """Normalize with the running statistics and stop updating them."""
    for module in model.modules():
        if isinstance(module, _BatchNorm) and module.training:
            module.eval()


@torch.no_grad()
def fold_batchnorm_in_place(model: nn.Module, folds: Mapping[str, str]) -> None:
    """Fold each BatchNorm's statistics into the layer before it, keeping every key.

    With factor f = gamma / sqrt(var + eps) per channel: W <- f W, b <- f b, and the BatchNorm
    becomes `x + beta'` with beta' = beta - f mean (gamma 1, mean 0, var 1 - eps), so
    BN(conv(x)) is unchanged in eval mode and the state dict keeps its keys. Masks are honoured:
    a pruned channel has gamma = beta = 0, so it stays exactly zero.
    """
    for layer_name, norm_name in folds.items():
        layer = model.get_submodule(layer_name)
        norm = cast(_BatchNorm, model.get_submodule(norm_name))
        running_mean, running_var = _tensor(norm.running_mean), _tensor(norm.running_var)
        factor = _tensor(norm.weight) / torch.sqrt(running_var + norm.eps)
        shape = (-1,) + (1,) * (_tensor(layer.weight).dim() - 1)
        original(layer, "weight").mul_(factor.view(shape))
        if layer.bias is not None:
            original(layer, "bias").mul_(factor)
        original(norm, "bias").copy_(_tensor(norm.bias) - factor * running_mean)
        gamma = original(norm, "weight")
        keep = get_mask(norm, "weight")
        gamma.fill_(1.0) if keep is None else gamma.copy_(keep.mask.to(gamma.dtype))
        running_mean.zero_()
        running_var.fill_(1.0 - norm.eps)


def _tensor(value: object) -> Tensor:
    """`value`, which torch's stubs type loosely (a Module attribute, an optional buffer)."""
    return cast(Tensor, value)
