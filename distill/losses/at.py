"""Attention Transfer (Zagoruyko & Komodakis 2017, "Paying More Attention to Attention", ICLR)."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from distill.losses.features import FeatureLossTerm
from distill.validate import require_real


def attention_map(feature: Tensor, p: float = 2.0) -> Tensor:
    """Spatial attention of a feature map `(batch, channels, *spatial)`: `(batch, positions)`.

    The mean over channels of |f|^p (the paper's F_sum^p up to the channel count, which the
    normalization removes), flattened and L2-normalized per sample, so that only where a
    network attends matters, not how strongly its features fire.
    """
    if feature.dim() < 3:
        raise ValueError(
            f"attention_map needs a feature map (batch, channels, *spatial), got "
            f"{tuple(feature.shape)}"
        )
    attention = feature.abs().pow(p).mean(dim=1).flatten(1)
    return F.normalize(attention, p=2.0, dim=1)


def attention_transfer(student_feature: Tensor, teacher_feature: Tensor, p: float = 2.0) -> Tensor:
    """Mean over the batch of ||a_s - a_t||_2^2, with a = `attention_map(f, p)`.

    Normalization: the squared distance is summed over positions and averaged over samples.
    Both maps are unit vectors with non-negative entries, so each sample's value lies in
    [0, 2] whatever the resolution, and layers of different sizes weigh alike. The paper
    writes beta/2 * ||a_s - a_t||_p (a norm, not squared); the authors' code squares it and
    averages over samples *and* positions, which is this value divided by the number of
    positions, so its beta (10^3) shrinks as maps get larger. Channels may differ.
    """
    if student_feature.shape[0] != teacher_feature.shape[0]:
        raise ValueError(
            f"batch sizes differ: {student_feature.shape[0]} vs {teacher_feature.shape[0]}"
        )
    if student_feature.shape[2:] != teacher_feature.shape[2:]:
        raise ValueError(
            f"attention maps compare positions, and spatial sizes differ: "
            f"{tuple(student_feature.shape[2:])} vs {tuple(teacher_feature.shape[2:])}"
        )
    difference = attention_map(student_feature, p) - attention_map(teacher_feature, p)
    return difference.pow(2).sum(dim=1).mean()


class AttentionTransfer(FeatureLossTerm):
    """Activation-based attention transfer between pairs of feature maps, averaged over pairs.

    `p` is the exponent of |f|^p (the paper's default 2). Channels may differ between
    student and teacher; spatial sizes must agree, which `build` checks.
    """

    needs_same_spatial_size = True

    def __init__(
        self,
        student: str | Sequence[str],
        teacher: str | Sequence[str],
        p: float = 2.0,
        weight: float = 1.0,
    ) -> None:
        super().__init__(student, teacher, weight=weight)
        # Below 1, |f|^p has an infinite slope at 0, and ReLU features are often exactly 0.
        self.p = require_real(
            "p", p, minimum=1.0, allowed="a finite number >= 1 (the paper uses 2)"
        )

    def pair_loss(self, student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
        return attention_transfer(student_feature, teacher_feature, self.p)
