"""Several teachers: combined soft targets, per-sample confidence weights, frozen members."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from distill.errors import ConfigError
from distill.losses import SoftTargetKD, StepOutputs
from distill.taps import FeatureTaps
from distill.teachers import TeacherEnsemble


def softmax(values, temperature=1.0):
    exps = [math.exp(v / temperature) for v in values]
    return [e / sum(exps) for e in exps]


class Fixed(nn.Module):
    """A 'teacher' that returns the same logits for any input."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.head = nn.Linear(1, 3)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.copy_(torch.tensor(logits))

    def forward(self, inputs):
        return self.head(torch.zeros(inputs.shape[0], 1))


def test_kd_against_the_weighted_mean_of_soft_targets():
    ensemble = TeacherEnsemble(
        {"a": Fixed([2.0, 0.0, -1.0]), "b": Fixed([0.0, 1.0, 0.5])}, {"a": 3.0, "b": 1.0}
    )
    combined, logits, weights = ensemble.outputs(torch.zeros(1, 4))
    assert weights[0].tolist() == pytest.approx([0.75, 0.25])
    student = [0.5, 0.2, -0.3]
    temperature = 2.0
    target = [
        0.75 * a + 0.25 * b
        for a, b in zip(
            softmax([2.0, 0.0, -1.0], temperature),
            softmax([0.0, 1.0, 0.5], temperature),
            strict=True,
        )
    ]
    p_student = softmax(student, temperature)
    expected = temperature**2 * sum(
        t * (math.log(t) - math.log(s)) for t, s in zip(target, p_student, strict=True)
    )
    outputs = StepOutputs(
        torch.tensor([student]),
        torch.tensor([0]),
        combined,
        ensemble_logits=logits,
        ensemble_weights=weights,
    )
    value = SoftTargetKD(temperature=temperature)(outputs)
    assert value.item() == pytest.approx(expected, rel=1e-5)
    # Called as one teacher, the ensemble gives the log of the combined soft targets at T=1.
    at_one = [
        0.75 * a + 0.25 * b for a, b in zip(softmax([2, 0, -1]), softmax([0, 1, 0.5]), strict=True)
    ]
    assert combined.exp()[0].tolist() == pytest.approx(at_one, rel=1e-6)


def test_confidence_rule_weighs_teachers_by_their_loss_on_the_label():
    ensemble = TeacherEnsemble(
        {"right": Fixed([3.0, 0.0, 0.0]), "wrong": Fixed([0.0, 3.0, 0.0])},
        {"right": 1.0, "wrong": 1.0},
        rule="confidence",
    )
    _, _, weights = ensemble.outputs(torch.zeros(2, 4), targets=torch.tensor([0, 1]))
    ce_right = -math.log(softmax([3.0, 0.0, 0.0])[0])
    ce_wrong = -math.log(softmax([0.0, 3.0, 0.0])[0])
    w_right = math.exp(-ce_right) / (math.exp(-ce_right) + math.exp(-ce_wrong))
    assert weights[0].tolist() == pytest.approx([w_right, 1 - w_right], rel=1e-6)
    assert weights[1].tolist() == pytest.approx([1 - w_right, w_right], rel=1e-6)
    # Without labels (test time) the static weights apply.
    _, _, static = ensemble.outputs(torch.zeros(1, 4))
    assert static[0].tolist() == pytest.approx([0.5, 0.5])


def test_members_are_frozen_and_taps_route_by_teacher_name():
    first, second = nn.Sequential(nn.Linear(4, 3)), nn.Sequential(nn.Linear(4, 3))
    ensemble = TeacherEnsemble({"a": first, "b": second}, {"a": 1.0, "b": 1.0})
    ensemble.train()
    assert not any(m.training for m in ensemble.modules())
    assert not any(p.requires_grad for p in ensemble.parameters())
    inputs = torch.randn(2, 4)
    with FeatureTaps(ensemble, ["0", "b/0"], "loss", prefixes=ensemble.tap_prefixes()) as taps:
        ensemble(inputs)
        assert torch.equal(taps.features["0"], first(inputs))
        assert torch.equal(taps.features["b/0"], second(inputs))


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: TeacherEnsemble({"a": nn.Identity()}, {"a": 1.0}), "teachers"),
        (
            lambda: TeacherEnsemble({"a": nn.Identity(), "b": nn.Identity()}, {"a": 1, "b": 0}),
            "teachers.b.weight",
        ),
        (
            lambda: TeacherEnsemble(
                {"a": nn.Identity(), "b": nn.Identity()}, {"a": 1, "b": 1}, rule="vote"
            ),
            "teacher_ensemble.rule",
        ),
    ],
)
def test_bad_ensembles_are_refused(build, field):
    with pytest.raises(ConfigError) as error:
        build()
    assert error.value.field == field
