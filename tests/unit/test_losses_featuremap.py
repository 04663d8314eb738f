"""Feature-map terms (FitNets, AT, NST) against hand-computed values from the papers' formulas."""

import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from distill.errors import ConfigError
from distill.losses import StepOutputs
from distill.losses.at import AttentionTransfer, attention_map, attention_transfer
from distill.losses.fitnets import FitNets, hint_loss
from distill.losses.nst import NeuronSelectivityTransfer, nst_mmd
from distill.models import ConvNet1D

LOSS_CONF = Path(__file__).resolve().parents[2] / "conf" / "loss"

# batch 2, (channels, length): student 2 x 3, teacher 3 x 3 (channels differ, lengths agree).
STUDENT = [
    [[1.0, -2.0, 0.5], [0.0, 1.0, 3.0]],
    [[2.0, 2.0, -1.0], [1.0, 0.0, 0.5]],
]
TEACHER = [
    [[0.5, 1.0, 2.0], [-1.0, 0.0, 1.0], [2.0, 1.0, 0.0]],
    [[1.0, 1.0, 1.0], [0.0, 2.0, 0.0], [3.0, 0.0, 1.0]],
]


def unit(vector):
    norm = math.sqrt(sum(v * v for v in vector))
    return [v / norm for v in vector]


def hand_attention(sample, p):
    """Mean over channels of |f|^p at each position, then unit L2 norm."""
    positions = len(sample[0])
    return unit([sum(abs(ch[i]) ** p for ch in sample) / len(sample) for i in range(positions)])


def hand_at(student, teacher, p):
    per_sample = [
        sum((a - b) ** 2 for a, b in zip(hand_attention(s, p), hand_attention(t, p), strict=True))
        for s, t in zip(student, teacher, strict=True)
    ]
    return sum(per_sample) / len(per_sample)


def hand_nst(student, teacher, degree, c):
    def kernel_mean(xs, ys):
        values = [
            (sum(a * b for a, b in zip(x, y, strict=True)) + c) ** degree for x in xs for y in ys
        ]
        return sum(values) / len(values)

    per_sample = []
    for s, t in zip(student, teacher, strict=True):
        s_rows, t_rows = [unit(ch) for ch in s], [unit(ch) for ch in t]
        per_sample.append(
            kernel_mean(s_rows, s_rows)
            + kernel_mean(t_rows, t_rows)
            - 2 * kernel_mean(s_rows, t_rows)
        )
    return sum(per_sample) / len(per_sample)


def shapes(**taps):
    return {tap: torch.Size(shape) for tap, shape in taps.items()}


# --- pure functions -------------------------------------------------------------------------


def test_hint_loss_is_mean_squared_error():
    student = [[[1.0, -2.0, 0.5], [0.0, 1.0, 3.0]], [[2.0, 2.0, -1.0], [1.0, 0.0, 0.5]]]
    teacher = [[[0.5, 1.0, 2.0], [-1.0, 0.0, 1.0]], [[1.0, 1.0, 1.0], [0.0, 2.0, 0.0]]]
    flat_s = [v for sample in student for ch in sample for v in ch]
    flat_t = [v for sample in teacher for ch in sample for v in ch]
    expected = sum((a - b) ** 2 for a, b in zip(flat_s, flat_t, strict=True)) / len(flat_s)
    value = hint_loss(torch.tensor(student), torch.tensor(teacher))
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_hint_loss_refuses_differing_shapes():
    with pytest.raises(ValueError, match="shapes differ"):
        hint_loss(torch.zeros(2, 3, 4), torch.zeros(2, 5, 4))


@pytest.mark.parametrize("p", [1.0, 2.0, 4.0])
def test_attention_map_matches_mean_of_powers_normalized(p):
    maps = attention_map(torch.tensor(STUDENT), p)
    for sample, row in zip(STUDENT, maps.tolist(), strict=True):
        assert row == pytest.approx(hand_attention(sample, p), rel=1e-6)


@pytest.mark.parametrize("p", [1.0, 2.0, 4.0])
def test_attention_transfer_matches_hand_computation(p):
    value = attention_transfer(torch.tensor(STUDENT), torch.tensor(TEACHER), p)
    assert value.item() == pytest.approx(hand_at(STUDENT, TEACHER, p), rel=1e-5)


def test_attention_transfer_known_value_for_disjoint_attention():
    # Attention on different positions: two orthogonal unit vectors, ||a_s - a_t||^2 = 2.
    student = torch.tensor([[[3.0, 0.0, 0.0]]])
    teacher = torch.tensor([[[0.0, 0.0, 5.0], [0.0, 0.0, -1.0]]])
    assert attention_transfer(student, teacher).item() == pytest.approx(2.0, rel=1e-6)


