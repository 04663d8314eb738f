"""What every loss term sees, and how terms are combined into one training loss."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import Tensor, nn

from distill.errors import ConfigError
from distill.validate import require_real


@dataclass
class StepOutputs:
    """Everything a loss term may read for one training batch.

    Features are keyed by tap: a module name as `named_modules()` gives it (its output), or the
    name with an `:in` suffix (its first input). `indices` are the samples' positions in the
    training set, given when a term asks for them (`requires_indices`).
    """

    student_logits: Tensor
    targets: Tensor
    teacher_logits: Tensor | None = None
    student_features: dict[str, Tensor] = field(default_factory=dict)
    teacher_features: dict[str, Tensor] = field(default_factory=dict)
    indices: Tensor | None = None
    # With several teachers: each one's logits and the (batch, teachers) weights that combine
    # their soft targets; `teacher_logits` then holds the combination's log-probabilities.
    ensemble_logits: list[Tensor] | None = None
    ensemble_weights: Tensor | None = None

    def require_teacher_logits(self) -> Tensor:
        """`teacher_logits`, for a term that needs them; RuntimeError when none were given."""
        if self.teacher_logits is None:
            raise RuntimeError("teacher logits are needed, and none were given")
        return self.teacher_logits

    def teacher_probabilities(self, temperature: float) -> Tensor:
        """The teacher's soft targets at `temperature`, combined over an ensemble's teachers."""
        if self.ensemble_logits is None:
            return (self.require_teacher_logits() / temperature).softmax(dim=-1)
        if self.ensemble_weights is None:
            raise RuntimeError("ensemble_logits were given without their ensemble_weights")
        return combine_soft_targets(self.ensemble_logits, self.ensemble_weights, temperature)


def combine_soft_targets(logits: list[Tensor], weights: Tensor, temperature: float) -> Tensor:
    """sum_i w_i softmax(logits_i / T), with (batch, teachers) weights."""
    probabilities = torch.stack([(t / temperature).softmax(dim=-1) for t in logits], dim=1)
    return (weights.unsqueeze(-1) * probabilities).sum(dim=1)


class LossTerm(nn.Module):
    """One weighted term of the training loss.

    Subclasses implement `compute(outputs)` by calling their pure function, and set
    `requires_teacher` when they read teacher outputs (the run then provisions a teacher).
    """

    requires_teacher: bool = False
    # Terms that keep per-sample state (a memory bank) need each sample's dataset index.
    requires_indices: bool = False

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        # A finite number >= 0: a negative weight would reward the term's error.
        self.weight = require_real("weight", weight, minimum=0)

    @property
    def student_taps(self) -> list[str]:
        """Student features this term reads (tap keys); none for logit terms."""
        return []

    @property
    def teacher_taps(self) -> list[str]:
        """Teacher features this term reads (tap keys)."""
        return []

    def build(
        self,
        student_shapes: Mapping[str, torch.Size],
        teacher_shapes: Mapping[str, torch.Size],
        num_train_samples: int,
    ) -> None:
        """Called once before training with the shapes of the tapped features (batch first).

        Terms that own parameters whose size depends on those shapes (adapters, embedding
        heads, memory banks) create them here, so the optimizer sees them from the start.
        """

    def compute(self, outputs: StepOutputs) -> Tensor:
        raise NotImplementedError

    def forward(self, outputs: StepOutputs) -> Tensor:
        if self.requires_teacher and outputs.teacher_logits is None:
            raise RuntimeError(f"{type(self).__name__} needs teacher logits, and none were given")
        return self.compute(outputs)


class WeightedSum(nn.Module):
    """The training loss: sum over terms of `weight * term(outputs)`.

    Returns the total and each term's unweighted value, so both can be logged.
    """

    def __init__(self, terms: Mapping[str, LossTerm]) -> None:
        super().__init__()
        if not terms:
            raise ConfigError("loss", {}, "at least one loss term, e.g. loss=[ce,kd]")
        for name, term in terms.items():
            if not isinstance(term, LossTerm):
                raise ConfigError(
                    f"loss.{name}", type(term).__name__, "a distill.losses.LossTerm subclass"
                )
        self.terms = nn.ModuleDict(dict(terms))

    @property
    def requires_teacher(self) -> bool:
        return any(term.requires_teacher for term in self.terms.values())

    @property
    def weights(self) -> dict[str, float]:
        """Each term's weight, by name."""
        return {name: float(cast(LossTerm, term).weight) for name, term in self.terms.items()}

    def forward(self, outputs: StepOutputs) -> tuple[Tensor, dict[str, Tensor]]:
        values = {name: term(outputs) for name, term in self.terms.items()}
        total = torch.stack([self.terms[name].weight * value for name, value in values.items()])
        return total.sum(), values
