"""Cross-entropy on the ground-truth labels."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from distill.losses.base import LossTerm, StepOutputs
from distill.validate import require_fraction


def cross_entropy(logits: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy of `logits` against integer class `targets`."""
    return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)


class CrossEntropy(LossTerm):
    """Supervised term on the labels; `label_smoothing` in [0, 1) (Szegedy et al. 2016)."""

    def __init__(self, weight: float = 1.0, label_smoothing: float = 0.0) -> None:
        super().__init__(weight)
        self.label_smoothing = require_fraction("label_smoothing", label_smoothing)

    def compute(self, outputs: StepOutputs) -> Tensor:
        return cross_entropy(outputs.student_logits, outputs.targets, self.label_smoothing)