def test_attention_transfer_is_invariant_to_positive_scaling_per_sample():
    student, teacher = torch.tensor(STUDENT), torch.tensor(TEACHER)
    scaled = student * torch.tensor([3.0, 0.25]).view(2, 1, 1)
    assert attention_transfer(scaled, teacher).item() == pytest.approx(
        attention_transfer(student, teacher).item(), rel=1e-5
    )


@pytest.mark.parametrize(("degree", "c"), [(2, 0.0), (1, 0.0), (3, 0.5)])
def test_nst_mmd_matches_hand_computation(degree, c):
    value = nst_mmd(torch.tensor(STUDENT), torch.tensor(TEACHER), degree, c)
    assert value.item() == pytest.approx(hand_nst(STUDENT, TEACHER, degree, c), rel=1e-5)


def test_nst_mmd_is_invariant_to_scaling_each_channel():
    student, teacher = torch.tensor(STUDENT), torch.tensor(TEACHER)
    scaled = student * torch.tensor([[2.0, 0.5], [7.0, 1.5]]).view(2, 2, 1)
    assert nst_mmd(scaled, teacher).item() == pytest.approx(
        nst_mmd(student, teacher).item(), rel=1e-5
    )


@pytest.mark.parametrize("loss", [hint_loss, attention_transfer, nst_mmd])
def test_feature_losses_are_zero_when_student_equals_teacher(loss):
    feature = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0))
    assert loss(feature, feature.clone()).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("loss", [attention_transfer, nst_mmd])
def test_map_losses_refuse_differing_spatial_sizes(loss):
    with pytest.raises(ValueError, match="spatial sizes differ"):
        loss(torch.ones(2, 3, 4), torch.ones(2, 3, 5))


# --- terms: build, adapters, gradients ------------------------------------------------------


def test_fitnets_builds_identity_when_shapes_agree_and_adapter_when_they_differ():
    term = FitNets(student=["a", "b"], teacher=["x", "y"])
    term.build(shapes(a=(2, 4, 3), b=(2, 8)), shapes(x=(2, 4, 3), y=(2, 6)), 10)
    assert isinstance(term.adapters[0], nn.Identity)
    assert isinstance(term.adapters[1], nn.Linear)
    assert term.adapters[1].weight.shape == (6, 8)

    term = FitNets(student="a", teacher="x")
    term.build(shapes(a=(2, 4, 3)), shapes(x=(2, 6, 3)), 10)
    conv, norm = term.adapters[0]
    assert isinstance(conv, nn.Conv1d) and (conv.in_channels, conv.out_channels) == (4, 6)
    assert conv.kernel_size == (1,)
    assert isinstance(norm, nn.BatchNorm1d)
    owned = {id(p) for p in term.parameters()}
    assert owned and all(id(p) in owned for p in term.adapters[0].parameters())


def test_fitnets_with_adapter_none_refuses_differing_shapes():
    term = FitNets(student="a", teacher="x", adapter="none")
    with pytest.raises(ConfigError) as error:
        term.build(shapes(a=(2, 4, 3)), shapes(x=(2, 6, 3)), 10)
    assert error.value.field == "adapter"
    term.build(shapes(a=(2, 4, 3)), shapes(x=(2, 4, 3)), 10)  # equal shapes need none
    assert isinstance(term.adapters[0], nn.Identity)


@pytest.mark.parametrize(
    "make",
    [
        lambda: AttentionTransfer(["a", "b"], ["x", "y"]),
        lambda: NeuronSelectivityTransfer(["a", "b"], ["x", "y"]),
    ],
)
def test_map_terms_refuse_differing_spatial_sizes_at_build(make):
    term = make()
    with pytest.raises(ConfigError) as error:
        term.build(shapes(a=(2, 4, 8), b=(2, 4, 4)), shapes(x=(2, 16, 8), y=(2, 16, 2)), 10)
    assert (error.value.field, error.value.value) == ("teacher", "y")
    message = str(error.value)
    assert "student b gives (4, 4)" in message and "teacher y gives (16, 2)" in message
    assert "same spatial size" in message
    # Differing channels alone are fine, and no adapter is made.
    term.build(shapes(a=(2, 4, 8), b=(2, 4, 4)), shapes(x=(2, 16, 8), y=(2, 16, 4)), 10)
    assert all(isinstance(adapter, nn.Identity) for adapter in term.adapters)


