"""Soft-target knowledge distillation (Hinton, Vinyals & Dean 2015, arXiv:1503.02531)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from distill.losses.base import LossTerm, StepOutputs
from distill.validate import require_positive


def soft_target_kd(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over the batch.

    The T^2 factor keeps the soft-target gradients on the same scale as the hard-label ones
    when T changes (Hinton et al. 2015, section 2).
    """
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


def soft_target_kd_from_probabilities(
    student_logits: Tensor, teacher_probabilities: Tensor, temperature: float
) -> Tensor:
    """The same loss against given soft targets (a teacher ensemble's combined ones)."""
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1)
    kl = F.kl_div(log_p_student, teacher_probabilities, reduction="batchmean")
    return kl * temperature**2


class SoftTargetKD(LossTerm):
    """Hinton KD term; `temperature` > 0 softens both distributions."""

    requires_teacher = True

    def __init__(self, temperature: float = 4.0, weight: float = 1.0) -> None:
        super().__init__(weight)
        self.temperature = require_positive("temperature", temperature)

    def compute(self, outputs: StepOutputs) -> Tensor:
        if outputs.ensemble_logits is not None:
            # Several teachers: the weighted mean of their soft targets at this temperature.
            targets = outputs.teacher_probabilities(self.temperature)
            return soft_target_kd_from_probabilities(
                outputs.student_logits, targets, self.temperature
            )
        return soft_target_kd(
            outputs.student_logits, outputs.require_teacher_logits(), self.temperature
        )
