"""DIST: distillation by correlation (Huang et al. 2022, NeurIPS, arXiv:2205.10536).

"Knowledge Distillation from A Stronger Teacher": match the teacher's relations, not its exact
probabilities, so a much stronger teacher does not force the student to copy values it cannot
reach.
"""

from __future__ import annotations

import torch
from torch import Tensor

from distill.losses.base import LossTerm, StepOutputs
from distill.validate import require_positive, require_real

# Keeps the correlation finite for a constant vector (e.g. one class across a batch of one),
# where it is undefined; such a vector then counts as uncorrelated.
_EPS = 1e-8


def pearson_correlation(a: Tensor, b: Tensor, dim: int) -> Tensor:
    """Pearson correlation of `a` and `b` along `dim`: the cosine of the centred vectors."""
    a = a - a.mean(dim=dim, keepdim=True)
    b = b - b.mean(dim=dim, keepdim=True)
    norms = torch.linalg.vector_norm(a, dim=dim) * torch.linalg.vector_norm(b, dim=dim)
    return (a * b).sum(dim=dim) / (norms + _EPS)


def dist_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    beta: float,
    gamma: float,
    temperature: float,
) -> Tensor:
    """tau^2 * (beta * inter + gamma * intra) on Y = softmax(logits / tau), shape (N, K).

    inter: 1 - Pearson(Y_s[i, :], Y_t[i, :]) averaged over the N samples (how each sample ranks
    the classes). intra: 1 - Pearson(Y_s[:, j], Y_t[:, j]) averaged over the K classes (how each
    class is spread over the batch). Both lie in [0, 2] and are 0 when the student's
    probabilities are a positive affine map of the teacher's. The intra term needs a batch of
    at least two samples to carry any signal.
    """
    p_student = torch.softmax(student_logits / temperature, dim=-1)
    p_teacher = torch.softmax(teacher_logits / temperature, dim=-1)
    inter = (1 - pearson_correlation(p_student, p_teacher, dim=1)).mean()
    intra = (1 - pearson_correlation(p_student, p_teacher, dim=0)).mean()
    return temperature**2 * (beta * inter + gamma * intra)


class DISTLoss(LossTerm):
    """DIST term: `beta` (inter-class) and `gamma` (intra-class) >= 0, `temperature` > 0."""

    requires_teacher = True

    def __init__(
        self,
        beta: float = 1.0,
        gamma: float = 1.0,
        temperature: float = 1.0,
        weight: float = 1.0,
    ) -> None:
        super().__init__(weight)
        self.beta = require_real("beta", beta, minimum=0)
        self.gamma = require_real("gamma", gamma, minimum=0)
        self.temperature = require_positive("temperature", temperature)

    def compute(self, outputs: StepOutputs) -> Tensor:
        return dist_loss(
            outputs.student_logits,
            outputs.require_teacher_logits(),
            self.beta,
            self.gamma,
            self.temperature,
        )
