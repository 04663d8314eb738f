"""The parts PruningCallback delegates to: channel score classes, strategies, SparsityLogger."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from distill.compression import (
    AGPSchedule,
    BNGammaScore,
    ChannelGroupStrategy,
    ChannelPruning,
    ChannelScore,
    L1Score,
    L2Score,
    Magnitude,
    NMSparsity,
    PruningCallback,
    RandomPruning,
    SparsityLogger,
    TaylorScore,
    UnstructuredStrategy,
    bn_gamma_scores,
    l1_channel_scores,
    l2_channel_scores,
    taylor_channel_scores,
    weight_sparsity,
)
from distill.compression.groups import ChannelGroup, find_channel_groups
from distill.config import build
from distill.errors import ConfigError
from distill.summary import weight_sparsity as summary_weight_sparsity

from .test_pruning import INPUT_SHAPE, loader, module_for, tiny_cnn


class Residual(nn.Module):
    """Two convs (each with a BN) added together: one group with two producers and two norms."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv1d(2, 4, 3, padding=1)
        self.a = nn.Conv1d(4, 6, 3, padding=1)
        self.a_bn = nn.BatchNorm1d(6)
        self.b = nn.Conv1d(4, 6, 1)
        self.b_bn = nn.BatchNorm1d(6)
        self.head = nn.Linear(6, 3)
        with torch.no_grad():  # distinct gammas, so the BN score is not all ones
            self.a_bn.weight.copy_(torch.tensor([0.5, -2.0, 1.0, 0.1, 3.0, -0.7]))
            self.b_bn.weight.copy_(torch.tensor([1.5, 0.2, -0.3, 2.0, 0.0, 0.4]))

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        return self.head((self.a_bn(self.a(x)) + self.b_bn(self.b(x))).mean(-1))


def residual_with_grads() -> tuple[Residual, ChannelGroup]:
    model = Residual()
    (group,) = find_channel_groups(model, torch.randn(2, *INPUT_SHAPE), ["a", "b"])
    model(torch.randn(4, *INPUT_SHAPE, generator=torch.Generator().manual_seed(2))).sum().backward()
    return model, group


# Each score class against its pure function in criteria.py, summed over the group by hand.
SCORES: dict[str, tuple[Callable[[], ChannelScore], Callable[[Residual], Tensor]]] = {
    "l1": (L1Score, lambda m: l1_channel_scores(m.a.weight) + l1_channel_scores(m.b.weight)),
    "l2": (L2Score, lambda m: l2_channel_scores(m.a.weight) + l2_channel_scores(m.b.weight)),
    "bn_gamma": (
        BNGammaScore,
        lambda m: bn_gamma_scores(m.a_bn.weight) + bn_gamma_scores(m.b_bn.weight),
    ),
    "taylor": (
        TaylorScore,
        lambda m: (
            taylor_channel_scores(m.a.weight, m.a.weight.grad)
            + taylor_channel_scores(m.b.weight, m.b.weight.grad)
        ),
    ),
}


@pytest.mark.parametrize("name", SCORES)
def test_every_channel_score_class_equals_its_pure_function(name):
    make, pure = SCORES[name]
    model, group = residual_with_grads()
    assert group.producers == ("a", "b") and group.norms == ("a_bn", "b_bn")
    scores = make()(group, model)
    assert scores.shape == (6,)
    assert torch.equal(scores, pure(model))
    assert make().needs_grad == (name == "taylor")
    assert ChannelPruning(make()).needs_grad == (name == "taylor")


def test_bn_gamma_score_by_hand_and_refused_without_a_norm():
    model, group = residual_with_grads()
    expected = torch.tensor([2.0, 2.2, 1.3, 2.1, 3.0, 1.1])
    assert torch.allclose(BNGammaScore()(group, model), expected)
    without_norms = ChannelGroup(producers=("a",), norms=(), channels=6)
    with pytest.raises(ConfigError) as error:
        BNGammaScore()(without_norms, model)
    assert error.value.field == "pruning.criterion.score"


@pytest.mark.parametrize("old", ["l1", "l2", "bn_gamma", "taylor", "fisher"])
def test_the_old_string_score_is_refused_naming_the_field_and_the_classes(old):
    with pytest.raises(ConfigError) as error:
        ChannelPruning(old)  # type: ignore[arg-type]
    assert error.value.field == "pruning.criterion.score" and error.value.value == old
    for target in ("L1Score", "L2Score", "BNGammaScore", "TaylorScore"):
        assert f"distill.compression.{target}" in error.value.allowed


def test_a_score_is_chosen_on_the_command_line_by_its_target(compose_cfg):
    override = "pruning.criterion.score._target_=distill.compression.L2Score"
    pruning = build(compose_cfg("pruning=channel_l1", override).pruning, "pruning")
    assert type(pruning.criterion.score) is L2Score
    taylor = build(compose_cfg("pruning=channel_taylor").pruning, "pruning")
    assert type(taylor.criterion.score) is TaylorScore and taylor.criterion.needs_grad
    with pytest.raises(ConfigError) as error:
        build(compose_cfg("pruning=channel_l1", "pruning.criterion.score=l2").pruning, "pruning")
    assert error.value.field == "pruning.criterion.score" and error.value.value == "l2"


SCHEDULE = AGPSchedule(final_sparsity=0.5, start=0, frequency=1, num_updates=2)


