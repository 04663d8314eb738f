"""One trained model as a teacher."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from distill.summary import count_parameters
from distill.teachers.base import Teacher, TeacherStep

# The member name of a run's single teacher (the `teacher` config node).
SINGLE = "teacher"


def class_path(obj: object) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


class FrozenTeacher(Teacher):
    """Wraps a trained model so that nothing can train it (see `Teacher`): eval mode for good,
    no gradients, and a forward pass that records no graph.

    `target` is what summary.json names the teacher by (its config's `_target_`); it defaults
    to the model's class path.
    """

    def __init__(self, model: nn.Module, target: str | None = None) -> None:
        super().__init__()
        self.model = model
        self.model.eval()
        for parameter in self.model.parameters():
            parameter.requires_grad = False
        self.target = target or class_path(model)

    def forward(self, inputs: Tensor) -> Tensor:
        # no_grad rather than inference_mode: inference tensors cannot be saved for the
        # student's backward pass, and the KD loss multiplies with teacher probabilities.
        with torch.no_grad():
            return self.model(inputs)

    def outputs(self, inputs: Tensor, targets: Tensor | None = None) -> TeacherStep:
        return TeacherStep(self(inputs))

    @property
    def tap_model(self) -> nn.Module:
        return self.model

    def member_models(self) -> dict[str, nn.Module]:
        return {SINGLE: self.model}

    def describe(
        self, test_acc: float | None, member_facts: Mapping[str, Mapping[str, Any]]
    ) -> dict[str, Any]:
        # Provisioning facts come last: a cached teacher's own test accuracy (measured when it
        # was trained) is the one reported, as it always was.
        return {
            "target": self.target,
            "test_acc": test_acc,
            "params_total": count_parameters(self),
            **member_facts[SINGLE],
        }


def as_teacher(model: nn.Module) -> Teacher:
    """`model` itself when it is a Teacher already, else the model frozen as one."""
    return model if isinstance(model, Teacher) else FrozenTeacher(model)
