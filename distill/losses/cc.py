"""Correlation congruence for knowledge distillation (Peng et al. 2019, ICCV, arXiv:1904.01802)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from distill.losses.features import FeatureLossTerm, batch_vectors
from distill.validate import require_int, require_positive


def taylor_rbf_correlation(vectors: Tensor, gamma: float = 0.4, order: int = 2) -> Tensor:
    """Sample-by-sample Gaussian RBF kernel, by its Taylor expansion (Peng et al. 2019, eq. 9).

    On unit vectors `exp(-gamma ||x - y||^2) = exp(-2 gamma) exp(2 gamma x.y)`, expanded to
    `sum_{p=0..order} exp(-2 gamma) (2 gamma)^p / p! (x.y)^p`.
    """
    unit = F.normalize(vectors, p=2, dim=1)
    cosine = unit @ unit.T
    scale = math.exp(-2 * gamma)
    correlation = cosine.new_full(cosine.shape, scale)  # the p = 0 term
    for power in range(1, order + 1):
        coefficient = scale * (2 * gamma) ** power / math.factorial(power)
        correlation = correlation + coefficient * cosine.pow(power)
    return correlation


def correlation_congruence(
    student_feature: Tensor, teacher_feature: Tensor, gamma: float = 0.4, order: int = 2
) -> Tensor:
    """`||C_s - C_t||_F^2 / b^2` of the batch's kernel correlation matrices (eq. 7).

    Features are flattened to `(b, -1)` and L2-normalized (the paper's embeddings, without
    its learned projection), so their sizes may differ.
    """
    student, teacher = batch_vectors(student_feature, teacher_feature, 2, "correlation congruence")
    difference = taylor_rbf_correlation(student, gamma, order) - taylor_rbf_correlation(
        teacher, gamma, order
    )
    return difference.pow(2).sum() / student.shape[0] ** 2


class CorrelationCongruence(FeatureLossTerm):
    """Correlation congruence between paired taps (Peng et al. 2019).

    `gamma` > 0 is the RBF kernel's width parameter and `order` >= 1 the Taylor order (the
    paper uses 2). Compares batch-level correlations, so the taps need not have the same shape
    and no adapter is ever built; `adapter` is accepted for a uniform config.
    """

    min_batch = 2

    needs_same_shape = False

    def __init__(
        self,
        student: str | Sequence[str],
        teacher: str | Sequence[str],
        gamma: float = 0.4,
        order: int = 2,
        weight: float = 1.0,
        adapter: str = "auto",
    ) -> None:
        super().__init__(student, teacher, weight=weight, adapter=adapter)
        # gamma = 0 makes the kernel constant and the loss identically 0.
        self.gamma = require_positive("gamma", gamma)
        # order 0 keeps only the constant term: the loss would be identically 0.
        self.order = require_int("order", order, minimum=1, allowed="an integer >= 1, e.g. 2")

    def pair_loss(self, student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
        return correlation_congruence(student_feature, teacher_feature, self.gamma, self.order)
