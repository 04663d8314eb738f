"""pruning.round_to: channel groups keep a multiple of round_to channels at every update."""

from __future__ import annotations

from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from distill.compression import (
    AGPSchedule,
    ChannelPruning,
    L1Score,
    Magnitude,
    NMSparsity,
    OneShotSchedule,
    PruningCallback,
    RandomPruning,
    SparsityLogger,
    bake_into,
    channel_mask,
    get_mask,
    kept_channels,
    weight_sparsity,
)
from distill.config import build
from distill.deploy import remove_zero_channels
from distill.errors import ConfigError

from .test_pruning import INPUT_SHAPE, loader, module_for, tiny_cnn, trainer

# The ramp of test_pruning: updates at steps 2, 5, 8, 11, 14 to 0, 0.434, 0.656, 0.738, 0.75.
RAMP = AGPSchedule(final_sparsity=0.75, start=2, frequency=3, num_updates=4)


@pytest.mark.parametrize(
    ("channels", "sparsity", "round_to", "expected"),
    [
        (24, 0.5, 1, 12),  # off: channels - round(sparsity * channels)
        (8, 0.99, 1, 1),  # off: never zero channels
        (24, 0.75, 8, 8),  # 6 -> 8
        (24, 0.5, 8, 16),  # 12: as near 8 as 16; ties keep more
        (40, 0.5, 8, 24),  # 20: as near 16 as 24; ties keep more
        (40, 0.75, 8, 8),  # 10 -> 8
        (40, 0.6, 8, 16),  # 16 already a multiple
        (40, 0.5, 16, 16),  # 20 -> 16 (32 is farther)
        (24, 0.75, 16, 16),  # 6 -> 16: never zero channels
        (24, 0.05, 16, 24),  # 23 -> 24: the whole group, though not a multiple of 16
        (24, 0.3, 16, 16),  # 17 -> 16
        (8, 0.75, 16, 8),  # a group smaller than round_to stays whole
        (16, 0.9, 16, 16),
        (64, 0.0, 8, 64),
        (1000, 0.5, 8, 504),  # 500: as near 496 as 504
    ],
)
def test_kept_channels_by_hand(channels, sparsity, round_to, expected):
    assert kept_channels(channels, sparsity, round_to) == expected


@pytest.mark.parametrize("round_to", [1, 2, 3, 8, 16])
def test_kept_channels_stay_in_range_rounded_and_never_grow_with_sparsity(round_to):
    sparsities = [i / 100 for i in range(100)]
    for channels in range(1, 70):
        counts = [kept_channels(channels, s, round_to) for s in sparsities]
        assert all(1 <= count <= channels for count in counts)
        assert all(count % round_to == 0 or count == channels for count in counts)
        # A schedule only raises the target, so a pruned channel never comes back.
        assert counts == sorted(counts, reverse=True)
        for s, count in zip(sparsities, counts, strict=True):
            unrounded = kept_channels(channels, s)
            # Nearest: within half a block of the unrounded count, unless the group cannot
            # get nearer (fewer than round_to channels left, or none to round up to).
            if round_to <= unrounded and unrounded + round_to / 2 <= channels:
                assert abs(count - unrounded) <= round_to / 2


def test_channel_mask_keeps_the_highest_scores_rounded():
    scores = torch.randperm(24, generator=torch.Generator().manual_seed(0)).float()
    keep = channel_mask(scores, 0.5, round_to=8)  # 12 -> 16
    assert torch.equal(keep, scores >= 8)  # the 16 highest of 0..23
    assert torch.equal(channel_mask(scores, 0.5), scores >= 12)  # off: 12 kept


class Wide(nn.Module):
    """A stem kept dense, then two pruned convs of 24 and 40 channels (each its own group)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv1d(2, 16, 3, padding=1)
        self.a = nn.Conv1d(16, 24, 3, padding=1)
        self.a_bn = nn.BatchNorm1d(24)
        self.b = nn.Conv1d(24, 40, 3, padding=1)
        self.b_bn = nn.BatchNorm1d(40)
        self.head = nn.Linear(40, 4)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(self.a_bn(self.a(x)))
        return self.head(torch.relu(self.b_bn(self.b(x))).mean(-1))


class Block(nn.Module):
    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.a = nn.Conv1d(channels, hidden, 3, padding=1)
        self.a_bn = nn.BatchNorm1d(hidden)
        self.b = nn.Conv1d(hidden, channels, 3, padding=1)
        self.b_bn = nn.BatchNorm1d(channels)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x + self.b_bn(self.b(torch.relu(self.a_bn(self.a(x))))))


class ResidualNet(nn.Module):
    """A 40-channel residual stream (stem and each block's `b`, coupled by the adds) and two
    24-channel block interiors."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv1d(2, 40, 3, padding=1)
        self.stem_bn = nn.BatchNorm1d(40)
        self.block1 = Block(40, 24)
        self.block2 = Block(40, 24)
        self.head = nn.Linear(40, 4)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.stem_bn(self.stem(x)))
        return self.head(self.block2(self.block1(x)).mean(-1))