@pytest.mark.parametrize(
    ("criterion", "strategy", "removes_channels"),
    [
        (Magnitude(), UnstructuredStrategy, False),
        (Magnitude(scope="global"), UnstructuredStrategy, False),
        (NMSparsity(), UnstructuredStrategy, False),
        (RandomPruning(), UnstructuredStrategy, False),
        (ChannelPruning(), ChannelGroupStrategy, True),
    ],
)
def test_each_criterion_gets_its_strategy(criterion, strategy, removes_channels):
    callback = PruningCallback(criterion, SCHEDULE)
    assert type(callback.strategy) is strategy
    assert callback.removes_channels is removes_channels
    student = tiny_cnn()
    callback.attach(student, torch.randn(2, *INPUT_SHAPE))
    assert callback.layers == ["3", "6"]
    assert callback.final == {"3": 0.5, "6": 0.5}
    masked = {k for k in student.state_dict() if k.endswith(".mask")}
    if removes_channels:  # weight and bias of the convs and of their BatchNorms
        assert len(masked) == 8 and "4.parametrizations.bias.0.mask" in masked
    else:
        assert masked == {"3.parametrizations.weight.0.mask", "6.parametrizations.weight.0.mask"}


def test_a_callback_refuses_what_is_not_a_criterion():
    with pytest.raises(ConfigError) as error:
        PruningCallback("l1", SCHEDULE)  # type: ignore[arg-type]
    assert error.value.field == "pruning.criterion"


def test_weight_sparsity_is_one_function_by_hand():
    assert summary_weight_sparsity is weight_sparsity
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 4, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.0, 1.0], [2.0, 0.0]]))
        model[2].weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0]]))
    assert weight_sparsity(model) == (3 / 12, {"0": 0.5, "2": 0.125})
    assert weight_sparsity(nn.ReLU()) == (0.0, {})


class RecordingLogger(pl.loggers.Logger):
    """Keeps every `log_metrics` call, with `weight_sparsity` of the student at that moment."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, dict[str, float], tuple[float, dict[str, float]]]] = []
        self.student: nn.Module | None = None

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        if any(key.startswith("sparsity/") for key in metrics):
            assert self.student is not None
            self.calls.append((step, dict(metrics), weight_sparsity(self.student)))


@pytest.mark.parametrize("logger_first", [False, True])
def test_sparsity_logger_logs_exactly_weight_sparsity_at_each_update(logger_first):
    schedule = AGPSchedule(final_sparsity=0.75, start=2, frequency=3, num_updates=4)
    pruning = PruningCallback(Magnitude(), schedule, unit="step")
    student = tiny_cnn()
    pruning.attach(student, torch.randn(2, *INPUT_SHAPE))
    recorder = RecordingLogger()
    recorder.student = student
    sparsity_logger = SparsityLogger(pruning)
    callbacks = [sparsity_logger, pruning] if logger_first else [pruning, sparsity_logger]
    trainer = pl.Trainer(
        max_steps=16,
        logger=recorder,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_val_batches=0,
        log_every_n_steps=100,
        callbacks=callbacks,
    )
    trainer.fit(module_for(student), train_dataloaders=loader())
    assert [step for step, _, _ in recorder.calls] == [2, 5, 8, 11, 14]
    for step, metrics, (overall, layers) in recorder.calls:
        expected = {f"sparsity/{name}": value for name, value in layers.items()}
        assert metrics == {**expected, "sparsity/global": overall}
        assert list(metrics)[-1] == "sparsity/global"
        target = round(schedule.sparsity_at(step) * 192) / 192  # 8x8x3 weights
        assert metrics["sparsity/3"] == metrics["sparsity/6"] == target
        assert metrics["sparsity/0"] == metrics["sparsity/10"] == 0.0


def test_channel_groups_of_mobile_blocks_couple_depthwise_se_and_residual_adds():
    from distill.compression.selection import select_layers
    from distill.models import MobileNetV3Small

    blocks = [
        [3, 16, 16, True, "relu", 1],  # no expand conv: its depthwise is the stem's channels
        [3, 32, 16, False, "relu", 1],  # residual
        [5, 48, 24, True, "hardswish", 2],
        [5, 64, 24, True, "hardswish", 1],  # residual, with SE
    ]
    model = MobileNetV3Small(10, 3, 1.0, blocks=blocks, last_channels=32)
    example = torch.randn(2, 3, 8, 8)
    groups = {g.producers: g for g in find_channel_groups(model, example, select_layers(model))}
    # A depthwise conv reads and writes the same channels: it is cut with the expand conv
    # before it, and so is the SE expansion that gates them (the product ties them).
    expand = ("features.4.expand.0", "features.4.depthwise.0", "features.4.se.fc2")
    assert groups[expand].norms == ("features.4.expand.1", "features.4.depthwise.1")
    assert groups[expand].channels == 64
    assert ("features.2.expand.0", "features.2.depthwise.0") in groups  # no SE there
    # The SE squeeze is a group of its own; a residual add ties the projections it sums.
    assert groups[("features.4.se.fc1",)].channels == 16
    assert groups[("features.3.project.0", "features.4.project.0")].channels == 24
    # The first block's depthwise conv and SE expansion, and through two residual adds the
    # first two projections, write the stem's channels; the stem is kept dense
    # (keep_first_last_dense), so that group is left whole.
    pruned = {name for producers in groups for name in producers}
    stem_group = {"features.0.0", "features.1.depthwise.0", "features.1.se.fc2"}
    assert not pruned & (stem_group | {"features.1.project.0", "features.2.project.0"})
