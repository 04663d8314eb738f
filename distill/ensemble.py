"""Several frozen teachers acting as one: their soft targets combined by a rule.

Rules: `mean`, the weighted mean of the teachers' soft targets (Hinton et al. 2015 distil an
ensemble this way), and `confidence`, per-sample weights that favour the teachers that are
confident on the true label: w_i(x) ∝ w_i exp(-CE_i(x)) (Zhang, Chen & Wang 2022,
"Confidence-Aware Multi-Teacher Knowledge Distillation"). Without labels (at test time) the
static weights apply.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.errors import ConfigError
from distill.losses.base import combine_soft_targets
from distill.teacher import FrozenTeacher

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


class TeacherEnsemble(nn.Module):
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
        if rule not in RULES:
            raise ConfigError("teacher_ensemble.rule", rule, f"one of {RULES}")
        if len(teachers) < 2:
            raise ConfigError("teachers", list(teachers), "two or more teachers for an ensemble")
        for name, weight in weights.items():
            valid = isinstance(weight, (int, float)) and not isinstance(weight, bool)
            if not valid or not math.isfinite(weight) or weight <= 0:
                raise ConfigError(f"teachers.{name}.weight", weight, "a finite number > 0")
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

    def train(self, mode: bool = True) -> TeacherEnsemble:
        return super().train(False)

    def tap_prefixes(self) -> dict[str, str]:
        """Tap prefix per teacher name; the empty prefix routes to the first teacher."""
        names = list(self.members)
        prefixes = {name: f"members.{name}.model." for name in names}
        return {"": prefixes[names[0]], **prefixes}

    def outputs(
        self, inputs: Tensor, targets: Tensor | None = None
    ) -> tuple[Tensor, list[Tensor], Tensor]:
        """(combined log-probabilities, each teacher's logits, (batch, teachers) weights)."""
        logits = [teacher(inputs) for teacher in self.members.values()]
        weights = ensemble_weights(logits, self.static_weights, self.rule, targets)
        combined = combine_soft_targets(logits, weights, temperature=1.0).clamp_min(1e-12).log()
        return combined, logits, weights

    def forward(self, inputs: Tensor) -> Tensor:
        return self.outputs(inputs)[0]
