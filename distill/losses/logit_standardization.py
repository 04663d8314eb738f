"""Logit standardization before KD (Sun et al. 2024, CVPR, arXiv:2403.01427).

"Logit Standardization in Knowledge Distillation": a shared temperature forces the student to
match the teacher's logit range as well as their relations. Z-scoring each sample's logits
first leaves only the relations to match, so a smaller student need not reach the teacher's
logit magnitudes.
"""

from __future__ import annotations

from torch import Tensor

from distill.losses.base import LossTerm, StepOutputs
from distill.losses.kd import soft_target_kd
from distill.validate import require_positive


def standardize_logits(logits: Tensor, eps: float = 1e-7) -> Tensor:
    """(z - mean(z)) / (std(z) + eps) over the classes (last dim), per sample.

    The std is the population one (1/K), as in the paper's definition; its released code uses
    the sample std (1/(K-1)), which only rescales the base temperature by sqrt((K-1)/K).
    `eps` keeps a sample with constant logits finite (it maps to all zeros).
    """
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True, correction=0)
    return (logits - mean) / (std + eps)


def standardized_kd(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Hinton KD (with its T^2 factor) on the z-scored student and teacher logits.

    Invariant to adding a constant to, or multiplying by a positive number, either model's
    logits for any sample.
    """
    return soft_target_kd(
        standardize_logits(student_logits), standardize_logits(teacher_logits), temperature
    )


class StandardizedKD(LossTerm):
    """KD on standardized logits; `temperature` > 0 is the paper's base temperature."""

    requires_teacher = True

    def __init__(self, temperature: float = 2.0, weight: float = 1.0) -> None:
        super().__init__(weight)
        self.temperature = require_positive("temperature", temperature)

    def compute(self, outputs: StepOutputs) -> Tensor:
        return standardized_kd(
            outputs.student_logits, outputs.require_teacher_logits(), self.temperature
        )
