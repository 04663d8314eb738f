"""Relational knowledge distillation (Park, Kim, Lu & Cho 2019, CVPR, arXiv:1904.05068)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.errors import ConfigError
from distill.losses.features import FeatureLossTerm, batch_vectors
from distill.validate import require_real

# Difference vectors shorter than this are treated as "same point": no angle, no gradient.
_MIN_DIFFERENCE_NORM = 1e-12


def normalized_distances(vectors: Tensor) -> Tensor:
    """Euclidean distances of the distinct pairs `i < j`, divided by their mean (eq. 4)."""
    distances = torch.pdist(vectors.contiguous(), p=2)
    # A batch of identical samples has no scale; its distances stay 0 instead of 0 / 0.
    mean = distances.mean().clamp_min(torch.finfo(distances.dtype).tiny)
    return distances / mean


def triplet_cosines(vectors: Tensor) -> Tensor:
    """`cos[j, i, k]` of the angle at sample `j` formed with `i` and `k` (eq. 6).

    Memory grows as `batch^2 * features`: tap a small or pooled feature for large batches.
    """
    differences = vectors.unsqueeze(0) - vectors.unsqueeze(1)  # [j, i] = x_i - x_j
    norms = differences.norm(p=2, dim=2, keepdim=True)
    distinct = norms > _MIN_DIFFERENCE_NORM
    # where() on a safe denominator: coincident points give a zero vector with zero gradient.
    units = torch.where(distinct, differences / torch.where(distinct, norms, 1.0), 0.0)
    return units @ units.transpose(1, 2)


def _distinct_triplets(batch: int, device: torch.device) -> Tensor:
    index = torch.arange(batch, device=device)
    j, i, k = index.view(-1, 1, 1), index.view(1, -1, 1), index.view(1, 1, -1)
    return (i != j) & (k != j) & (i != k)


def rkd_distance(student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
    """Distance-wise RKD: Huber (smooth L1, delta 1) between mean-normalized pair distances.

    Averaged over the distinct pairs of the batch (Park et al. 2019, eq. 4-5). Features are
    flattened to `(batch, -1)`; their sizes may differ and their scale does not matter.
    """
    student, teacher = batch_vectors(student_feature, teacher_feature, 2, "RKD distance")
    return F.smooth_l1_loss(normalized_distances(student), normalized_distances(teacher), beta=1.0)


def rkd_angle(student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
    """Angle-wise RKD: Huber (smooth L1, delta 1) between the cosines of triplet angles.

    Averaged over the ordered triplets of three distinct samples (Park et al. 2019, eq. 6-7).
    Features are flattened to `(batch, -1)`; their sizes may differ.
    """
    student, teacher = batch_vectors(student_feature, teacher_feature, 3, "RKD angle")
    triplets = _distinct_triplets(student.shape[0], student.device)
    return F.smooth_l1_loss(
        triplet_cosines(student)[triplets], triplet_cosines(teacher)[triplets], beta=1.0
    )


def relational_kd(
    student_feature: Tensor,
    teacher_feature: Tensor,
    distance_weight: float = 1.0,
    angle_weight: float = 2.0,
) -> Tensor:
    """`distance_weight * rkd_distance + angle_weight * rkd_angle`; a zero weight skips its part.

    The defaults 1 and 2 are the paper's (Park et al. 2019, sec. 4.1, metric learning); the
    authors' classification code uses 25 and 50 next to cross-entropy, i.e. the same 1:2
    ratio with the overall scale left to the term's `weight`.
    """
    loss = student_feature.new_zeros(())
    if distance_weight:
        loss = loss + distance_weight * rkd_distance(student_feature, teacher_feature)
    if angle_weight:
        loss = loss + angle_weight * rkd_angle(student_feature, teacher_feature)
    return loss


class RelationalKD(FeatureLossTerm):
    """Relational KD between paired taps: distance-wise plus angle-wise (Park et al. 2019).

    Compares relations among the batch's samples, so the taps need not have the same shape
    and no adapter is ever built; `adapter` is accepted for a uniform config. The angle part
    needs batches of 3 or more samples, the distance part 2 or more.
    """

    min_batch = 3

    needs_same_shape = False

    def __init__(
        self,
        student: str | Sequence[str],
        teacher: str | Sequence[str],
        distance_weight: float = 1.0,
        angle_weight: float = 2.0,
        weight: float = 1.0,
        adapter: str = "auto",
    ) -> None:
        super().__init__(student, teacher, weight=weight, adapter=adapter)
        self.distance_weight = require_real("distance_weight", distance_weight, minimum=0)
        self.angle_weight = require_real("angle_weight", angle_weight, minimum=0)
        if self.distance_weight == 0 and self.angle_weight == 0:
            raise ConfigError(
                "angle_weight", angle_weight, "> 0 when distance_weight is 0 (else RKD is 0)"
            )

    def pair_loss(self, student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
        return relational_kd(
            student_feature, teacher_feature, self.distance_weight, self.angle_weight
        )
