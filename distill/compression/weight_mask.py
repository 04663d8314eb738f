"""`WeightMask`: the first parametrization of a weight's chain (see `parametrizations.py`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class WeightMask(nn.Module):
    """Parametrization `x -> x * mask` with a boolean `mask` buffer, all True at first.

    Register it with `parametrize.register_parametrization(module, "weight", WeightMask(shape))`,
    or with `attach_mask`, which also checks that it is the first parametrization.
    """

    mask: Tensor

    def __init__(self, shape: Sequence[int], device: torch.device | str | None = None) -> None:
        super().__init__()
        # Boolean rather than float: a mask is never fractional, `model.half()` leaves it alone,
        # and it is a quarter of the size in checkpoints.
        self.register_buffer("mask", torch.ones(tuple(shape), dtype=torch.bool, device=device))

    def forward(self, x: Tensor) -> Tensor:
        # `where` instead of a multiply: same value and zero gradient at pruned positions, but no
        # NaN if the original holds inf there, and +0.0 rather than -0.0 in baked weights.
        return torch.where(self.mask, x, torch.zeros((), dtype=x.dtype, device=x.device))

    @property
    def sparsity(self) -> float:
        """Fraction of pruned (False) entries."""
        return 1.0 - self.mask.sum().item() / max(self.mask.numel(), 1)

    def extra_repr(self) -> str:
        return f"shape={tuple(self.mask.shape)}, sparsity={self.sparsity:.3f}"
