"""Which layers of the student are pruned, and to what final sparsity each."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from typing import cast

from torch import Tensor, nn

from distill.errors import ConfigError
from distill.validate import require_fraction

PRUNABLE_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
SPARSITY_ALLOWED = "a number in [0, 1)"


def layer_weight(module: nn.Module) -> Tensor:
    """The (effective, masked) weight of a conv, linear or norm layer, typed as a tensor.

    `nn.Module.__getattr__` is typed `Tensor | Module`; every layer pruning touches has a
    weight tensor, so this is where that is said once.
    """
    return cast(Tensor, module.weight)


def prunable_layer_names(model: nn.Module) -> list[str]:
    """Conv and linear layers, in `named_modules` order (the same on every rank)."""
    return [name for name, module in model.named_modules() if isinstance(module, PRUNABLE_TYPES)]


def _matching(names: Sequence[str], pattern: str, field: str) -> list[str]:
    matched = [name for name in names if fnmatch.fnmatchcase(name, pattern)]
    if not matched:
        shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
        raise ConfigError(
            field, pattern, f"a name pattern (fnmatch) matching a conv/linear layer: {shown}"
        )
    return matched


def select_layers(
    model: nn.Module,
    include: Sequence[str] = ("*",),
    exclude: Sequence[str] = (),
    keep_first_last_dense: bool = True,
) -> list[str]:
    """Names of the layers to prune; every pattern must match at least one layer."""
    names = prunable_layer_names(model)
    if not names:
        raise ConfigError("pruning", type(model).__name__, "a model with conv or linear layers")
    included = {n for pattern in include for n in _matching(names, pattern, "pruning.include")}
    excluded = {n for pattern in exclude for n in _matching(names, pattern, "pruning.exclude")}
    if keep_first_last_dense:
        # The first layer sees raw inputs and the last one makes the logits: both are small
        # and pruning them costs accuracy out of proportion (Zhu & Gupta 2017, Gale et al. 2019).
        excluded |= {names[0], names[-1]}
    selected = [n for n in names if n in included and n not in excluded]
    if not selected:
        raise ConfigError(
            "pruning.include",
            list(include),
            "patterns that leave at least one layer to prune after exclude and "
            f"keep_first_last_dense={keep_first_last_dense}",
        )
    return selected


def layer_final_sparsities(
    layers: Sequence[str], final_sparsity: float, overrides: Mapping[str, float]
) -> dict[str, float]:
    """Final sparsity per layer: the schedule's, or the last matching override's."""
    targets = dict.fromkeys(layers, final_sparsity)
    for pattern, sparsity in overrides.items():
        field = f"pruning.layer_sparsity.{pattern}"
        value = require_fraction(field, sparsity, allowed=SPARSITY_ALLOWED)
        for name in _matching(list(layers), pattern, field):
            targets[name] = value
    return targets
