"""Several frozen teachers acting as one: their soft targets combined by a rule.

Rules: `mean`, the weighted mean of the teachers' soft targets (Hinton et al. 2015 distil an
ensemble this way), and `confidence`, per-sample weights that favour the teachers that are
confident on the true label: w_i(x) ∝ w_i exp(-CE_i(x)) (Zhang, Chen & Wang 2022,
"Confidence-Aware Multi-Teacher Knowledge Distillation"). Without labels (at test time) the
static weights apply.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.errors import ConfigError
from distill.losses.base import combine_soft_targets
from distill.summary import count_parameters
from distill.teachers.base import Teacher, TeacherStep
from distill.teachers.frozen import FrozenTeacher, class_path
from distill.validate import require_choice, require_positive

RULES = ("mean", "confidence")


def ensemble_weights(
    logits: list[Tensor], static: Tensor, rule: str, targets: Tensor | None
) -> Tensor:
    """(batch, teachers) weights that sum to 1 over the teachers."""
    batch = logits[0].shape[0]
    log_static = static.log().to(logits[0].device)
    if rule == "mean" or targets is None:
        return log_static.softmax(dim=0).expand(batch, -1)
    losses = torch.stack(
        [F.cross_entropy(teacher, targets, reduction="none") for teacher in logits], dim=1
    )
    return (log_static - losses).softmax(dim=1)


class TeacherEnsemble(Teacher):
    """Frozen teachers by name, with static weights and a combination rule.

    Called like one teacher it returns log-probabilities of the combined soft targets at T=1,
    usable as logits by every logit loss and by the accuracy metrics; `outputs(x, targets)` also
    gives each teacher's logits and the weights, so KD combines soft targets at its own T.
    Feature taps name a teacher's module as `<teacher>/<module>`; a bare module name means the
    first teacher's.
    """

    def __init__(
        self, teachers: Mapping[str, nn.Module], weights: Mapping[str, float], rule: str = "mean"
    ) -> None:
        super().__init__()
        require_choice("teacher_ensemble.rule", rule, RULES)
        if len(teachers) < 2:
            raise ConfigError("teachers", list(teachers), "two or more teachers for an ensemble")
        for name, weight in weights.items():
            require_positive(f"teachers.{name}.weight", weight)
        # The attribute name is part of the state_dict keys (members.<name>.model.*) and of the
        # tap prefixes: keep it.
        self.members = nn.ModuleDict(
            {
                name: teacher if isinstance(teacher, FrozenTeacher) else FrozenTeacher(teacher)
                for name, teacher in teachers.items()
            }
        )
        self.register_buffer(
            "static_weights", torch.tensor([float(weights[name]) for name in teachers])
        )
        self.rule = rule

    @property
    def tap_model(self) -> nn.Module:
        return self

    def tap_prefixes(self) -> dict[str, str]:
        """Tap prefix per teacher name; the empty prefix routes to the first teacher."""
        names = list(self.members)
        prefixes = {name: f"members.{name}.model." for name in names}
        return {"": prefixes[names[0]], **prefixes}

    def member_models(self) -> dict[str, nn.Module]:
        return {name: self._member(name).model for name in self.members}

    def _member(self, name: str) -> FrozenTeacher:
        member = self.members[name]
        assert isinstance(member, FrozenTeacher)  # every member is wrapped in __init__
        return member

    def outputs(self, inputs: Tensor, targets: Tensor | None = None) -> TeacherStep:
        """(combined log-probabilities, each teacher's logits, (batch, teachers) weights)."""
        logits = [teacher(inputs) for teacher in self.members.values()]
        static = self.static_weights
        assert isinstance(static, Tensor)
        weights = ensemble_weights(logits, static, self.rule, targets)
        combined = combine_soft_targets(logits, weights, temperature=1.0).clamp_min(1e-12).log()
        return TeacherStep(combined, logits, weights)

    def forward(self, inputs: Tensor) -> Tensor:
        return self.outputs(inputs).logits

    def describe(
        self, test_acc: float | None, member_facts: Mapping[str, Mapping[str, Any]]
    ) -> dict[str, Any]:
        return {
            "target": class_path(self),
            "test_acc": test_acc,
            "params_total": count_parameters(self),
            "rule": self.rule,
            "members": {name: dict(member_facts[name]) for name in self.members},
        }

    def output_cache_refusal(self) -> str | None:
        return "teacher ensembles are not cached yet"
