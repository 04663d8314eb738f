"""Logit-based KD terms (DKD, DIST, logit-standardized KD) against the papers' formulas by hand."""

import math

import pytest
import torch

from distill.errors import ConfigError
from distill.losses import StepOutputs
from distill.losses.dist import DISTLoss, dist_loss
from distill.losses.dkd import DecoupledKD, decoupled_kd
from distill.losses.logit_standardization import (
    StandardizedKD,
    standardize_logits,
    standardized_kd,
)

STUDENT = [[1.0, 2.0, 3.0, -0.5], [0.5, -1.0, 2.0, 0.0]]
TEACHER = [[3.0, 2.0, 1.0, 0.5], [0.0, 1.0, -2.0, 1.5]]
TARGETS = [2, 1]
# Three samples so that each class column has a correlation that is not just +-1.
STUDENT3 = [[1.0, 2.0, 3.0, -0.5], [0.5, -1.0, 2.0, 0.0], [-1.0, 0.2, 0.3, 1.0]]
TEACHER3 = [[3.0, 2.0, 1.0, 0.5], [0.0, 1.0, -2.0, 1.5], [0.4, -0.3, 2.0, 1.0]]


def softmax(values, temperature=1.0):
    exps = [math.exp(v / temperature) for v in values]
    return [e / sum(exps) for e in exps]


def kl(p, q):
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q, strict=True))


def pearson(x, y):
    mean_x, mean_y = sum(x) / len(x), sum(y) / len(y)
    cov = sum((a - mean_x) * (b - mean_y) for a, b in zip(x, y, strict=True))
    var_x = sum((a - mean_x) ** 2 for a in x)
    var_y = sum((b - mean_y) ** 2 for b in y)
    return cov / math.sqrt(var_x * var_y)


def zscore(values):
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    return [(v - mean) / std for v in values]


def hand_kd(student, teacher, temperature):
    return temperature**2 * kl(softmax(teacher, temperature), softmax(student, temperature))


def hand_dkd(student, teacher, targets, alpha, beta, temperature):
    """Zhao et al. 2022, eqs. 1-2 and 7, one sample at a time, then the batch mean."""
    total = 0.0
    for s, t, y in zip(student, teacher, targets, strict=True):
        p_s, p_t = softmax(s, temperature), softmax(t, temperature)
        tckd = kl([p_t[y], 1 - p_t[y]], [p_s[y], 1 - p_s[y]])
        rest_s = softmax([v for k, v in enumerate(s) if k != y], temperature)
        rest_t = softmax([v for k, v in enumerate(t) if k != y], temperature)
        nckd = kl(rest_t, rest_s)
        total += temperature**2 * (alpha * tckd + beta * nckd)
    return total / len(student)


def hand_dist(student, teacher, beta, gamma, temperature):
    """Huang et al. 2022, eqs. 5-8: rows (inter-class) and columns (intra-class)."""
    y_s = [softmax(row, temperature) for row in student]
    y_t = [softmax(row, temperature) for row in teacher]
    inter = sum(1 - pearson(s, t) for s, t in zip(y_s, y_t, strict=True)) / len(y_s)
    columns = range(len(y_s[0]))
    intra = sum(
        1 - pearson([row[j] for row in y_s], [row[j] for row in y_t]) for j in columns
    ) / len(columns)
    return temperature**2 * (beta * inter + gamma * intra)


def random_logits(rows, classes, seed):
    return torch.randn(rows, classes, generator=torch.Generator().manual_seed(seed))


# --- DKD -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("alpha", "beta", "temperature"), [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0)])
def test_dkd_matches_tckd_plus_nckd_by_hand(alpha, beta, temperature):
    expected = hand_dkd(STUDENT, TEACHER, TARGETS, alpha, beta, temperature)
    value = decoupled_kd(
        torch.tensor(STUDENT),
        torch.tensor(TEACHER),
        torch.tensor(TARGETS),
        alpha,
        beta,
        temperature,
    )
    assert value.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_dkd_with_beta_one_minus_teacher_target_prob_is_classic_kd(temperature):
    # Zhao et al. eq. 7: KD = TCKD + (1 - p_target^teacher) * NCKD, per sample.
    student, teacher, target = STUDENT[0], TEACHER[0], TARGETS[0]
    beta = 1 - softmax(teacher, temperature)[target]
    value = decoupled_kd(
        torch.tensor([student]),
        torch.tensor([teacher]),
        torch.tensor([target]),
        1.0,
        beta,
        temperature,
    )
    assert value.item() == pytest.approx(hand_kd(student, teacher, temperature), rel=1e-5)


