"""Similarity-preserving knowledge distillation (Tung & Mori 2019, ICCV, arXiv:1907.09682)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from distill.losses.features import FeatureLossTerm, batch_vectors


def similarity_gram(vectors: Tensor) -> Tensor:
    """`Q Q^T` with each row scaled to unit L2 norm (Tung & Mori 2019, eq. 2-3)."""
    return F.normalize(vectors @ vectors.T, p=2, dim=1)


def similarity_preserving(student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
    """`||G_s - G_t||_F^2 / b^2` over a batch of `b` samples (Tung & Mori 2019, eq. 4).

    `G` is the row-normalized Gram matrix of the features flattened to `(b, -1)`, so only the
    samples' similarities to each other are matched: the two features may have different
    sizes, and scaling either one leaves the loss unchanged.
    """
    student, teacher = batch_vectors(
        student_feature, teacher_feature, 2, "similarity-preserving KD"
    )
    batch = student.shape[0]
    difference = similarity_gram(student) - similarity_gram(teacher)
    return difference.pow(2).sum() / batch**2


class SimilarityPreserving(FeatureLossTerm):
    """Similarity-preserving KD between paired student and teacher taps (Tung & Mori 2019).

    Compares batch-level similarity matrices, so the taps need not have the same shape and
    no adapter is ever built; `adapter` is accepted for a uniform config.
    """

    min_batch = 2

    needs_same_shape = False

    def pair_loss(self, student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
        return similarity_preserving(student_feature, teacher_feature)
