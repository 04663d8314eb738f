"""Decoupled knowledge distillation (Zhao et al. 2022, CVPR, arXiv:2203.08679)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.losses.base import LossTerm, StepOutputs
from distill.validate import require_positive, require_real


def _binary_and_non_target_log_probs(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Log of [p_target, 1 - p_target] (N, 2) and log-softmax over the non-target classes (N, K-1).

    Both are taken in log space from the logits, so a confident target (p_target -> 1) does not
    turn `log(1 - p_target)` into `log(0)`.
    """
    num_classes = logits.shape[-1]
    is_target = F.one_hot(targets, num_classes).bool()
    non_target_logits = logits[~is_target].view(-1, num_classes - 1)
    log_total = torch.logsumexp(logits, dim=-1)
    log_target = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - log_total
    log_non_target = torch.logsumexp(non_target_logits, dim=-1) - log_total
    binary = torch.stack([log_target, log_non_target], dim=-1)
    return binary, F.log_softmax(non_target_logits, dim=-1)


def decoupled_kd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    alpha: float,
    beta: float,
    temperature: float,
) -> Tensor:
    """T^2 * (alpha * TCKD + beta * NCKD), averaged over the batch.

    With p = softmax(logits / T): TCKD is the KL between the teacher's and the student's binary
    distributions [p_target, 1 - p_target]; NCKD is the KL between their distributions over the
    non-target classes alone (the target class removed and the rest renormalised). Classic KD
    is TCKD + (1 - p_target^teacher) * NCKD (Zhao et al. 2022, eq. 7); decoupling the two lets
    NCKD get a weight (`beta`) that no longer shrinks when the teacher is confident.
    `targets` are integer class indices, shape (N,); there must be at least two classes.
    """
    student_binary, student_non_target = _binary_and_non_target_log_probs(
        student_logits / temperature, targets
    )
    teacher_binary, teacher_non_target = _binary_and_non_target_log_probs(
        teacher_logits / temperature, targets
    )
    tckd = F.kl_div(student_binary, teacher_binary, reduction="batchmean", log_target=True)
    nckd = F.kl_div(student_non_target, teacher_non_target, reduction="batchmean", log_target=True)
    return (alpha * tckd + beta * nckd) * temperature**2


class DecoupledKD(LossTerm):
    """DKD term: `alpha` (TCKD) and `beta` (NCKD) >= 0, `temperature` > 0.

    The paper also ramps the term's weight up linearly over the first epochs (warm-up); that is a
    schedule on `weight`, not part of the loss, and is left to whoever schedules weights.
    """

    requires_teacher = True

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = 4.0,
        weight: float = 1.0,
    ) -> None:
        super().__init__(weight)
        self.alpha = require_real("alpha", alpha, minimum=0)
        self.beta = require_real("beta", beta, minimum=0)
        self.temperature = require_positive("temperature", temperature)

    def compute(self, outputs: StepOutputs) -> Tensor:
        return decoupled_kd(
            outputs.student_logits,
            outputs.require_teacher_logits(),
            outputs.targets,
            self.alpha,
            self.beta,
            self.temperature,
        )
