"""FitNets hint loss (Romero et al. 2015, "FitNets: Hints for Thin Deep Nets", ICLR)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from distill.losses.features import FeatureLossTerm


def hint_loss(student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
    """Mean squared error between a (regressed) student feature and the teacher's hint.

    The paper writes 1/2 * ||u_h - r(v_g)||^2, a sum over all elements; the mean over
    elements (batch included) used here differs by a constant factor and keeps the value
    independent of the batch size and of how large the hint layer is.
    """
    if student_feature.shape != teacher_feature.shape:
        raise ValueError(
            f"hint_loss compares features element by element, and their shapes differ: "
            f"{tuple(student_feature.shape)} vs {tuple(teacher_feature.shape)}"
        )
    return F.mse_loss(student_feature, teacher_feature)


class FitNets(FeatureLossTerm):
    """Hint terms: each student tap regresses onto its teacher tap (the "hint").

    Where a pair's shapes differ, the learned regressor that FitNets puts on the student's
    guided layer is the adapter `FeatureLossTerm.build` creates (1x1 conv + batch norm for
    feature maps, linear for vectors); `adapter="none"` makes differing shapes an error.
    The paper trains the hint alone first and then applies KD; here the hint is one weighted
    term trained jointly with the others, as later benchmarks of FitNets do.
    """

    needs_same_shape = True

    def pair_loss(self, student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
        return hint_loss(student_feature, teacher_feature)
