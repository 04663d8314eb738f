"""Masks, pruning criteria and sparsity schedules, checked exactly on tiny hand-made tensors."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable

import pytest
import torch
from omegaconf import OmegaConf
from torch import Tensor, nn
from torch.nn.utils import parametrize

from distill.compression import (
    AGPSchedule,
    IterativeSchedule,
    LinearSchedule,
    OneShotSchedule,
    SparsitySchedule,
    WeightMask,
    attach_mask,
    bake_into,
    bn_gamma_scores,
    channel_mask,
    effective_state_dict,
    expand_channel_mask,
    get_mask,
    global_magnitude_masks,
    l1_channel_scores,
    l2_channel_scores,
    magnitude_mask,
    nm_mask,
    random_mask,
    set_mask,
    taylor_channel_scores,
)
from distill.errors import ConfigError

# --------------------------------------------------------------------------------------- masks


def tiny_net(seed: int = 0) -> nn.Sequential:
    """A conv and a linear layer for 1x6x6 inputs."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))


PRUNABLE = ("0", "3")  # the conv and the linear layer of tiny_net


def masked_net(seed: int = 0) -> nn.Sequential:
    net = tiny_net(seed)
    for name in PRUNABLE:
        attach_mask(net.get_submodule(name))
    return net


def prune_by_magnitude(net: nn.Module, sparsity: float) -> None:
    for name in PRUNABLE:
        layer = net.get_submodule(name)
        set_mask(layer, "weight", magnitude_mask(layer.weight, sparsity))


class Doubler(nn.Module):
    """Stands in for a fake-quant chained after the mask; records what it was given."""

    def forward(self, x: Tensor) -> Tensor:
        self.seen = x.detach().clone()
        return 2 * x


def test_attach_mask_keeps_the_parameter_object_and_is_idempotent() -> None:
    layer = nn.Linear(4, 3)
    weight = layer.weight
    mask = attach_mask(layer)
    assert attach_mask(layer) is mask
    assert get_mask(layer, "weight") is mask
    assert get_mask(layer, "bias") is None
    # The very Parameter moves under parametrizations, so optimizers built earlier still hold it.
    assert layer.parametrizations.weight.original is weight
    assert mask.mask.dtype == torch.bool and bool(mask.mask.all())
    assert list(layer.state_dict()) == [
        "bias",
        "parametrizations.weight.original",
        "parametrizations.weight.0.mask",
    ]


def test_optimizer_built_before_attaching_still_trains_the_weight() -> None:
    layer = nn.Linear(4, 3)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    attach_mask(layer)
    keep = torch.ones(3, 4, dtype=torch.bool)
    keep[0] = False
    set_mask(layer, "weight", keep)
    before = layer.weight.detach().clone()
    layer(torch.randn(5, 4)).sum().backward()
    optimizer.step()
    assert not torch.equal(layer.weight[1:], before[1:])
    assert torch.equal(layer.weight[0], torch.zeros(4))


def test_mask_comes_first_and_a_later_parametrization_sees_zeros() -> None:
    layer = nn.Linear(4, 2)
    attach_mask(layer)
    doubler = Doubler()
    parametrize.register_parametrization(layer, "weight", doubler)
    keep = torch.tensor([[True, False, True, False], [False, True, True, True]])
    set_mask(layer, "weight", keep)
    weight = layer.weight
    assert torch.equal(doubler.seen == 0, ~keep)
    assert torch.equal(weight, 2 * layer.parametrizations.weight.original * keep)

    late = nn.Linear(4, 2)
    parametrize.register_parametrization(late, "weight", Doubler())
    with pytest.raises(ConfigError) as error:
        attach_mask(late)
    assert error.value.field == "tensor_name"


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-2),
        lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=1e-2),
    ],
    ids=["sgd-momentum", "adamw"],
)
def test_pruned_weights_stay_exactly_zero_under_training(make_optimizer: Callable) -> None:
    net = masked_net()
    optimizer = make_optimizer(net.parameters())
    inputs, targets = torch.randn(8, 1, 6, 6), torch.randint(0, 3, (8,))

    def train(steps: int) -> None:
        for _ in range(steps):
            optimizer.zero_grad()
            nn.functional.cross_entropy(net(inputs), targets).backward()
            optimizer.step()

    train(3)  # momentum / Adam moments are non-zero everywhere before pruning
    prune_by_magnitude(net, 0.5)
    train(25)
    for name in PRUNABLE:
        layer = net.get_submodule(name)
        pruned = ~get_mask(layer, "weight").mask
        assert int(pruned.sum()) == round(0.5 * pruned.numel())
        assert torch.equal(layer.weight[pruned], torch.zeros(int(pruned.sum())))
        # The optimizer state does move the original there; the mask is what keeps zeros.
        assert layer.parametrizations.weight.original[pruned].abs().sum() > 0


