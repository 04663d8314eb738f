"""The chain of parametrizations on a conv/linear weight, and the one place that knows its order.

A compressed weight is computed as `fake_quant(share(mask(original)))`:

1. `WeightMask` (pruning) comes first, so everything after it sees the pruned zeros;
2. `SharedWeights` (k-means weight sharing) clusters the masked weights and keeps zeros zero;
3. `WeightFakeQuant` rounds the result onto the int8 grid, so the deployed integers are exactly
   those of the last link: quantizing before sharing would cluster grid values and move them off
   the grid, and masking after quantization would zero weights the quantizer already scaled for.

Each link is registered with `register`, which refuses a link after one that must follow it, and
found again with `get_mask`, `get_weight_sharing` and `get_weight_fake_quant`.
"""

from __future__ import annotations

from typing import TypeVar, cast

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from distill.compression.fake_quant import WeightFakeQuant
from distill.compression.shared_weights import SharedWeights
from distill.compression.weight_mask import WeightMask
from distill.errors import ConfigError

# The order of the chain, first to last.
CHAIN: tuple[type[nn.Module], ...] = (WeightMask, SharedWeights, WeightFakeQuant)
# What each link is called in an error message.
_LINK_NAMES = {WeightMask: "mask", SharedWeights: "weight sharing", WeightFakeQuant: "fake-quant"}

T = TypeVar("T", bound=nn.Module)


def _position(parametrization: nn.Module) -> int:
    """Index of `parametrization`'s kind in CHAIN; one not in the chain counts as after it all."""
    for index, kind in enumerate(CHAIN):
        if isinstance(parametrization, kind):
            return index
    return len(CHAIN)


def _link_name(parametrization: nn.Module) -> str:
    for kind, name in _LINK_NAMES.items():
        if isinstance(parametrization, kind):
            return name
    return type(parametrization).__name__


def tensor_of(module: nn.Module, tensor_name: str) -> Tensor:
    """`module.<tensor_name>` (its effective value), or a ConfigError naming what is there."""
    tensor = getattr(module, tensor_name, None)
    if not isinstance(tensor, Tensor):
        raise ConfigError(
            "tensor_name",
            tensor_name,
            f"the name of a tensor of {type(module).__name__}, such as 'weight'",
        )
    return tensor


def register(module: nn.Module, tensor_name: str, parametrization: nn.Module) -> None:
    """Add `parametrization` to the chain on `module.<tensor_name>`, refusing a wrong order.

    A link may only go after the links that come before it in `CHAIN`: a mask on a tensor that
    already has any parametrization, sharing after fake-quant, or a second link of one kind is
    a ConfigError naming the tensor. The parameter object is kept (it becomes
    `parametrizations.<tensor_name>.original`), so an optimizer built before still updates it.
    """
    if _position(parametrization) == len(CHAIN):
        raise ConfigError(
            "parametrization",
            type(parametrization).__name__,
            f"one of the chain's links: {', '.join(kind.__name__ for kind in CHAIN)}",
        )
    tensor_of(module, tensor_name)
    if parametrize.is_parametrized(module, tensor_name):
        existing = list(chain_of(module, tensor_name))
        if any(_position(p) >= _position(parametrization) for p in existing):
            raise ConfigError(
                "tensor_name",
                tensor_name,
                f"a tensor where {_link_name(parametrization)} can go next: the chain is "
                f"{' -> '.join(_LINK_NAMES.values())} and this tensor already has "
                f"{', '.join(_link_name(p) for p in existing)} (attach in that order)",
            )
    parametrize.register_parametrization(module, tensor_name, parametrization)


def chain_of(module: nn.Module, tensor_name: str) -> parametrize.ParametrizationList:
    """The parametrizations on `module.<tensor_name>`, first to last (it must have some)."""
    parametrizations = cast(nn.ModuleDict, module.parametrizations)
    return cast(parametrize.ParametrizationList, parametrizations[tensor_name])


def find_parametrization(module: nn.Module, tensor_name: str, kind: type[T]) -> T | None:
    """The parametrization of type `kind` on `module.<tensor_name>`, or None if it has none."""
    if not parametrize.is_parametrized(module, tensor_name):
        return None
    for parametrization in chain_of(module, tensor_name):
        if isinstance(parametrization, kind):
            return parametrization
    return None


def get_mask(module: nn.Module, tensor_name: str = "weight") -> WeightMask | None:
    """The `WeightMask` on `module.<tensor_name>`, or None if it has none."""
    return find_parametrization(module, tensor_name, WeightMask)


def get_weight_sharing(module: nn.Module, tensor_name: str = "weight") -> SharedWeights | None:
    """The `SharedWeights` on `module.<tensor_name>`, or None if it has none."""
    return find_parametrization(module, tensor_name, SharedWeights)


def get_weight_fake_quant(module: nn.Module, tensor_name: str = "weight") -> WeightFakeQuant | None:
    """The `WeightFakeQuant` on `module.<tensor_name>`, or None if it has none."""
    return find_parametrization(module, tensor_name, WeightFakeQuant)


def original(module: nn.Module, tensor_name: str) -> Tensor:
    """The trainable tensor behind `module.<tensor_name>` (the original under parametrizations)."""
    if parametrize.is_parametrized(module, tensor_name):
        return chain_of(module, tensor_name).original
    return cast(Tensor, getattr(module, tensor_name))


@torch.no_grad()
def input_of(module: nn.Module, tensor_name: str, link: nn.Module) -> Tensor:
    """What `link` receives: the original passed through the links before it (e.g. the masked
    weight that sharing clusters or fake-quant rounds)."""
    x = original(module, tensor_name)
    for parametrization in chain_of(module, tensor_name):
        if parametrization is link:
            return x
        x = parametrization(x)
    raise ConfigError("link", type(link).__name__, f"a link of the chain on {tensor_name!r}")
