"""Neuron Selectivity Transfer (Huang & Wang 2017, "Like What You Like", arXiv:1707.01219)."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from distill.losses.features import FeatureLossTerm
from distill.validate import require_int, require_real


def channel_patterns(feature: Tensor) -> Tensor:
    """`(batch, channels, *spatial)` -> `(batch, channels, positions)`, each row of unit L2 norm.

    NST treats each channel's spatial activation pattern as one sample of a distribution;
    normalizing the rows makes channels of different strength comparable.
    """
    if feature.dim() < 3:
        raise ValueError(
            f"NST needs a feature map (batch, channels, *spatial), got {tuple(feature.shape)}"
        )
    return F.normalize(feature.flatten(2), p=2.0, dim=2)


def nst_mmd(
    student_feature: Tensor, teacher_feature: Tensor, degree: int = 2, c: float = 0.0
) -> Tensor:
    """Squared MMD between student and teacher channel patterns, averaged over the batch.

    With k(x, y) = (x . y + c)^degree on the normalized patterns s_i (student channels) and
    t_j (teacher channels) of one sample:
    MMD^2 = mean_ij k(s_i, s_j) + mean_ij k(t_i, t_j) - 2 mean_ij k(s_i, t_j),
    the paper's L_MMD^2 (its best kernel: polynomial, degree 2, c = 0). The paper's lambda/2
    factor is left to the term's weight. Channel counts may differ; spatial sizes may not.
    """
    if student_feature.shape[0] != teacher_feature.shape[0]:
        raise ValueError(
            f"batch sizes differ: {student_feature.shape[0]} vs {teacher_feature.shape[0]}"
        )
    if student_feature.shape[2:] != teacher_feature.shape[2:]:
        raise ValueError(
            f"NST compares spatial patterns, and spatial sizes differ: "
            f"{tuple(student_feature.shape[2:])} vs {tuple(teacher_feature.shape[2:])}"
        )
    student = channel_patterns(student_feature)
    teacher = channel_patterns(teacher_feature)

    def mean_kernel(left: Tensor, right: Tensor) -> Tensor:
        return (left @ right.transpose(1, 2) + c).pow(degree).mean(dim=(1, 2))

    mmd = (
        mean_kernel(student, student)
        + mean_kernel(teacher, teacher)
        - 2 * mean_kernel(student, teacher)
    )
    return mmd.mean()


class NeuronSelectivityTransfer(FeatureLossTerm):
    """NST with a polynomial kernel between pairs of feature maps, averaged over pairs.

    `degree` (an integer >= 1) and `c` (>= 0, so the kernel stays positive definite and
    MMD^2 >= 0) set k(x, y) = (x . y + c)^degree; degree 1, c 0 is the linear kernel, which
    matches only the mean pattern. Spatial sizes must agree, which `build` checks.
    """

    needs_same_spatial_size = True

    def __init__(
        self,
        student: str | Sequence[str],
        teacher: str | Sequence[str],
        degree: int = 2,
        c: float = 0.0,
        weight: float = 1.0,
    ) -> None:
        super().__init__(student, teacher, weight=weight)
        self.degree = require_int(
            "degree", degree, minimum=1, allowed="an integer >= 1 (the paper's best is 2)"
        )
        self.c = require_real(
            "c", c, minimum=0.0, allowed="a finite number >= 0 (the paper's best is 0)"
        )

    def pair_loss(self, student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
        return nst_mmd(student_feature, teacher_feature, self.degree, self.c)
