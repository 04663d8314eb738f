"""Relational loss terms (SP, PKT, RKD, CC) against the papers' formulas written with floats."""

import math

import pytest
import torch

from distill.errors import ConfigError
from distill.losses import StepOutputs
from distill.losses.cc import CorrelationCongruence, correlation_congruence
from distill.losses.pkt import PKT, probabilistic_transfer
from distill.losses.rkd import RelationalKD, relational_kd, rkd_angle, rkd_distance
from distill.losses.sp import SimilarityPreserving, similarity_preserving

# Three samples, 2-d features; the teacher's differ in direction and length.
STUDENT = [[1.0, 0.0], [0.5, 2.0], [1.0, 1.0]]
TEACHER = [[2.0, 1.0], [0.0, 1.0], [3.0, -1.0]]


def dot(a, b):
    return sum(x * y for x, y in zip(a, b, strict=True))


def unit(a):
    norm = math.sqrt(dot(a, a))
    return [x / norm for x in a]


def minus(a, b):
    return [x - y for x, y in zip(a, b, strict=True)]


def huber(x):
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def hand_sp(student, teacher):
    """Tung & Mori: row-normalized Gram matrices, squared Frobenius distance over b^2."""

    def gram(q):
        rows = [[dot(a, b) for b in q] for a in q]
        return [[g / math.sqrt(sum(v * v for v in row)) for g in row] for row in rows]

    g_s, g_t = gram(student), gram(teacher)
    b = len(student)
    return sum((g_s[i][j] - g_t[i][j]) ** 2 for i in range(b) for j in range(b)) / b**2


def hand_pkt(student, teacher, eps):
    """Passalis & Tefas: cosine kernel (1 + cos) / 2 over the other samples, KL(t || s) / b."""

    def conditional(q):
        b = len(q)
        kernel = [
            [(1 + dot(unit(q[i]), unit(q[j]))) / 2 if i != j else 0.0 for j in range(b)]
            for i in range(b)
        ]
        return [[k / (sum(row) + eps) for k in row] for row in kernel]

    p_s, p_t = conditional(student), conditional(teacher)
    b = len(student)
    kl = sum(
        p_t[i][j] * math.log((p_t[i][j] + eps) / (p_s[i][j] + eps))
        for i in range(b)
        for j in range(b)
    )
    return kl / b


def hand_rkd_distance(student, teacher):
    """Park et al.: distances of distinct pairs over their mean, Huber, averaged over pairs."""

    def normalized(q):
        distances = [math.dist(q[i], q[j]) for i in range(len(q)) for j in range(i + 1, len(q))]
        mean = sum(distances) / len(distances)
        return [d / mean for d in distances]

    pairs = list(zip(normalized(student), normalized(teacher), strict=True))
    return sum(huber(s - t) for s, t in pairs) / len(pairs)


def hand_rkd_angle(student, teacher):
    """Park et al.: cos of the angle at x_j between x_i and x_k, Huber, over distinct triplets."""

    def cosine(q, i, j, k):
        return dot(unit(minus(q[i], q[j])), unit(minus(q[k], q[j])))

    b = len(student)
    triplets = [
        (i, j, k) for i in range(b) for j in range(b) for k in range(b) if len({i, j, k}) == 3
    ]
    return sum(huber(cosine(student, *t) - cosine(teacher, *t)) for t in triplets) / len(triplets)


def hand_cc(student, teacher, gamma, order):
    """Peng et al.: sum_p exp(-2 gamma) (2 gamma)^p / p! (x.y)^p on unit vectors."""

    def correlation(q):
        return [
            [
                sum(
                    math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * dot(a, b) ** p
                    for p in range(order + 1)
                )
                for b in map(unit, q)
            ]
            for a in map(unit, q)
        ]

    c_s, c_t = correlation(student), correlation(teacher)
    b = len(student)
    return sum((c_s[i][j] - c_t[i][j]) ** 2 for i in range(b) for j in range(b)) / b**2


def as_tensor(rows):
    return torch.tensor(rows, dtype=torch.float64)


LOSSES = {
    "sp": similarity_preserving,
    "pkt": probabilistic_transfer,
    "rkd_distance": rkd_distance,
    "rkd_angle": rkd_angle,
    "rkd": relational_kd,
    "cc": correlation_congruence,
}


