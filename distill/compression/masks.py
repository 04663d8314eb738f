"""The project's one mask mechanism: a parametrization on a module's tensor.

`torch.nn.utils.prune` does not compose with parametrizations and its checkpoints do not load
into a plain model (DESIGN.md section 3), so pruning is a `WeightMask` parametrization instead:
the effective tensor is `original * mask`, the mask is a buffer in the state dict from the moment
it is attached, and a fake-quant parametrization registered after it quantizes the masked
weight, so pruned weights stay exactly zero on the int8 grid.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from distill.compression.parametrizations import (
    find_parametrization,
    get_mask,
    original,
    register,
    tensor_of,
)
from distill.compression.weight_mask import WeightMask
from distill.errors import ConfigError

__all__ = [
    "WeightMask",
    "attach_mask",
    "bake_into",
    "effective_state_dict",
    "find_parametrization",
    "get_mask",
    "set_mask",
]


def attach_mask(module: nn.Module, tensor_name: str = "weight") -> WeightMask:
    """Register an all-True `WeightMask` on `module.<tensor_name>` and return it (idempotent).

    Attach masks before training starts so checkpoint keys are the same at every step. The
    parameter object is kept (it becomes `parametrizations.<tensor_name>.original`), so an
    optimizer built before attaching still updates it.
    """
    existing = get_mask(module, tensor_name)
    if existing is not None:
        return existing
    tensor = tensor_of(module, tensor_name)
    mask = WeightMask(tensor.shape, device=tensor.device)
    # A mask after fake-quant would zero weights the quantizer has already seen: refused there.
    register(module, tensor_name, mask)
    return mask


def set_mask(module: nn.Module, tensor_name: str, mask: Tensor) -> None:
    """Replace the mask on `module.<tensor_name>` and zero the pruned entries of the original.

    Zeroing the original is only tidiness: the effective tensor is zero there anyway and gets no
    gradient. Momentum or Adam state may still move the original at pruned positions; the
    effective tensor stays exactly zero regardless.
    """
    weight_mask = get_mask(module, tensor_name)
    if weight_mask is None:
        raise ConfigError(
            "tensor_name",
            tensor_name,
            "a tensor with a mask attached; call attach_mask at setup so checkpoint keys are "
            "stable from the first step",
        )
    if mask.dtype != torch.bool or mask.shape != weight_mask.mask.shape:
        raise ConfigError(
            "mask",
            f"{mask.dtype} tensor of shape {tuple(mask.shape)}",
            f"a torch.bool tensor of shape {tuple(weight_mask.mask.shape)}",
        )
    with torch.no_grad():
        weight_mask.mask.copy_(mask)
        original(module, tensor_name).masked_fill_(~weight_mask.mask, 0.0)


def effective_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The state dict a plain copy of `model` would have: effective tensors, no mask buffers.

    Every parametrized tensor is evaluated through its whole chain (mask, then any fake-quant)
    and stored under its plain key (`layer.weight`); keys under `layer.parametrizations.` are
    dropped, and so are those of modules marked `training_only` (activation observers).
    `model` is not changed, provided its parametrizations keep no state in forward.
    """
    effective: dict[str, Tensor] = {}
    dropped_prefixes: list[str] = []
    with torch.no_grad():
        for module_name, module in model.named_modules(remove_duplicate=False):
            if getattr(module, "training_only", False):
                dropped_prefixes.append(f"{module_name}.")
                continue
            if not parametrize.is_parametrized(module):
                continue
            prefix = f"{module_name}." if module_name else ""
            dropped_prefixes.append(f"{prefix}parametrizations.")
            for tensor_name in module.parametrizations:
                effective[f"{prefix}{tensor_name}"] = getattr(module, tensor_name).detach().clone()
    state = {
        key: value
        for key, value in model.state_dict().items()
        if not key.startswith(tuple(dropped_prefixes))
    }
    return {**state, **effective}


def bake_into(masked_model: nn.Module, fresh_plain_model: nn.Module) -> nn.Module:
    """Load `masked_model`'s effective weights into `fresh_plain_model` (strict) and return it.

    `copy.deepcopy` followed by `remove_parametrizations` on the copy broke the original
    (DESIGN.md section 3), so baking copies values into a freshly constructed plain model.
    """
    if any(parametrize.is_parametrized(module) for module in fresh_plain_model.modules()):
        raise ConfigError(
            "fresh_plain_model",
            type(fresh_plain_model).__name__,
            "a freshly constructed model without parametrizations",
        )
    fresh_plain_model.load_state_dict(effective_state_dict(masked_model), strict=True)
    return fresh_plain_model