def test_state_dict_keys_do_not_change_when_masks_change() -> None:
    net = masked_net()
    keys = list(net.state_dict())
    prune_by_magnitude(net, 0.3)
    assert list(net.state_dict()) == keys
    prune_by_magnitude(net, 0.6)
    assert list(net.state_dict()) == keys
    assert "0.parametrizations.weight.0.mask" in keys
    assert "3.parametrizations.weight.original" in keys


def test_masked_checkpoint_restores_masks_exactly() -> None:
    net = masked_net(seed=0)
    prune_by_magnitude(net, 0.6)
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    buffer.seek(0)

    resumed = masked_net(seed=1)
    resumed.load_state_dict(torch.load(buffer), strict=True)
    for name in PRUNABLE:
        saved = get_mask(net.get_submodule(name), "weight").mask
        assert torch.equal(get_mask(resumed.get_submodule(name), "weight").mask, saved)
    inputs = torch.randn(2, 1, 6, 6)
    assert torch.equal(resumed(inputs), net(inputs))


def test_bake_into_gives_an_identical_plain_model_and_leaves_the_original_working() -> None:
    net = masked_net()
    prune_by_magnitude(net, 0.5)
    inputs = torch.randn(4, 1, 6, 6)
    expected = net(inputs)

    baked = bake_into(net, tiny_net(seed=7))
    assert not any(parametrize.is_parametrized(module) for module in baked.modules())
    assert set(effective_state_dict(net)) == set(tiny_net().state_dict())
    assert torch.equal(baked(inputs), expected)
    assert int((baked[3].weight == 0).sum()) == round(0.5 * baked[3].weight.numel())

    with torch.no_grad():  # the baked copy shares no storage with the original
        baked[3].weight.add_(1.0)
    assert parametrize.is_parametrized(net[3], "weight")
    assert torch.equal(net(inputs), expected)


def test_bake_into_and_set_mask_reject_bad_arguments() -> None:
    with pytest.raises(ConfigError) as error:
        bake_into(masked_net(), masked_net())
    assert error.value.field == "fresh_plain_model"

    layer = nn.Linear(4, 3)
    with pytest.raises(ConfigError) as error:
        set_mask(layer, "weight", torch.ones(3, 4, dtype=torch.bool))
    assert error.value.field == "tensor_name"  # no mask attached
    attach_mask(layer)
    for bad in (torch.ones(3, 4), torch.ones(4, 3, dtype=torch.bool)):
        with pytest.raises(ConfigError) as error:
            set_mask(layer, "weight", bad)
        assert error.value.field == "mask"
    with pytest.raises(ConfigError) as error:
        attach_mask(layer, "scale")
    assert error.value.field == "tensor_name"


def test_weight_mask_reports_its_sparsity() -> None:
    mask = WeightMask((2, 4))
    mask.mask[0, :3] = False
    assert mask.sparsity == pytest.approx(3 / 8)


# ------------------------------------------------------------------------------------ criteria

WEIGHT_2X4 = torch.tensor([[0.5, -0.1, 0.3, -0.8], [0.05, 0.9, -0.2, 0.4]])


def test_magnitude_mask_keeps_the_largest_entries() -> None:
    expected = torch.tensor([[True, False, False, True], [False, True, False, True]])
    assert torch.equal(magnitude_mask(WEIGHT_2X4, 0.5), expected)
    assert bool(magnitude_mask(WEIGHT_2X4, 0.0).all())


def test_ties_are_broken_by_index() -> None:
    expected = torch.tensor([[False, False, False], [True, True, True]])
    assert torch.equal(magnitude_mask(torch.ones(2, 3), 0.5), expected)
    assert torch.equal(channel_mask(torch.ones(4), 0.5), torch.tensor([False, False, True, True]))