@pytest.mark.parametrize(
    ("loss", "expected"),
    [
        (similarity_preserving, hand_sp(STUDENT, TEACHER)),
        (probabilistic_transfer, hand_pkt(STUDENT, TEACHER, 1e-7)),
        (rkd_distance, hand_rkd_distance(STUDENT, TEACHER)),
        (rkd_angle, hand_rkd_angle(STUDENT, TEACHER)),
        (correlation_congruence, hand_cc(STUDENT, TEACHER, 0.4, 2)),
    ],
    ids=["sp", "pkt", "rkd_distance", "rkd_angle", "cc"],
)
def test_relational_loss_matches_hand_computation(loss, expected):
    assert expected > 1e-4  # the example is not trivially zero
    assert loss(as_tensor(STUDENT), as_tensor(TEACHER)).item() == pytest.approx(expected, rel=1e-9)


def test_rkd_distance_known_value():
    # Student: a 3-4-5 right triangle, mean side 4 -> 0.75, 1, 1.25. Teacher: equilateral -> 1s.
    # Huber of (-0.25, 0, 0.25) is 0.03125 each, mean 0.0625 / 3.
    student = as_tensor([[0.0, 0.0], [3.0, 0.0], [3.0, 4.0]])
    teacher = as_tensor([[0.0, 0.0], [2.0, 0.0], [1.0, math.sqrt(3.0)]])
    assert rkd_distance(student, teacher).item() == pytest.approx(0.0625 / 3, rel=1e-9)


def test_rkd_angle_known_value():
    # Student: right angle at sample 1 (cos 0), 45 degrees at 0 and 2. Teacher: all 60 degrees.
    student = as_tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    teacher = as_tensor([[0.0, 0.0], [2.0, 0.0], [1.0, math.sqrt(3.0)]])
    root_half = math.sqrt(0.5)
    expected = (2 * huber(root_half - 0.5) + huber(0.0 - 0.5)) / 3
    assert rkd_angle(student, teacher).item() == pytest.approx(expected, rel=1e-9)


def test_cc_order_and_gamma_follow_the_taylor_series():
    student, teacher = as_tensor(STUDENT), as_tensor(TEACHER)
    for gamma, order in [(0.4, 1), (1.0, 3)]:
        expected = hand_cc(STUDENT, TEACHER, gamma, order)
        value = correlation_congruence(student, teacher, gamma=gamma, order=order)
        assert value.item() == pytest.approx(expected, rel=1e-9)


def test_relational_kd_weights_distance_and_angle():
    student, teacher = as_tensor(STUDENT), as_tensor(TEACHER)
    expected = 0.5 * hand_rkd_distance(STUDENT, TEACHER) + 3.0 * hand_rkd_angle(STUDENT, TEACHER)
    value = relational_kd(student, teacher, distance_weight=0.5, angle_weight=3.0)
    assert value.item() == pytest.approx(expected, rel=1e-9)
    # A zero weight skips its part, so a batch of 2 works for the distance alone.
    pair = relational_kd(student[:2], teacher[:2] * 2, angle_weight=0.0)
    assert pair.item() == pytest.approx(0.0, abs=1e-12)


