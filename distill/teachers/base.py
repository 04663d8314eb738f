"""The one interface every teacher offers, whether it is one frozen model or an ensemble.

DistillationModule, the pipeline and provisioning drive a teacher only through it, so none of
them asks which kind of teacher it holds.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, NamedTuple

from torch import Tensor, nn


class TeacherStep(NamedTuple):
    """What a teacher gives a training step.

    `logits` is what a logit loss and the accuracy metrics read; with several teachers it holds
    the log-probabilities of their combined soft targets at T=1, and `member_logits` /
    `member_weights` are each teacher's logits and the (batch, teachers) weights that combine
    them, so a loss can combine soft targets at its own temperature.
    """

    logits: Tensor
    member_logits: list[Tensor] | None = None
    member_weights: Tensor | None = None


class Teacher(nn.Module, ABC):
    """A frozen teacher: nothing trains it once it teaches.

    Lightning calls `.train()` on the whole LightningModule at every epoch start; a teacher
    that followed would update BatchNorm statistics and apply dropout, so `train()` keeps it in
    eval mode and `requires_grad_()` keeps its weights frozen (provisioning trains the models
    of `member_models()` themselves, never through this wrapper).
    """

    def train(self, mode: bool = True) -> Teacher:
        return super().train(False)

    def requires_grad_(self, requires_grad: bool = True) -> Teacher:
        return super().requires_grad_(False)

    @abstractmethod
    def forward(self, inputs: Tensor) -> Tensor:
        """Logits (an ensemble: log-probabilities of its combined soft targets at T=1)."""

    @abstractmethod
    def outputs(self, inputs: Tensor, targets: Tensor | None = None) -> TeacherStep:
        """Everything a training step needs; `targets` let an ensemble weigh per sample."""

    @property
    @abstractmethod
    def tap_model(self) -> nn.Module:
        """The module whose submodules feature taps name."""

    def tap_prefixes(self) -> dict[str, str] | None:
        """Tap routing for `FeatureTaps(prefixes=...)`; None when tap keys are module names."""
        return None

    @abstractmethod
    def member_models(self) -> dict[str, nn.Module]:
        """name -> the model to provision (train or load); one teacher's only member is
        "teacher"."""

    @abstractmethod
    def describe(
        self, test_acc: float | None, member_facts: Mapping[str, Mapping[str, Any]]
    ) -> dict[str, Any]:
        """The `teacher` section of summary.json, from the test accuracy and what
        provisioning said about each member (`provide_teachers`)."""

    def output_cache_refusal(self) -> str | None:
        """Why this teacher's outputs cannot be computed once and reused, or None."""
        return None