@pytest.mark.parametrize("make", [AttentionTransfer, NeuronSelectivityTransfer])
def test_map_terms_refuse_vector_taps(make):
    with pytest.raises(ConfigError) as error:
        make("a", "x").build(shapes(a=(2, 4)), shapes(x=(2, 4)), 10)
    assert error.value.field == "student"


def test_terms_average_their_pairs():
    student, teacher = torch.tensor(STUDENT), torch.tensor(TEACHER)
    outputs = StepOutputs(
        torch.zeros(2, 3),
        torch.zeros(2, dtype=torch.long),
        torch.zeros(2, 3),
        student_features={"a": student, "b": teacher},
        teacher_features={"x": teacher, "y": teacher},
    )
    for term, loss in (
        (AttentionTransfer(["a", "b"], ["x", "y"], p=2.0), hand_at(STUDENT, TEACHER, 2.0)),
        (NeuronSelectivityTransfer(["a", "b"], ["x", "y"]), hand_nst(STUDENT, TEACHER, 2, 0.0)),
    ):
        term.build(
            {"a": student.shape, "b": teacher.shape}, {"x": teacher.shape, "y": teacher.shape}, 2
        )
        assert term(outputs).item() == pytest.approx(loss / 2, rel=1e-5)


@pytest.mark.parametrize(
    "make",
    [
        lambda: FitNets("a", "x"),
        lambda: AttentionTransfer("a", "x"),
        lambda: NeuronSelectivityTransfer("a", "x"),
    ],
)
def test_gradients_reach_the_student_feature_and_adapter(make):
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(2, 3, 4, generator=generator, requires_grad=True)
    teacher = torch.randn(2, 5, 4, generator=generator)
    term = make()
    term.build({"a": student.shape}, {"x": teacher.shape}, 2)
    outputs = StepOutputs(
        torch.zeros(2, 3),
        torch.zeros(2, dtype=torch.long),
        torch.zeros(2, 3),
        student_features={"a": student},
        teacher_features={"x": teacher},
    )
    term(outputs).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    for parameter in term.parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: AttentionTransfer("a", "x", p=0.5), "p"),
        (lambda: AttentionTransfer("a", "x", p=float("nan")), "p"),
        (lambda: AttentionTransfer("a", "x", weight=-1.0), "weight"),
        (lambda: NeuronSelectivityTransfer("a", "x", degree=0), "degree"),
        (lambda: NeuronSelectivityTransfer("a", "x", degree=2.5), "degree"),
        (lambda: NeuronSelectivityTransfer("a", "x", c=-1.0), "c"),
        (lambda: FitNets("a", "x", adapter="conv"), "adapter"),
        (lambda: FitNets(["a", "b"], "x"), "teacher"),
    ],
)
def test_bad_feature_term_settings_name_the_field(build, field):
    with pytest.raises(ConfigError) as error:
        build()
    assert error.value.field == field


# --- configs on the default recipe's models -------------------------------------------------


@pytest.mark.parametrize("option", ["fitnets", "at", "nst"])
def test_config_taps_fit_the_default_recipe_models(option):
    term = instantiate(OmegaConf.load(LOSS_CONF / f"{option}.yaml")[option])
    torch.manual_seed(0)
    models = {"student": ConvNet1D(channels=(16, 16, 16)), "teacher": ConvNet1D(channels=(64,) * 3)}
    taps = {"student": term.student_taps, "teacher": term.teacher_taps}
    features: dict[str, dict[str, torch.Tensor]] = {"student": {}, "teacher": {}}
    handles = []
    for side, model in models.items():
        modules = dict(model.named_modules())
        for tap in taps[side]:

            def keep(module, inputs, output, side=side, tap=tap):
                features[side][tap] = output

            handles.append(modules[tap].register_forward_hook(keep))
    try:
        inputs = torch.randn(2, 1, 40)
        logits = {side: model(inputs) for side, model in models.items()}
    finally:
        for handle in handles:
            handle.remove()
    term.build(
        {tap: f.shape for tap, f in features["student"].items()},
        {tap: f.shape for tap, f in features["teacher"].items()},
        2,
    )
    outputs = StepOutputs(
        logits["student"],
        torch.zeros(2, dtype=torch.long),
        logits["teacher"].detach(),
        student_features=features["student"],
        teacher_features={tap: f.detach() for tap, f in features["teacher"].items()},
    )
    value = term(outputs)
    assert torch.isfinite(value) and value.item() > 0
    value.backward()
    assert models["student"].features[0].weight.grad.abs().sum() > 0