def test_global_magnitude_uses_one_threshold_across_layers() -> None:
    weights = {"a": torch.tensor([[1.0, -2.0], [3.0, 4.0]]), "b": torch.tensor([0.5, -2.5, 5.0])}
    masks = global_magnitude_masks(weights, 0.4)  # round(0.4 * 7) = 3 pruned: 0.5, 1, 2
    assert torch.equal(masks["a"], torch.tensor([[False, False], [True, True]]))
    assert torch.equal(masks["b"], torch.tensor([False, True, True]))
    with pytest.raises(ConfigError):
        global_magnitude_masks({}, 0.5)


# Conv weight (3 out, 2 in, 1x2 kernel), one row per output channel.
CONV = torch.tensor(
    [
        [[[1.0, -1.0]], [[2.0, 0.0]]],  # L1 4, L2 sqrt(6)
        [[[0.5, 0.5]], [[-0.5, 0.0]]],  # L1 1.5, L2 sqrt(0.75)
        [[[0.0, 3.0]], [[0.0, -4.0]]],  # L1 7, L2 5
    ]
)


def test_channel_scores_per_output_channel() -> None:
    assert torch.allclose(l1_channel_scores(CONV), torch.tensor([4.0, 1.5, 7.0]))
    expected_l2 = torch.tensor([6.0, 0.75, 25.0]).sqrt()
    assert torch.allclose(l2_channel_scores(CONV), expected_l2)
    assert torch.equal(
        bn_gamma_scores(torch.tensor([-0.5, 0.1, 2.0])), torch.tensor([0.5, 0.1, 2.0])
    )


def test_channel_mask_and_expansion_to_a_conv_weight() -> None:
    keep = channel_mask(l1_channel_scores(CONV), 1 / 3)
    assert torch.equal(keep, torch.tensor([True, False, True]))
    expanded = expand_channel_mask(keep, CONV.shape)
    assert expanded.shape == CONV.shape
    assert bool(expanded[0].all()) and not bool(expanded[1].any()) and bool(expanded[2].all())
    assert torch.equal(expand_channel_mask(keep, (3,)), keep)  # the bias
    # A layer always keeps one channel: round(0.9 * 3) = 3 is capped at 2.
    assert torch.equal(
        channel_mask(torch.tensor([3.0, 1.0, 2.0]), 0.9), torch.tensor([1, 0, 0]) > 0
    )


def test_taylor_scores_match_a_hand_computation() -> None:
    weight = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    grad = torch.tensor([[0.5, -1.0], [2.0, 4.0]])
    # channel 0: (0.5 - 2)^2 = 2.25; channel 1: (6 - 4)^2 = 4
    assert torch.equal(taylor_channel_scores(weight, grad), torch.tensor([2.25, 4.0]))
    conv_grad = torch.full_like(CONV, 2.0)  # (2 * channel sum)^2, sums 2, 0.5, -1
    assert torch.equal(taylor_channel_scores(CONV, conv_grad), torch.tensor([16.0, 1.0, 4.0]))
    with pytest.raises(ConfigError, match="needs gradients") as error:
        taylor_channel_scores(weight, None)
    assert error.value.field == "criterion"


def test_nm_mask_on_a_hand_made_linear_weight() -> None:
    weight = torch.tensor([[4.0, -1.0, 3.0, 2.0, 0.1, 0.3, -0.2, 0.0]])
    expected = torch.tensor([[True, False, True, False, False, True, True, False]])
    assert torch.equal(nm_mask(weight, 2, 4), expected)
    # Equal magnitudes: the lower index is kept.
    assert torch.equal(nm_mask(torch.ones(1, 4), 2, 4), torch.tensor([[True, True, False, False]]))


@pytest.mark.parametrize("shape", [(4, 16), (3, 2, 2, 2)], ids=["linear", "conv"])
def test_nm_mask_keeps_the_two_largest_of_every_four(shape: tuple[int, ...]) -> None:
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    keep = nm_mask(weight, n=2, m=4).reshape(shape[0], -1, 4)
    magnitude = weight.abs().reshape(shape[0], -1, 4)
    assert bool((keep.sum(-1) == 2).all())
    smallest_kept = magnitude.masked_fill(~keep, float("inf")).amin(-1)
    largest_pruned = magnitude.masked_fill(keep, -1.0).amax(-1)
    assert bool((smallest_kept > largest_pruned).all())