def test_dkd_is_zero_when_student_equals_teacher():
    logits = random_logits(4, 5, seed=0)
    targets = torch.tensor([0, 1, 4, 2])
    assert decoupled_kd(logits, logits.clone(), targets, 1.0, 8.0, 4.0).item() == pytest.approx(
        0.0, abs=1e-6
    )


def test_dkd_stays_finite_for_a_saturated_target():
    # p_target == 1 in float32: 1 - p_target must not be taken as log(0).
    student = torch.tensor([[100.0, 0.0, -3.0]], requires_grad=True)
    teacher = torch.tensor([[60.0, 1.0, 0.0]])
    value = decoupled_kd(student, teacher, torch.tensor([0]), 1.0, 8.0, 1.0)
    value.backward()
    assert math.isfinite(value.item())
    assert torch.isfinite(student.grad).all()


# --- DIST ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("beta", "gamma", "temperature"), [(1.0, 1.0, 1.0), (2.0, 0.5, 2.0)])
def test_dist_matches_pearson_relations_by_hand(beta, gamma, temperature):
    expected = hand_dist(STUDENT3, TEACHER3, beta, gamma, temperature)
    value = dist_loss(torch.tensor(STUDENT3), torch.tensor(TEACHER3), beta, gamma, temperature)
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_dist_separates_inter_and_intra_terms():
    inter_only = hand_dist(STUDENT3, TEACHER3, 1.0, 0.0, 1.0)
    intra_only = hand_dist(STUDENT3, TEACHER3, 0.0, 1.0, 1.0)
    student, teacher = torch.tensor(STUDENT3), torch.tensor(TEACHER3)
    assert dist_loss(student, teacher, 1.0, 0.0, 1.0).item() == pytest.approx(inter_only, rel=1e-5)
    assert dist_loss(student, teacher, 0.0, 1.0, 1.0).item() == pytest.approx(intra_only, rel=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_dist_is_zero_at_correlation_one_even_when_probabilities_differ(temperature):
    # Student probabilities = 0.5 * teacher's + 0.5 / K: a positive affine map of every row and
    # every column, so all correlations are 1, although the distributions differ (KL > 0).
    classes = len(TEACHER3[0])
    teacher_probs = [softmax(row, temperature) for row in TEACHER3]
    student_probs = [[0.5 * p + 0.5 / classes for p in row] for row in teacher_probs]
    student = [[temperature * math.log(p) for p in row] for row in student_probs]
    assert kl(teacher_probs[0], student_probs[0]) > 1e-3
    value = dist_loss(torch.tensor(student), torch.tensor(TEACHER3), 1.0, 1.0, temperature)
    assert value.item() == pytest.approx(0.0, abs=1e-5)


def test_dist_is_zero_when_student_equals_teacher():
    logits = random_logits(4, 5, seed=1)
    assert dist_loss(logits, logits.clone(), 1.0, 1.0, 1.0).item() == pytest.approx(0.0, abs=1e-5)


def test_dist_batch_of_one_is_finite():
    # One sample: every class column is constant, so intra carries no signal but stays finite.
    student = torch.tensor([STUDENT[0]], requires_grad=True)
    value = dist_loss(student, torch.tensor([TEACHER[0]]), 1.0, 1.0, 1.0)
    value.backward()
    inter = 1 - pearson(softmax(STUDENT[0]), softmax(TEACHER[0]))
    assert value.item() == pytest.approx(inter + 1.0, rel=1e-5)
    assert torch.isfinite(student.grad).all()


# --- Logit standardization -------------------------------------------------------------------


def test_standardize_logits_is_a_per_sample_z_score():
    expected = [zscore(row) for row in STUDENT]
    assert torch.allclose(standardize_logits(torch.tensor(STUDENT)), torch.tensor(expected))


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_standardized_kd_is_hinton_kd_on_z_scores_by_hand(temperature):
    expected = (
        sum(
            hand_kd(zscore(s), zscore(t), temperature)
            for s, t in zip(STUDENT, TEACHER, strict=True)
        )
        / 2
    )
    value = standardized_kd(torch.tensor(STUDENT), torch.tensor(TEACHER), temperature)
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_standardized_kd_ignores_per_sample_shift_and_scale():
    student, teacher = torch.tensor(STUDENT), torch.tensor(TEACHER)
    reference = standardized_kd(student, teacher, 2.0).item()
    shift = torch.tensor([[7.0], [-3.0]])
    scale = torch.tensor([[3.0], [0.25]])
    assert standardized_kd(student + shift, teacher, 2.0).item() == pytest.approx(
        reference, rel=1e-5
    )
    assert standardized_kd(student * scale, teacher * scale.flip(0), 2.0).item() == pytest.approx(
        reference, rel=1e-5
    )


def test_standardized_kd_is_zero_when_student_is_an_affine_map_of_teacher():
    teacher = random_logits(3, 5, seed=2)
    for student in (teacher.clone(), 2.0 * teacher + 1.0):
        assert standardized_kd(student, teacher, 2.0).item() == pytest.approx(0.0, abs=1e-6)


def test_standardized_kd_is_finite_for_constant_logits():
    # A zero-initialised head gives constant logits: std 0, kept finite by eps.
    student = torch.zeros(2, 4, requires_grad=True)
    value = standardized_kd(student, torch.tensor(TEACHER), 2.0)
    value.backward()
    uniform = [0.25] * 4
    expected = sum(4.0 * kl(softmax(zscore(t), 2.0), uniform) for t in TEACHER) / 2
    assert value.item() == pytest.approx(expected, rel=1e-5)
    assert torch.isfinite(student.grad).all()


# --- The terms as modules --------------------------------------------------------------------


def outputs(student, teacher=TEACHER, targets=TARGETS):
    return StepOutputs(student, torch.tensor(targets), torch.tensor(teacher))


@pytest.mark.parametrize(
    ("term", "expected"),
    [
        (DecoupledKD(), lambda: hand_dkd(STUDENT, TEACHER, TARGETS, 1.0, 8.0, 4.0)),
        (DISTLoss(), lambda: hand_dist(STUDENT, TEACHER, 1.0, 1.0, 1.0)),
        (
            StandardizedKD(),
            lambda: (
                sum(
                    hand_kd(zscore(s), zscore(t), 2.0)
                    for s, t in zip(STUDENT, TEACHER, strict=True)
                )
                / 2
            ),
        ),
    ],
    ids=["dkd", "dist", "ls_kd"],
)
def test_terms_use_paper_defaults_and_give_finite_gradients(term, expected):
    assert term.requires_teacher
    student = torch.tensor(STUDENT, requires_grad=True)
    value = term(outputs(student))
    assert value.item() == pytest.approx(expected(), rel=1e-5)
    value.backward()
    assert torch.isfinite(student.grad).all()
    assert student.grad.abs().sum() > 0


@pytest.mark.parametrize("term", [DecoupledKD(), DISTLoss(), StandardizedKD()])
def test_terms_refuse_a_missing_teacher(term):
    with pytest.raises(RuntimeError, match="teacher"):
        term(StepOutputs(torch.tensor(STUDENT), torch.tensor(TARGETS)))


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: DecoupledKD(temperature=0), "temperature"),
        (lambda: DecoupledKD(temperature=-1.0), "temperature"),
        (lambda: DecoupledKD(temperature=float("nan")), "temperature"),
        (lambda: DecoupledKD(alpha=-0.1), "alpha"),
        (lambda: DecoupledKD(alpha=float("nan")), "alpha"),
        (lambda: DecoupledKD(beta=-1.0), "beta"),
        (lambda: DecoupledKD(beta=float("inf")), "beta"),
        (lambda: DecoupledKD(weight=-1.0), "weight"),
        (lambda: DISTLoss(temperature=0.0), "temperature"),
        (lambda: DISTLoss(temperature=float("nan")), "temperature"),
        (lambda: DISTLoss(beta=-1.0), "beta"),
        (lambda: DISTLoss(gamma=-1.0), "gamma"),
        (lambda: DISTLoss(gamma=float("nan")), "gamma"),
        (lambda: DISTLoss(beta="1"), "beta"),
        (lambda: StandardizedKD(temperature=0), "temperature"),
        (lambda: StandardizedKD(temperature=float("inf")), "temperature"),
        (lambda: StandardizedKD(temperature=True), "temperature"),
        (lambda: StandardizedKD(weight=float("nan")), "weight"),
    ],
)
def test_bad_settings_name_the_argument(build, field):
    with pytest.raises(ConfigError) as error:
        build()
    assert error.value.field == field