def kept_per_group(callback: PruningCallback, model: nn.Module) -> dict[str, int]:
    """Live output channels of each group, read off its first producer's mask."""
    counts = {}
    for group in callback.strategy.groups:  # type: ignore[attr-defined]
        mask = get_mask(model.get_submodule(group.producers[0]), "weight").mask
        counts[group.name] = int(mask.flatten(1).any(dim=1).sum())
    return counts


class KeptRecorder(pl.Callback):
    """After the pruning callback: each update's kept channels per group, and the sparsity it
    achieved next to the schedule's target."""

    def __init__(self, pruning: PruningCallback) -> None:
        self.pruning = pruning
        self.seen: Any = None
        self.kept: list[dict[str, int]] = []
        self.targets: list[float] = []
        self.achieved: list[dict[str, float]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.pruning.latest_update in (None, self.seen):
            return
        self.seen = self.pruning.latest_update
        self.kept.append(kept_per_group(self.pruning, pl_module.student))
        self.targets.append(self.pruning.schedule.sparsity_at(self.pruning.last_update))
        self.achieved.append(weight_sparsity(pl_module.student)[1])


def fit_recorded(student: nn.Module, callback: PruningCallback, steps: int = 16):
    callback.attach(student, torch.randn(2, *INPUT_SHAPE))
    callback.resolve_schedule(steps)
    recorder = KeptRecorder(callback)
    logged = SparsityLogger(callback)
    module = module_for(student)
    trainer(steps, callbacks=[callback, recorder, logged]).fit(module, train_dataloaders=loader())
    return recorder, module


@pytest.mark.parametrize(
    ("round_to", "kept"),
    [
        # 24: 24, 14 -> 16, 8, 6 -> 8, 6 -> 8;  40: 40, 23 -> 24, 14 -> 16, 10 -> 8, 10 -> 8
        (8, {"a": [24, 16, 8, 8, 8], "b": [40, 24, 16, 8, 8]}),
        # 24: 24, 14 -> 16, 8 -> 16, 6 -> 16, 6 -> 16;  40: 40, 23 -> 16, 14 -> 16, 10 -> 16 ...
        (16, {"a": [24, 16, 16, 16, 16], "b": [40, 16, 16, 16, 16]}),
        (None, {"a": [24, 14, 8, 6, 6], "b": [40, 23, 14, 10, 10]}),
    ],
)
def test_every_update_rounds_and_the_slim_model_has_multiples(round_to, kept):
    callback = PruningCallback(ChannelPruning(L1Score()), RAMP, unit="step", round_to=round_to)
    recorder, module = fit_recorded(Wide(), callback)
    assert [counts["a"] for counts in recorder.kept] == kept["a"]
    assert [counts["b"] for counts in recorder.kept] == kept["b"]
    # Achieved, not the target: the fraction of each layer's weights the masks zeroed.
    for counts, achieved in zip(recorder.kept, recorder.achieved, strict=True):
        assert achieved["a"] == pytest.approx(1 - counts["a"] / 24, abs=1e-12)
        assert achieved["b"] == pytest.approx(1 - counts["b"] / 40, abs=1e-12)
    if round_to:
        assert achieved["a"] != recorder.targets[-1]
    plain = bake_into(module.student, Wide()).eval()
    report = remove_zero_channels(plain, torch.randn(1, *INPUT_SHAPE))
    assert report.channels_after == {
        "stem": 16,
        "a": kept["a"][-1],
        "b": kept["b"][-1],
        "head": 4,
    }


def test_groups_coupled_by_residual_adds_keep_multiples_at_every_update():
    callback = PruningCallback(
        ChannelPruning(L1Score()),
        RAMP,
        unit="step",
        round_to=8,
        keep_first_last_dense=False,  # the stem joins the residual stream's group
        exclude=["head"],
    )
    recorder, module = fit_recorded(ResidualNet(), callback)
    stream = ("stem", "block1.b", "block2.b")
    assert [g.producers for g in callback.strategy.groups] == [  # type: ignore[attr-defined]
        stream,
        ("block1.a",),
        ("block2.a",),
    ]
    # 40: 40, 23 -> 24, 14 -> 16, 10 -> 8, 10 -> 8;  24: 24, 14 -> 16, 8, 6 -> 8, 6 -> 8
    assert [counts["stem"] for counts in recorder.kept] == [40, 24, 16, 8, 8]
    assert [counts["block1.a"] for counts in recorder.kept] == [24, 16, 8, 8, 8]
    assert [counts["block2.a"] for counts in recorder.kept] == [24, 16, 8, 8, 8]
    plain = bake_into(module.student, ResidualNet()).eval()
    report = remove_zero_channels(plain, torch.randn(1, *INPUT_SHAPE))
    assert report.channels_after == {
        "stem": 8,
        "block1.a": 8,
        "block1.b": 8,
        "block2.a": 8,
        "block2.b": 8,
        "head": 4,
    }


@pytest.mark.parametrize(("sparsity", "round_to"), [(0.6, 8), (0.75, 8), (0.75, 16)])
def test_resnet20_slims_to_multiples_of_round_to(sparsity, round_to):
    from distill.models import resnet20

    example = torch.randn(1, 3, 32, 32)
    model = resnet20(num_classes=10)
    callback = PruningCallback(
        ChannelPruning(), OneShotSchedule(sparsity=sparsity, at=0), round_to=round_to
    )
    callback.attach(model, example)
    callback.apply(model, t=0)
    # layer2.0.conv2 leads a group of four producers tied by residual adds and a shortcut conv.
    assert ("layer2.0.conv2", 4) in [
        (g.name, len(g.producers))
        for g in callback.strategy.groups  # type: ignore[attr-defined]
    ]
    plain = bake_into(model, resnet20(num_classes=10)).eval()
    report = remove_zero_channels(plain, example)
    pruned = {name for name, idxs in report.removed_channels.items() if idxs}
    assert pruned  # some channels went
    for name, channels in report.channels_after.items():
        if name != "fc":
            assert channels % round_to == 0, (name, channels)
    for group in callback.strategy.groups:  # type: ignore[attr-defined]
        expected = kept_channels(group.channels, sparsity, round_to)
        assert all(report.channels_after[p] == expected for p in group.producers), group


@pytest.mark.parametrize("value", [0, -8, 8.0, "8", True, [8]])
def test_a_bad_round_to_is_refused_naming_the_field_and_what_is_allowed(value):
    with pytest.raises(ConfigError) as error:
        PruningCallback(ChannelPruning(), RAMP, round_to=value)
    assert error.value.field == "pruning.round_to" and error.value.value == value
    assert "an integer >= 1" in error.value.allowed and "null" in error.value.allowed


@pytest.mark.parametrize(
    "criterion",
    [Magnitude(), Magnitude(scope="global"), NMSparsity(2, 4), RandomPruning()],
    ids=["magnitude", "global", "nm", "random"],
)
def test_round_to_is_refused_for_criteria_that_remove_no_channels(criterion):
    with pytest.raises(ConfigError) as error:
        PruningCallback(criterion, RAMP, round_to=8)
    assert error.value.field == "pruning.round_to" and error.value.value == 8
    assert type(criterion).__name__ in error.value.allowed
    for off in (None, 1):  # off is off, whatever the criterion
        assert PruningCallback(criterion, RAMP, round_to=off).round_to == 1


def test_round_to_from_the_command_line(compose_cfg):
    pruning = build(compose_cfg("pruning=channel_l1", "pruning.round_to=16").pruning, "pruning")
    assert pruning.round_to == 16
    assert build(compose_cfg("pruning=channel_l1").pruning, "pruning").round_to == 1
    for option, value in (("agp_unstructured", "8"), ("nm_2_4", "8"), ("channel_l1", "0")):
        cfg = compose_cfg(f"pruning={option}", f"pruning.round_to={value}")
        with pytest.raises(ConfigError) as error:
            build(cfg.pruning, "pruning")
        assert error.value.field == "pruning.round_to", option


def test_a_checkpoint_rounded_otherwise_is_refused_on_resume():
    def callback(round_to):
        return PruningCallback(ChannelPruning(), RAMP, unit="step", round_to=round_to)

    saved = callback(8).state_dict()
    with pytest.raises(ConfigError) as error:
        callback(None).load_state_dict(saved)
    assert error.value.field == "pruning.round_to" and "round_to=8" in error.value.allowed
    callback(8).load_state_dict(saved)
    # A checkpoint from before round_to existed rounded nothing.
    legacy = {key: value for key, value in saved.items() if key != "round_to"}
    callback(None).load_state_dict(legacy)
    with pytest.raises(ConfigError):
        callback(8).load_state_dict(legacy)


def test_groups_that_rounding_leaves_whole_are_warned_of(caplog):
    callback = PruningCallback(ChannelPruning(), RAMP, unit="step", round_to=16)
    with caplog.at_level("WARNING", logger="distill.compression.pruning_strategies"):
        callback.attach(tiny_cnn(), torch.randn(2, *INPUT_SHAPE))  # two groups of 8 channels
    (record,) = caplog.records
    assert "round_to=16 leaves 2 of 2 channel groups whole" in record.getMessage()
    assert "3 (8 channels, the target keeps 2)" in record.getMessage()
    caplog.clear()
    with caplog.at_level("WARNING", logger="distill.compression.pruning_strategies"):
        PruningCallback(ChannelPruning(), RAMP, unit="step", round_to=2).attach(
            tiny_cnn(), torch.randn(2, *INPUT_SHAPE)
        )
    assert not caplog.records