def test_nm_mask_rejects_bad_n_m_and_indivisible_layers() -> None:
    weight = torch.ones(2, 8)
    for n, m in ((4, 4), (0, 4), (3, 2)):
        with pytest.raises(ConfigError, match=f"N={n}, M={m}") as error:
            nm_mask(weight, n, m)
        assert error.value.field == "n"
    with pytest.raises(ConfigError, match=r"layer1\.conv") as error:
        nm_mask(torch.ones(2, 3, 1, 2), 2, 4, name="layer1.conv")
    assert error.value.field == "m" and "6" in str(error.value)


def test_random_mask_is_exact_and_reproducible() -> None:
    first = random_mask((5, 6), 0.3, torch.Generator().manual_seed(3))
    again = random_mask((5, 6), 0.3, torch.Generator().manual_seed(3))
    assert int((~first).sum()) == 9 and torch.equal(first, again)


# One row per criterion: keep-mask of a 3x6 tensor (3 channels) at a given sparsity.
CRITERIA = {
    "magnitude": lambda w, s: magnitude_mask(w, s),
    "global": lambda w, s: global_magnitude_masks({"w": w}, s)["w"],
    "channel-l1": lambda w, s: channel_mask(l1_channel_scores(w), s),
    "channel-l2": lambda w, s: channel_mask(l2_channel_scores(w), s),
    "channel-taylor": lambda w, s: channel_mask(taylor_channel_scores(w, w.sin()), s),
    "channel-bn": lambda w, s: channel_mask(bn_gamma_scores(w[:, 0]), s),
    "random": lambda w, s: random_mask(w.shape, s, torch.Generator().manual_seed(0)),
}


@pytest.mark.parametrize("name", list(CRITERIA))
@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.9])
def test_every_criterion_prunes_exactly_round_sparsity_times_n(name: str, sparsity: float) -> None:
    weight = torch.randn(3, 6, generator=torch.Generator().manual_seed(1))
    keep = CRITERIA[name](weight, sparsity)
    assert keep.dtype == torch.bool
    expected = round(sparsity * keep.numel())
    if name.startswith("channel"):
        expected = min(expected, keep.numel() - 1)
    assert int((~keep).sum()) == expected
    assert torch.equal(CRITERIA[name](weight, sparsity), keep)  # deterministic


@pytest.mark.parametrize("name", list(CRITERIA))
@pytest.mark.parametrize("bad", [1.0, -0.1, True, "0.5"])
def test_every_criterion_rejects_a_bad_sparsity(name: str, bad: object) -> None:
    with pytest.raises(ConfigError) as error:
        CRITERIA[name](torch.randn(3, 6), bad)
    assert error.value.field == "sparsity" and error.value.value is bad


# ----------------------------------------------------------------------------------- schedules