def features(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_relational_loss_is_zero_for_identical_features(name):
    feature = features(5, 3, 4)
    assert LOSSES[name](feature, feature.clone()).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_relational_loss_is_invariant_to_scaling_the_teacher(name):
    # SP, PKT and CC normalize the features, RKD normalizes distances and uses angles.
    student = features(5, 6)
    assert LOSSES[name](student, 3.0 * student).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name", ["rkd_distance", "rkd_angle"])
def test_rkd_is_invariant_to_translating_the_teacher(name):
    student = features(5, 6)
    assert LOSSES[name](student, student + 2.5).item() == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_relational_loss_compares_features_of_different_sizes(name):
    student = features(4, 16, 5, seed=1).relu().requires_grad_()
    teacher = features(4, 64, 5, seed=2).relu()
    value = LOSSES[name](student, teacher)
    assert value.ndim == 0 and value.item() > 0
    value.backward()
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_relational_loss_gradients_are_finite_for_repeated_and_zero_samples(name):
    # Dead ReLUs give all-zero samples and duplicates: zero norms and zero distances.
    rows = features(4, 3, seed=3)
    student = torch.cat([rows, rows[:1], torch.zeros(1, 3)]).requires_grad_()
    teacher = features(6, 5, seed=4)
    value = LOSSES[name](student, teacher)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(student.grad).all()


@pytest.mark.parametrize(
    ("loss", "batch"),
    [
        (similarity_preserving, 1),
        (probabilistic_transfer, 1),
        (rkd_distance, 1),
        (rkd_angle, 2),
        (correlation_congruence, 1),
    ],
)
def test_batches_too_small_for_relations_are_refused(loss, batch):
    with pytest.raises(ValueError, match="batch of"):
        loss(features(batch, 4), features(batch, 4))


def test_mismatched_batches_are_refused():
    with pytest.raises(ValueError, match="batches differ"):
        similarity_preserving(features(3, 4), features(4, 4))


TERMS = [
    (lambda: SimilarityPreserving("features.8", "features.8"), similarity_preserving),
    (lambda: PKT("features.8", "features.8"), probabilistic_transfer),
    (lambda: RelationalKD("features.8", "features.8"), relational_kd),
    (lambda: CorrelationCongruence("features.8", "features.8"), correlation_congruence),
]


@pytest.mark.parametrize(("make", "loss"), TERMS, ids=["sp", "pkt", "rkd", "cc"])
def test_term_reads_the_tapped_features(make, loss):
    term = make()
    assert term.requires_teacher and term.student_taps == term.teacher_taps == ["features.8"]
    student, teacher = features(4, 16, 5, seed=5), features(4, 64, 5, seed=6)
    term.build({"features.8": student.shape}, {"features.8": teacher.shape}, 100)
    assert not list(term.parameters())  # relations need no adapter
    outputs = StepOutputs(
        torch.zeros(4, 10),
        torch.zeros(4, dtype=torch.long),
        torch.zeros(4, 10),
        student_features={"features.8": student},
        teacher_features={"features.8": teacher},
    )
    assert term(outputs).item() == pytest.approx(loss(student, teacher).item(), rel=1e-6)


def test_term_averages_over_tap_pairs():
    term = SimilarityPreserving(["a", "b"], ["x", "y"])
    taps = {name: features(3, 2 + i, seed=i) for i, name in enumerate("abxy")}
    term.build({k: taps[k].shape for k in "ab"}, {k: taps[k].shape for k in "xy"}, 10)
    outputs = StepOutputs(
        torch.zeros(3, 2),
        torch.zeros(3, dtype=torch.long),
        torch.zeros(3, 2),
        student_features={k: taps[k] for k in "ab"},
        teacher_features={k: taps[k] for k in "xy"},
    )
    expected = (
        similarity_preserving(taps["a"], taps["x"]) + similarity_preserving(taps["b"], taps["y"])
    ) / 2
    assert term(outputs).item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: SimilarityPreserving("s", "t", weight=-1.0), "weight"),
        (lambda: SimilarityPreserving("s", ["t", "u"]), "teacher"),
        (lambda: PKT("s", "t", weight=float("nan")), "weight"),
        (lambda: PKT("s", "t", eps=0.0), "eps"),
        (lambda: PKT("s", "t", eps=-1e-7), "eps"),
        (lambda: RelationalKD("s", "t", distance_weight=-1.0), "distance_weight"),
        (lambda: RelationalKD("s", "t", angle_weight=float("inf")), "angle_weight"),
        (lambda: RelationalKD("s", "t", distance_weight=0.0, angle_weight=0.0), "angle_weight"),
        (lambda: RelationalKD("s", "t", weight=-0.5), "weight"),
        (lambda: CorrelationCongruence("s", "t", gamma=-0.4), "gamma"),
        (lambda: CorrelationCongruence("s", "t", gamma=0.0), "gamma"),
        (lambda: CorrelationCongruence("s", "t", order=-1), "order"),
        (lambda: CorrelationCongruence("s", "t", order=0), "order"),
        (lambda: CorrelationCongruence("s", "t", order=1.5), "order"),
        (lambda: CorrelationCongruence("s", "t", weight=-2.0), "weight"),
    ],
)
def test_bad_relational_settings_name_the_field(build, field):
    with pytest.raises(ConfigError) as error:
        build()
    assert error.value.field == field


@pytest.mark.parametrize(
    "term",
    [
        SimilarityPreserving("s", "t"),
        PKT("s", "t"),
        CorrelationCongruence("s", "t"),
        RelationalKD("s", "t"),
    ],
    ids=lambda term: type(term).__name__,
)
def test_a_batch_too_small_to_relate_contributes_zero(term):
    # The last, partial batch of an epoch can hold a single sample: no relation, no loss.
    term.build({"s": torch.Size([1, 4])}, {"t": torch.Size([1, 6])}, 10)
    student = torch.randn(1, 4, requires_grad=True)
    outputs = StepOutputs(
        student_logits=student.sum(dim=1, keepdim=True).expand(1, 3),
        targets=torch.zeros(1, dtype=torch.long),
        teacher_logits=torch.zeros(1, 3),
        student_features={"s": student},
        teacher_features={"t": torch.randn(1, 6)},
    )
    value = term(outputs)
    assert value.item() == 0.0
    value.backward()
