"""Sequence students (GRU, Transformer): shapes, gradients, tokens, args, export, a tiny fit."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distill.errors import ConfigError
from distill.models.sequence import GRUClassifier, TransformerClassifier

BATCH = 3


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# Tiny models on 2 shared cores: one thread (see conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


# One row per configuration: (build, per-example input shape, classes).
SETTINGS: list = [
    pytest.param(lambda: GRUClassifier(), (1, 40), 10, id="gru-default"),
    pytest.param(lambda: GRUClassifier((40,), 10), (40,), 10, id="gru-2d-input"),
    pytest.param(
        lambda: GRUClassifier((1, 40), 4, hidden_size=8, num_layers=2, bidirectional=True),
        (1, 40),
        4,
        id="gru-bidirectional-2-layers",
    ),
    pytest.param(
        lambda: GRUClassifier((2, 40), 10, hidden_size=8, patch_size=5), (2, 40), 10, id="gru-patch"
    ),
    pytest.param(lambda: TransformerClassifier(), (1, 40), 10, id="transformer-default"),
    pytest.param(lambda: TransformerClassifier((40,), 10), (40,), 10, id="transformer-2d-input"),
    pytest.param(
        lambda: TransformerClassifier(
            (2, 40), 3, d_model=8, num_heads=2, num_layers=1, patch_size=8, dropout=0.1
        ),
        (2, 40),
        3,
        id="transformer-small-dropout",
    ),
    pytest.param(
        lambda: TransformerClassifier((1, 40), 10, patch_size=1), (1, 40), 10, id="transformer-p1"
    ),
]


@pytest.mark.parametrize(("build", "input_shape", "num_classes"), SETTINGS)
def test_logits_shape_and_gradient_reaches_every_parameter(
    build: Callable[[], nn.Module], input_shape: tuple[int, ...], num_classes: int
) -> None:
    model = build().train()
    inputs = torch.randn(BATCH, *input_shape)
    targets = torch.randint(0, num_classes, (BATCH,))

    logits = model(inputs)
    assert logits.shape == (BATCH, num_classes)
    F.cross_entropy(logits, targets).backward()

    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("build", [GRUClassifier, TransformerClassifier])
def test_single_channel_input_may_omit_the_channel_dim(build: Callable[[], nn.Module]) -> None:
    model = build().eval()
    sequences = torch.randn(BATCH, 40)
    logits = model(sequences)
    assert logits.shape == (BATCH, 10)
    torch.testing.assert_close(logits, model(sequences.unsqueeze(1)))


# Defaults on MNIST-1D, by hand. GRU: 3 gates * (1*64 + 64*64 + 2*64 biases) = 12864, head
# 64*10 + 10 = 650. Transformer: embed 4*32 + 32 = 160, position 10*32 = 320, per block
# attention 3*32*32 + 3*32 + 32*32 + 32 = 4224, MLP 32*64 + 64 + 64*32 + 32 = 4192, two
# LayerNorms 128 → 8544 * 2 = 17088, final norm 64, head 32*10 + 10 = 330.
@pytest.mark.parametrize(
    ("build", "expected"),
    [pytest.param(GRUClassifier, 13_514, id="gru"), pytest.param(TransformerClassifier, 17_962)],
)
def test_default_parameter_count(build: Callable[[], nn.Module], expected: int) -> None:
    assert sum(p.numel() for p in build().parameters()) == expected


def test_gru_reads_patch_tokens_and_the_last_layers_final_states() -> None:
    # Reference: token t is samples [2t, 2t+1] of both channels, time-major; the head sees the
    # top layer's forward state after the last token and its backward state after the first.
    model = GRUClassifier((2, 8), 3, hidden_size=5, num_layers=2, bidirectional=True, patch_size=2)
    model.eval()
    inputs = torch.randn(BATCH, 2, 8)
    tokens = torch.stack(
        [inputs[:, :, 2 * t : 2 * t + 2].transpose(1, 2).flatten(1) for t in range(4)], 1
    )
    assert tokens[0, 1].tolist() == [
        inputs[0, 0, 2],
        inputs[0, 1, 2],
        inputs[0, 0, 3],
        inputs[0, 1, 3],
    ]

    outputs, _ = model.gru(tokens)
    features = torch.cat([outputs[:, -1, :5], outputs[:, 0, 5:]], dim=1)
    torch.testing.assert_close(model(inputs), model.classifier(features))


def test_transformer_embeds_patch_tokens_with_positions_and_mean_pools() -> None:
    model = TransformerClassifier((2, 8), 3, d_model=8, num_heads=2, num_layers=1, patch_size=2)
    model.eval()
    inputs = torch.randn(BATCH, 2, 8)
    tokens = torch.stack(
        [inputs[:, :, 2 * t : 2 * t + 2].transpose(1, 2).flatten(1) for t in range(4)], 1
    )

    encoded = model.norm(model.encoder(model.embed(tokens) + model.position))
    torch.testing.assert_close(model(inputs), model.classifier(encoded.mean(dim=1)))
    assert model.position.shape == (1, 4, 8)


@pytest.mark.parametrize(
    ("build", "names"),
    [
        pytest.param(GRUClassifier, ["gru", "classifier"], id="gru"),
        pytest.param(
            TransformerClassifier,
            ["embed", "encoder", "encoder.layers.0", "encoder.layers.1", "norm", "classifier"],
            id="transformer",
        ),
    ],
)
def test_layer_names_are_stable(build: Callable[[], nn.Module], names: list[str]) -> None:
    modules = dict(build().named_modules())
    for name in names:
        assert name in modules, name


INVALID = [
    pytest.param(GRUClassifier, {"input_shape": (1, 8, 8)}, "input_shape", id="gru-shape"),
    pytest.param(GRUClassifier, {"num_classes": 0}, "num_classes", id="gru-classes"),
    pytest.param(GRUClassifier, {"hidden_size": 0}, "hidden_size", id="gru-hidden"),
    pytest.param(GRUClassifier, {"num_layers": 1.5}, "num_layers", id="gru-layers"),
    pytest.param(GRUClassifier, {"bidirectional": "yes"}, "bidirectional", id="gru-bidirectional"),
    pytest.param(GRUClassifier, {"patch_size": 0}, "patch_size", id="gru-patch-zero"),
    pytest.param(GRUClassifier, {"patch_size": 3}, "patch_size", id="gru-patch-not-divisor"),
    pytest.param(TransformerClassifier, {"input_shape": ()}, "input_shape", id="tf-shape"),
    pytest.param(TransformerClassifier, {"num_classes": True}, "num_classes", id="tf-classes"),
    pytest.param(TransformerClassifier, {"d_model": 0}, "d_model", id="tf-d-model"),
    pytest.param(TransformerClassifier, {"num_heads": 0}, "num_heads", id="tf-heads-zero"),
    pytest.param(TransformerClassifier, {"num_heads": 5}, "num_heads", id="tf-heads-not-divisor"),
    pytest.param(TransformerClassifier, {"num_layers": 0}, "num_layers", id="tf-layers"),
    pytest.param(
        TransformerClassifier, {"dim_feedforward": 0}, "dim_feedforward", id="tf-feedforward"
    ),
    pytest.param(TransformerClassifier, {"patch_size": 7}, "patch_size", id="tf-patch"),
    pytest.param(TransformerClassifier, {"dropout": 1.0}, "dropout", id="tf-dropout"),
]


@pytest.mark.parametrize(("build", "kwargs", "field"), INVALID)
def test_invalid_arguments_raise_config_error_naming_the_field(
    build: Callable[..., nn.Module], kwargs: dict, field: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        build(**kwargs)
    assert raised.value.field == field
    assert field in str(raised.value)


@pytest.mark.parametrize("build", [GRUClassifier, TransformerClassifier])
def test_construction_and_forward_are_deterministic_under_a_seed(
    build: Callable[[], nn.Module],
) -> None:
    inputs = torch.randn(BATCH, 1, 40)
    torch.manual_seed(1)
    first = build().eval()
    torch.manual_seed(1)
    second = build().eval()

    for (name, a), (_, b) in zip(
        first.state_dict().items(), second.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    torch.testing.assert_close(first(inputs), second(inputs), rtol=0, atol=0)


# nn.GRU re-caches its weight list when export swaps in traced parameters; the exported program
# still takes them as parameters (checked below), so the warning is noise.
@pytest.mark.filterwarnings("ignore:The tensor attributes self.gru._flat_weights")
@pytest.mark.parametrize("build", [GRUClassifier, TransformerClassifier])
def test_exports_with_a_dynamic_batch(build: Callable[[], nn.Module]) -> None:
    model = build().eval()
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model, (torch.randn(4, 1, 40),), dynamic_shapes=({0: batch},))

    assert set(program.state_dict) == {name for name, _ in model.named_parameters()}
    assert not program.constants
    exported = program.module()
    for size in (1, 7):
        inputs = torch.randn(size, 1, 40)
        torch.testing.assert_close(exported(inputs), model(inputs), rtol=0, atol=1e-5)


def two_frequencies(count: int = 32, length: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy sines with random phase: class 0 slow (0.15 rad/sample), class 1 fast (0.6)."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(count) % 2
    steps = torch.arange(length, dtype=torch.float32)
    phase = torch.rand(count, 1, generator=generator) * 2 * math.pi
    frequency = torch.where(labels.bool(), 0.6, 0.15).unsqueeze(1)
    noise = 0.1 * torch.randn(count, length, generator=generator)
    return (torch.sin(frequency * steps + phase) + noise).unsqueeze(1), labels


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda: GRUClassifier(num_classes=2, hidden_size=16, patch_size=4), id="gru"),
        pytest.param(lambda: TransformerClassifier(num_classes=2), id="transformer"),
    ],
)
def test_thirty_adam_steps_fit_a_two_class_sequence_problem(
    build: Callable[[], nn.Module],
) -> None:
    inputs, labels = two_frequencies()
    model = build().train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(model(inputs), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())

    assert losses[0] == pytest.approx(math.log(2), abs=0.15)  # starts near chance
    assert losses[-1] < 0.25 * losses[0]