def agp(t: int) -> float:
    """Zhu & Gupta eq. 1 for s_i = 0, s_f = 0.9, t0 = 10, dt = 5, n = 4, written out by hand."""
    if t < 10:
        return 0.0
    update = min(10 + (t - 10) // 5 * 5, 30)
    return 0.9 + (0.0 - 0.9) * (1 - (update - 10) / (4 * 5)) ** 3


def test_agp_matches_the_formula_and_holds_between_updates() -> None:
    schedule = AGPSchedule(final_sparsity=0.9, start=10, frequency=5, num_updates=4)
    expected = {
        0: 0.0,
        9: 0.0,
        10: 0.0,
        14: 0.0,
        15: 0.9 * (1 - 0.75**3),
        19: 0.9 * (1 - 0.75**3),
        20: 0.9 * (1 - 0.5**3),
        25: 0.9 * (1 - 0.25**3),
        29: 0.9 * (1 - 0.25**3),
        30: 0.9,
        1000: 0.9,
    }
    for t, sparsity in expected.items():
        assert schedule.sparsity_at(t) == pytest.approx(sparsity, abs=1e-12), t
        assert schedule.sparsity_at(t) == pytest.approx(agp(t), abs=1e-12), t
    assert [t for t in range(50) if schedule.is_update(t)] == [10, 15, 20, 25, 30]
    assert schedule.last_update == 30 and schedule.sparsity_at(30) == 0.9


def test_agp_with_initial_sparsity_and_linear_ramp() -> None:
    agp_schedule = AGPSchedule(
        initial_sparsity=0.1, final_sparsity=0.9, start=0, frequency=2, num_updates=2
    )
    assert agp_schedule.sparsity_at(0) == 0.1
    assert agp_schedule.sparsity_at(3) == pytest.approx(0.9 - 0.8 * 0.5**3)
    assert agp_schedule.sparsity_at(4) == 0.9
    linear = LinearSchedule(
        initial_sparsity=0.2, final_sparsity=0.8, start=4, frequency=3, num_updates=3
    )
    values = [linear.sparsity_at(t) for t in (3, 4, 6, 7, 10, 13, 99)]
    assert values == pytest.approx([0.0, 0.2, 0.2, 0.4, 0.6, 0.8, 0.8])
    assert [t for t in range(20) if linear.is_update(t)] == [4, 7, 10, 13]


def test_ramp_between_start_and_end() -> None:
    schedule = AGPSchedule.between(start=10, end=30, frequency=5, final_sparsity=0.9)
    assert schedule == AGPSchedule(final_sparsity=0.9, start=10, frequency=5, num_updates=4)
    for end in (10, 5):
        with pytest.raises(ConfigError) as error:
            LinearSchedule.between(start=10, end=end, frequency=5, final_sparsity=0.5)
        assert error.value.field == "schedule.end" and error.value.value == end
    with pytest.raises(ConfigError, match="multiple of 5"):
        AGPSchedule.between(start=10, end=32, frequency=5, final_sparsity=0.9)


def test_one_shot_and_iterative_schedules() -> None:
    one_shot = OneShotSchedule(sparsity=0.5, at=3)
    assert [one_shot.sparsity_at(t) for t in range(6)] == [0, 0, 0, 0.5, 0.5, 0.5]
    assert [t for t in range(6) if one_shot.is_update(t)] == [3]

    from_yaml = OmegaConf.create({"steps": [[2, 0.25], [5, 0.5], [9, 0.5]]}).steps
    iterative = IterativeSchedule(from_yaml)
    assert iterative.steps == ((2, 0.25), (5, 0.5), (9, 0.5))
    assert [iterative.sparsity_at(t) for t in (0, 2, 4, 5, 9, 50)] == [0, 0.25, 0.25, 0.5, 0.5, 0.5]
    assert [t for t in range(12) if iterative.is_update(t)] == [2, 5, 9]
    assert (iterative.final_sparsity, iterative.last_update) == (0.5, 9)


RAMP = {"final_sparsity": 0.8, "start": 0, "frequency": 1, "num_updates": 2}


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: AGPSchedule(**{**RAMP, "final_sparsity": 1.0}), "schedule.final_sparsity"),
        (lambda: AGPSchedule(**{**RAMP, "initial_sparsity": 0.9}), "schedule.final_sparsity"),
        (lambda: AGPSchedule(**{**RAMP, "initial_sparsity": -0.1}), "schedule.initial_sparsity"),
        (lambda: LinearSchedule(**{**RAMP, "frequency": 0}), "schedule.frequency"),
        (lambda: LinearSchedule(**{**RAMP, "num_updates": 0}), "schedule.num_updates"),
        (lambda: AGPSchedule(**{**RAMP, "start": -1}), "schedule.start"),
        (lambda: AGPSchedule(**{**RAMP, "start": 1.5}), "schedule.start"),
        (lambda: OneShotSchedule(sparsity=1.2, at=0), "schedule.sparsity"),
        (lambda: OneShotSchedule(sparsity=0.5, at=-3), "schedule.at"),
        (lambda: IterativeSchedule([]), "schedule.steps"),
        (lambda: IterativeSchedule([[5, 0.2], [3, 0.4]]), "schedule.steps[1][0]"),
        (lambda: IterativeSchedule([[1, 0.2], [1, 0.4]]), "schedule.steps[1][0]"),
        (lambda: IterativeSchedule([[1, 0.4], [3, 0.2]]), "schedule.steps[1][1]"),
        (lambda: IterativeSchedule([[1, 0.4, 2]]), "schedule.steps[0]"),
    ],
)
def test_bad_schedules_name_the_field(make: Callable[[], object], field: str) -> None:
    with pytest.raises(ConfigError) as error:
        make()
    assert error.value.field == field


