"""Probabilistic knowledge transfer (Passalis & Tefas 2018, ECCV, arXiv:1803.10837)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.losses.features import FeatureLossTerm, batch_vectors
from distill.validate import require_positive


def neighbour_probabilities(vectors: Tensor, eps: float = 1e-7) -> Tensor:
    """`p[i, j] = p(j | i)` from the cosine kernel `(1 + cos) / 2`, with `p(i | i) = 0`.

    Passalis & Tefas 2018, eq. 3 and 10: each sample's kernel values to the *other* samples,
    normalized to sum to one.
    """
    unit = F.normalize(vectors, p=2, dim=1, eps=eps)
    kernel = (unit @ unit.T + 1) / 2
    off_diagonal = 1 - torch.eye(kernel.shape[0], dtype=kernel.dtype, device=kernel.device)
    kernel = kernel * off_diagonal
    # eps keeps a sample whose cosine to every other one is -1 (kernel row of zeros) finite.
    return kernel / (kernel.sum(dim=1, keepdim=True) + eps)


def probabilistic_transfer(
    student_feature: Tensor, teacher_feature: Tensor, eps: float = 1e-7
) -> Tensor:
    """`KL(P_teacher || P_student)` of the samples' neighbour distributions, batch-averaged.

    `(1/b) sum_i sum_{j != i} p_t(j|i) log((p_t(j|i) + eps) / (p_s(j|i) + eps))` over the
    features flattened to `(b, -1)` (Passalis & Tefas 2018, eq. 9 with the cosine kernel).
    Features are L2-normalized first, so their sizes may differ and scale does not matter.
    The authors' code averages over all `b^2` entries instead (a factor `b` smaller).
    """
    student, teacher = batch_vectors(
        student_feature, teacher_feature, 2, "probabilistic knowledge transfer"
    )
    p_student = neighbour_probabilities(student, eps)
    p_teacher = neighbour_probabilities(teacher, eps)
    kl = p_teacher * torch.log((p_teacher + eps) / (p_student + eps))
    return kl.sum() / student.shape[0]


class PKT(FeatureLossTerm):
    """Probabilistic knowledge transfer between paired taps (Passalis & Tefas 2018).

    Matches batch-level neighbour distributions, so the taps need not have the same shape and
    no adapter is ever built; `adapter` is accepted for a uniform config. `eps` > 0 guards
    the normalizations and the logarithm.
    """

    min_batch = 2

    needs_same_shape = False

    def __init__(
        self,
        student: str | Sequence[str],
        teacher: str | Sequence[str],
        eps: float = 1e-7,
        weight: float = 1.0,
        adapter: str = "auto",
    ) -> None:
        super().__init__(student, teacher, weight=weight, adapter=adapter)
        self.eps = require_positive("eps", eps)

    def pair_loss(self, student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
        return probabilistic_transfer(student_feature, teacher_feature, self.eps)
