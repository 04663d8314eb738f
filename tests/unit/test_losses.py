"""Loss terms against hand-computed values from the papers' formulas."""

import math

import pytest
import torch

from distill.errors import ConfigError
from distill.losses import (
    CrossEntropy,
    SoftTargetKD,
    StepOutputs,
    WeightedSum,
    cross_entropy,
    soft_target_kd,
)


def softmax(values, temperature=1.0):
    exps = [math.exp(v / temperature) for v in values]
    return [e / sum(exps) for e in exps]


def hand_kd(student, teacher, temperature):
    """T^2 * sum_i p_t,i * (log p_t,i - log p_s,i), written out with floats."""
    p_student = softmax(student, temperature)
    p_teacher = softmax(teacher, temperature)
    kl = sum(t * (math.log(t) - math.log(s)) for t, s in zip(p_teacher, p_student, strict=True))
    return temperature**2 * kl


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_soft_target_kd_matches_hinton_formula_with_t_squared(temperature):
    student = [[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]]
    teacher = [[3.0, 2.0, 1.0], [0.0, 1.0, -2.0]]
    expected = sum(hand_kd(s, t, temperature) for s, t in zip(student, teacher, strict=True)) / 2
    value = soft_target_kd(torch.tensor(student), torch.tensor(teacher), temperature)
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_soft_target_kd_is_zero_when_student_equals_teacher():
    logits = torch.randn(4, 10, generator=torch.Generator().manual_seed(0))
    assert soft_target_kd(logits, logits.clone(), 3.0).item() == pytest.approx(0.0, abs=1e-6)


def test_kd_gradient_scale_is_kept_by_t_squared():
    # Hinton et al.: soft-target gradients scale as 1/T^2, so T^2 keeps them comparable.
    # For large T, d/ds of T^2 * KL -> (s - t) / (N * K) with zero-mean logits (N=1, K=classes).
    student = torch.tensor([[0.3, -0.1, -0.2]], requires_grad=True)
    teacher = torch.tensor([[-0.2, 0.4, -0.2]])
    soft_target_kd(student, teacher, temperature=100.0).backward()
    expected = (student.detach() - teacher) / 3
    assert torch.allclose(student.grad, expected, atol=1e-3)


def test_cross_entropy_matches_negative_log_likelihood():
    logits = [[2.0, 0.5, -1.0]]
    expected = -math.log(softmax(logits[0])[0])
    value = cross_entropy(torch.tensor(logits), torch.tensor([0]))
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_weighted_sum_adds_weighted_terms_and_reports_each():
    student = torch.tensor([[1.0, 2.0, 3.0]])
    teacher = torch.tensor([[3.0, 2.0, 1.0]])
    targets = torch.tensor([2])
    loss = WeightedSum(
        {"ce": CrossEntropy(weight=0.25), "kd": SoftTargetKD(temperature=2.0, weight=0.75)}
    )
    total, terms = loss(StepOutputs(student, targets, teacher))
    ce = -math.log(softmax([1.0, 2.0, 3.0])[2])
    kd = hand_kd([1.0, 2.0, 3.0], [3.0, 2.0, 1.0], 2.0)
    assert terms["ce"].item() == pytest.approx(ce, rel=1e-6)
    assert terms["kd"].item() == pytest.approx(kd, rel=1e-6)
    assert total.item() == pytest.approx(0.25 * ce + 0.75 * kd, rel=1e-6)
    assert loss.requires_teacher


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: SoftTargetKD(temperature=0), "temperature"),
        (lambda: SoftTargetKD(temperature=float("nan")), "temperature"),
        (lambda: SoftTargetKD(weight=-1), "weight"),
        (lambda: CrossEntropy(weight=float("inf")), "weight"),
        (lambda: CrossEntropy(weight="1"), "weight"),
        (lambda: CrossEntropy(label_smoothing=1.0), "label_smoothing"),
        (lambda: WeightedSum({}), "loss"),
    ],
)
def test_bad_loss_settings_name_the_field(build, field):
    with pytest.raises(ConfigError) as error:
        build()
    assert error.value.field == field