SCHEDULES = {
    "agp": AGPSchedule(
        initial_sparsity=0.1, final_sparsity=0.7, start=3, frequency=4, num_updates=5
    ),
    "linear": LinearSchedule(final_sparsity=0.6, start=0, frequency=2, num_updates=3),
    "one-shot": OneShotSchedule(sparsity=0.5, at=7),
    "iterative": IterativeSchedule([(1, 0.1), (4, 0.3), (10, 0.6)]),
}


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_every_schedule_changes_only_at_updates_and_ends_at_final(name: str) -> None:
    schedule = SCHEDULES[name]
    assert isinstance(schedule, SparsitySchedule)
    values = [schedule.sparsity_at(t) for t in range(schedule.last_update + 5)]
    assert values == sorted(values)  # never less sparse later
    for t in range(1, len(values)):
        if values[t] != values[t - 1]:
            assert schedule.is_update(t), t
    assert schedule.is_update(schedule.last_update)
    assert not any(schedule.is_update(t) for t in range(schedule.last_update + 1, len(values)))
    assert values[schedule.last_update] == schedule.final_sparsity == values[-1]
    with pytest.raises(dataclasses.FrozenInstanceError):
        schedule.start = 0  # type: ignore[misc]


def test_schedule_points_are_fractions_of_the_run_rounded_down() -> None:
    fractions = AGPSchedule(final_sparsity=0.5, start=0.1, end=0.5)
    long_run = fractions.resolved(60, "trainer.max_epochs", "epoch")
    assert long_run == AGPSchedule(final_sparsity=0.5, start=6, num_updates=24)
    short_run = fractions.resolved(5, "trainer.max_epochs", "epoch")
    assert short_run == AGPSchedule(final_sparsity=0.5, start=0, num_updates=2)
    assert (short_run.last_update, short_run.sparsity_at(4)) == (2, 0.5)
    # An integer end is a last point: updates stop at the last one on the frequency grid.
    grid = AGPSchedule(final_sparsity=0.5, start=1, end=8, frequency=3)
    assert grid.resolved(10, "trainer.max_epochs", "epoch").last_update == 7
    # num_updates decides the length; `end` (a default in the configs) is not used.
    counted = AGPSchedule(final_sparsity=0.5, start=1, num_updates=5, end=0.5)
    assert counted.resolved(20, "trainer.max_epochs", "epoch").last_update == 6
    assert OneShotSchedule(sparsity=0.5, at=0.2).resolved(5, "n", "epoch").at == 1
    iterative = IterativeSchedule([[0.2, 0.5], [0.4, 0.7], [9, 0.8]])
    assert iterative.resolved(10, "n", "epoch").steps == ((2, 0.5), (4, 0.7), (9, 0.8))
    with pytest.raises(RuntimeError, match="resolved"):
        fractions.sparsity_at(3)


@pytest.mark.parametrize(
    ("schedule", "length", "field", "message"),
    [
        (
            AGPSchedule(final_sparsity=0.5, start=5, num_updates=25),
            10,
            "schedule.num_updates",
            "a schedule that ends within trainer.max_epochs=10: its last update is at epoch 30 "
            "and the run's last epoch is 9",
        ),
        (
            AGPSchedule(final_sparsity=0.5, start=0.1, end=0.5),
            1,
            "schedule.end",
            "a point at least schedule.frequency=1 after schedule.start in a run of "
            "trainer.max_epochs=1 (start 0, end 0)",
        ),
        (
            AGPSchedule(final_sparsity=0.5, start=0.1, end=0.5),
            None,
            "schedule.start",
            "a number: a fraction needs trainer.max_epochs to be set",
        ),
        (OneShotSchedule(sparsity=0.5, at=10), 10, "schedule.at", "its last update is at epoch 10"),
        (
            IterativeSchedule([[0.2, 0.5], [0.3, 0.7]]),
            5,
            "schedule.steps[1][0]",
            "a step after schedule.steps[0][0] (both are epoch 1 of trainer.max_epochs=5)",
        ),
    ],
)
def test_a_schedule_that_cannot_finish_within_the_run_is_refused(
    schedule: SparsitySchedule, length: int | None, field: str, message: str
) -> None:
    with pytest.raises(ConfigError) as error:
        schedule.resolved(length, "trainer.max_epochs", "epoch")
    assert error.value.field == field
    assert message in error.value.allowed
