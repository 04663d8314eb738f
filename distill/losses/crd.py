"""Contrastive Representation Distillation (Tian, Krishnan & Isola 2020, ICLR, arXiv:1910.10699).

A memory-bank NCE objective: embeddings of the same sample from student and teacher are pulled
together, embeddings of other samples (read from a bank of past embeddings) pushed apart.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.errors import ConfigError
from distill.losses.base import StepOutputs
from distill.losses.features import FeatureLossTerm, as_tap_list
from distill.validate import require_fraction, require_int, require_positive

_MASK64 = (1 << 64) - 1


def nce_loss(
    anchor: Tensor,
    positive: Tensor,
    negatives: Tensor,
    temperature: float,
    num_data: int,
    log_normalizer: Tensor | float = 0.0,
) -> Tensor:
    """CRD's NCE loss for one direction, averaged over the batch.

    `anchor` and `positive` are `(B, D)`, `negatives` `(B, K, D)`, all L2-normalized. With the
    critic h(a, b) = exp(a.b / T) / (exp(a.b / T) + K / N) (N = `num_data`, the dataset size;
    K / N is the noise term of NCE with uniform negatives, Tian et al. 2020, eq. 10-11), the loss
    is -[log h(anchor, positive) + sum_k log(1 - h(anchor, negative_k))].

    `log_normalizer` (log Z) divides exp(a.b / T) by Z, the partition-function estimate of the
    authors' implementation: with Z fixed from the first batch so that exp(a.b / T) / Z averages
    1 / N, h starts near 1 / (K + 1) and the loss near K log(1 + 1/K) + log(K + 1), instead of
    thousands with raw scores at T = 0.07.
    """
    num_negatives = negatives.shape[1]
    log_noise = math.log(num_negatives / num_data)
    positive_logit = (anchor * positive).sum(dim=-1) / temperature - log_normalizer  # (B,)
    negative_logits = (
        torch.einsum("bd,bkd->bk", anchor, negatives) / temperature - log_normalizer
    )  # (B, K)
    # log h = x - log(e^x + c) and log(1 - h) = log c - log(e^x + c), via logaddexp for stability.
    noise = torch.full_like(positive_logit, log_noise)
    log_h_positive = positive_logit - torch.logaddexp(positive_logit, noise)
    log_one_minus_h_negatives = log_noise - torch.logaddexp(
        negative_logits, noise.unsqueeze(1).expand_as(negative_logits)
    )
    return -(log_h_positive + log_one_minus_h_negatives.sum(dim=1)).mean()


def sample_negatives(
    positive_indices: Tensor, num_negatives: int, num_data: int, generator: torch.Generator
) -> Tensor:
    """`(B, K)` dataset indices drawn uniformly, with replacement, from all but each positive.

    Draw from the N - 1 slots [0, N - 1) and shift those at or above the positive up by one, so
    every other index is equally likely and the positive never appears.
    """
    draws = torch.randint(
        0, num_data - 1, (positive_indices.shape[0], num_negatives), generator=generator
    )
    positives = positive_indices.detach().to("cpu", torch.long).unsqueeze(1)
    return draws + (draws >= positives).long()


@torch.no_grad()
def momentum_update(bank: Tensor, indices: Tensor, embeddings: Tensor, momentum: float) -> None:
    """In place: bank[i] = normalize(momentum * bank[i] + (1 - momentum) * embedding_i).

    Indices are assumed distinct within a batch (one write per row).
    """
    mixed = momentum * bank[indices] + (1.0 - momentum) * embeddings.detach().to(bank.dtype)
    bank[indices] = F.normalize(mixed, dim=1)


def step_seed(seed: int, step: int) -> int:
    """A 64-bit seed for one sampling step, mixed from (seed, step) with splitmix64."""
    value = (seed * 0x9E3779B97F4A7C15 + step + 1) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (value ^ (value >> 31)) & ((1 << 63) - 1)


def _single_tap(field: str, value: str | Sequence[str]) -> str:
    taps = as_tap_list(value, field)
    if len(taps) != 1:
        raise ConfigError(field, value, "exactly one module name (CRD contrasts one feature pair)")
    return taps[0]


class ContrastiveRepresentationKD(FeatureLossTerm):
    """CRD term (Tian et al. 2020) between one student tap and one teacher tap.

    Both features are flattened and mapped by a linear embedding head each to `feat_dim`
    L2-normalized dimensions. Two memory banks hold one embedding per training sample (student
    bank, teacher bank); the loss is `nce_loss` with the teacher embedding as anchor against the
    student bank, plus the same with the student embedding against the teacher bank, with
    `num_negatives` negatives per anchor. Afterwards the banks' rows for the batch move toward
    the new embeddings with `momentum`. Both heads are trained with the student (the teacher
    network itself stays frozen: its feature is detached).

    `num_negatives` is capped at `num_train_samples - 1` (the samples other than the positive)
    when the dataset is small; `effective_num_negatives` holds the value used. Negatives for a
    step are drawn from a generator seeded by (`seed`, `sampling_step`), and `sampling_step` and
    the banks are buffers, so a run resumed from a checkpoint draws the same negatives. In eval
    mode the loss can still be computed, but banks and `sampling_step` stay as they are.
    Needs the samples' dataset indices (`requires_indices`).

    Args:
        student: student tap (one module name).
        teacher: teacher tap (one module name).
        feat_dim: embedding size.
        num_negatives: negatives per anchor (K), with replacement.
        temperature: critic temperature, > 0.
        momentum: bank momentum, in [0, 1).
        weight: term weight.
        seed: seeds the bank initialization and negative sampling.
    """

    requires_indices = True
    # Buffers registered in build(), once the dataset size is known.
    student_bank: Tensor
    teacher_bank: Tensor
    sampling_step: Tensor
    log_normalizer: Tensor

    def __init__(
        self,
        student: str,
        teacher: str,
        feat_dim: int = 128,
        num_negatives: int = 4096,
        temperature: float = 0.07,
        momentum: float = 0.5,
        weight: float = 0.8,
        seed: int = 0,
    ) -> None:
        student_tap = _single_tap("student", student)
        teacher_tap = _single_tap("teacher", teacher)
        super().__init__(student_tap, teacher_tap, weight=weight, adapter="none")
        self.feat_dim = require_int("feat_dim", feat_dim, minimum=1)
        self.num_negatives = require_int("num_negatives", num_negatives, minimum=1)
        self.temperature = require_positive("temperature", temperature)
        self.momentum = require_fraction("momentum", momentum)
        self.seed = require_int("seed", seed)
        self.num_data = 0
        self.effective_num_negatives = 0
        self.student_head: nn.Linear | None = None
        self.teacher_head: nn.Linear | None = None
        self.register_buffer("sampling_step", torch.zeros((), dtype=torch.long))
        # log Z per direction (teacher anchor, student anchor); NaN until the first batch sets it.
        self.register_buffer("log_normalizer", torch.full((2,), float("nan")))

    def build(
        self,
        student_shapes: Mapping[str, torch.Size],
        teacher_shapes: Mapping[str, torch.Size],
        num_train_samples: int,
    ) -> None:
        if num_train_samples < 2:
            raise ConfigError(
                "num_train_samples", num_train_samples, "at least 2 (CRD needs negatives)"
            )
        student_dim = math.prod(student_shapes[self._student_taps[0]][1:])
        teacher_dim = math.prod(teacher_shapes[self._teacher_taps[0]][1:])
        self.student_head = nn.Linear(student_dim, self.feat_dim)
        self.teacher_head = nn.Linear(teacher_dim, self.feat_dim)
        self.num_data = num_train_samples
        self.effective_num_negatives = min(self.num_negatives, num_train_samples - 1)
        generator = torch.Generator().manual_seed(self.seed)
        shape = (num_train_samples, self.feat_dim)
        self.register_buffer(
            "student_bank", F.normalize(torch.randn(shape, generator=generator), dim=1)
        )
        self.register_buffer(
            "teacher_bank", F.normalize(torch.randn(shape, generator=generator), dim=1)
        )
        self.sampling_step.zero_()

    def estimate_log_normalizer(
        self, anchor: Tensor, positive: Tensor, negatives: Tensor
    ) -> Tensor:
        """log Z with Z = N * mean(exp(a.b / T)) over this batch's positive and negative pairs."""
        logits = (
            torch.cat(
                [
                    (anchor * positive).sum(dim=-1, keepdim=True),
                    torch.einsum("bd,bkd->bk", anchor, negatives),
                ],
                dim=1,
            ).flatten()
            / self.temperature
        )
        return torch.logsumexp(logits, dim=0) - math.log(logits.numel()) + math.log(self.num_data)

    def draw_negatives(self, indices: Tensor) -> Tensor:
        """This step's `(B, K)` negative indices; the same for the same `sampling_step`."""
        generator = torch.Generator().manual_seed(step_seed(self.seed, int(self.sampling_step)))
        negatives = sample_negatives(
            indices, self.effective_num_negatives, self.num_data, generator
        )
        return negatives.to(indices.device)

    def compute(self, outputs: StepOutputs) -> Tensor:
        if self.student_head is None or self.teacher_head is None:
            raise RuntimeError(f"{type(self).__name__}.build() was not called before training")
        indices = outputs.indices
        if indices is None:
            raise RuntimeError(
                f"{type(self).__name__} needs the samples' dataset indices (outputs.indices) "
                "for its memory bank, and none were given; the training data must yield them"
            )
        indices = indices.long()
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.num_data):
            raise RuntimeError(
                f"{type(self).__name__}: dataset indices must lie in [0, {self.num_data}), "
                f"got [{int(indices.min())}, {int(indices.max())}]"
            )
        student_feature = torch.flatten(outputs.student_features[self._student_taps[0]], 1)
        teacher_feature = torch.flatten(outputs.teacher_features[self._teacher_taps[0]], 1)
        student_embedding = F.normalize(self.student_head(student_feature), dim=1)
        teacher_embedding = F.normalize(self.teacher_head(teacher_feature.detach()), dim=1)

        negatives = self.draw_negatives(indices)
        student_bank = self.student_bank.to(student_embedding.dtype)
        teacher_bank = self.teacher_bank.to(teacher_embedding.dtype)
        directions = (
            (teacher_embedding, student_bank[indices], student_bank[negatives]),
            (student_embedding, teacher_bank[indices], teacher_bank[negatives]),
        )
        if torch.isnan(self.log_normalizer).any():
            with torch.no_grad():
                for direction, (anchor, positive, negative) in enumerate(directions):
                    self.log_normalizer[direction] = self.estimate_log_normalizer(
                        anchor, positive, negative
                    )
        loss = torch.stack(
            [
                nce_loss(
                    anchor,
                    positive,
                    negative,
                    self.temperature,
                    self.num_data,
                    self.log_normalizer[direction],
                )
                for direction, (anchor, positive, negative) in enumerate(directions)
            ]
        ).sum()
        if self.training:
            momentum_update(self.student_bank, indices, student_embedding, self.momentum)
            momentum_update(self.teacher_bank, indices, teacher_embedding, self.momentum)
            self.sampling_step += 1
        return loss
