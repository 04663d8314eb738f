"""PruningCallback: schedules reached exactly, exact resume, only the student pruned."""

from __future__ import annotations

import functools

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.data import TensorDataset

from distill.compression import (
    AGPSchedule,
    BNGammaScore,
    ChannelPruning,
    IterativeSchedule,
    L1Score,
    L2Score,
    Magnitude,
    NMSparsity,
    OneShotSchedule,
    PruningCallback,
    RandomPruning,
    SparsityLogger,
    TaylorScore,
    bake_into,
    get_mask,
)
from distill.data.resumable import ResumableDataLoader
from distill.deploy import remove_zero_channels
from distill.errors import ConfigError
from distill.losses import CrossEntropy, SoftTargetKD, WeightedSum
from distill.module import DistillationModule

INPUT_SHAPE = (2, 16)


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv1d(2, 8, 3, padding=1),
        nn.BatchNorm1d(8),
        nn.ReLU(),
        nn.Conv1d(8, 8, 3, padding=1),
        nn.BatchNorm1d(8),
        nn.ReLU(),
        nn.Conv1d(8, 8, 3, padding=1),
        nn.BatchNorm1d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 16, 4),
    )


def loader() -> ResumableDataLoader:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(64, *INPUT_SHAPE, generator=generator)
    targets = torch.randint(0, 4, (64,), generator=generator)
    # Shuffled and resumable, as distill's DataModules make their train loaders.
    dataset = TensorDataset(inputs, targets)
    return ResumableDataLoader(dataset, batch_size=8, generator=torch.Generator().manual_seed(1))


def module_for(student: nn.Module) -> DistillationModule:
    teacher = tiny_cnn()
    return DistillationModule(
        student,
        WeightedSum({"ce": CrossEntropy(weight=0.5), "kd": SoftTargetKD(weight=0.5)}),
        optimizer=functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=1e-3),
        num_classes=4,
        teacher=teacher,
    )


def trainer(max_steps: int, **kwargs) -> pl.Trainer:
    return pl.Trainer(
        max_steps=max_steps,
        max_epochs=-1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        **kwargs,
    )


CRITERIA = {
    "magnitude": lambda: Magnitude(),
    "global_magnitude": lambda: Magnitude(scope="global"),
    "random": lambda: RandomPruning(seed=3),
    "nm_2_4": lambda: NMSparsity(2, 4),
    "channel_l1": lambda: ChannelPruning(L1Score()),
    "channel_l2": lambda: ChannelPruning(L2Score()),
    "channel_bn_gamma": lambda: ChannelPruning(BNGammaScore()),
    "channel_taylor": lambda: ChannelPruning(TaylorScore()),
}


def make_callback(name: str, schedule=None, round_to=None) -> PruningCallback:
    schedule = schedule or AGPSchedule(final_sparsity=0.75, start=2, frequency=3, num_updates=4)
    return PruningCallback(CRITERIA[name](), schedule, unit="step", round_to=round_to)


def masks_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if k.endswith(".mask")}


def fit(callback: PruningCallback, steps: int, ckpt_path=None, student=None, planned=None):
    """Fit for `steps` optimizer steps, of a run `planned` steps long (a run cut short)."""
    student = student or tiny_cnn()
    callback.attach(student, torch.randn(2, *INPUT_SHAPE))
    callback.resolve_schedule(planned or steps)
    module = module_for(student)
    run = trainer(steps, callbacks=[callback])
    run.fit(module, train_dataloaders=loader(), ckpt_path=ckpt_path)
    return run, module


@pytest.mark.parametrize("name", CRITERIA)
def test_final_sparsity_is_reached_exactly_and_pruned_weights_stay_zero(name):
    callback = make_callback(name)
    _, module = fit(callback, steps=20)
    student = module.student
    assert callback.last_update == 14  # t0 + n * dt
    for layer_name in callback.layers:
        layer = student.get_submodule(layer_name)
        mask = get_mask(layer, "weight").mask
        # Effective weights are exactly zero wherever the mask prunes, after 6 more steps of
        # SGD with momentum and weight decay.
        assert torch.all(layer.weight[~mask] == 0)
        if name == "nm_2_4":
            assert mask.reshape(-1, 4).sum(dim=1).eq(2).all()
        elif name.startswith("channel"):
            kept = mask.flatten(1).any(dim=1)
            assert int((~kept).sum()) == 6  # round(0.75 * 8)
        elif name != "global_magnitude":
            assert int((~mask).sum()) == round(0.75 * mask.numel())
    if name == "global_magnitude":
        pruned = sum(int((~get_mask(student.get_submodule(n)).mask).sum()) for n in callback.layers)
        total = sum(student.get_submodule(n).weight.numel() for n in callback.layers)
        assert pruned == round(0.75 * total)
    # First and last layers stay dense; the teacher is never touched.
    assert get_mask(student[0]) is None and get_mask(student[10]) is None
    assert not any(parametrize.is_parametrized(m) for m in module.teacher.modules())


@pytest.mark.parametrize(
    ("name", "round_to"),
    [
        ("magnitude", None),
        ("random", None),
        ("channel_taylor", None),
        # 8 channels kept 8, 6, 4, 2, 2 (multiples of 2): the masks change after the resume.
        ("channel_taylor", 2),
        ("nm_2_4", None),
    ],
)
def test_resume_from_a_mid_run_checkpoint_ends_with_the_same_masks(name, round_to, tmp_path):
    schedule = AGPSchedule(final_sparsity=0.75, start=2, frequency=3, num_updates=4)
    if name == "nm_2_4":
        schedule = OneShotSchedule(sparsity=0.5, at=9)
    uninterrupted, reference = fit(make_callback(name, schedule, round_to), steps=16)

    first, _ = fit(make_callback(name, schedule, round_to), steps=7, planned=16)
    path = tmp_path / "mid.ckpt"
    first.save_checkpoint(path)
    resumed_callback = make_callback(name, schedule, round_to)
    resumed, module = fit(resumed_callback, steps=16, ckpt_path=path)

    assert resumed.global_step == uninterrupted.global_step == 16
    expected, actual = masks_of(reference.student), masks_of(module.student)
    assert expected.keys() == actual.keys() and expected
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    assert resumed_callback.last_update == schedule.last_update
    for a, b in zip(reference.student.parameters(), module.student.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_checkpoint_keys_are_the_same_before_and_after_pruning():
    callback = make_callback("magnitude")
    student = tiny_cnn()
    callback.attach(student, torch.randn(2, *INPUT_SHAPE))
    keys_before = set(student.state_dict())
    callback.apply(student, t=14)
    assert set(student.state_dict()) == keys_before
    assert "3.parametrizations.weight.0.mask" in keys_before


def test_channel_pruned_student_is_physically_slimmed_with_the_same_outputs():
    callback = make_callback("channel_l1")
    _, module = fit(callback, steps=16)
    plain = bake_into(module.student, tiny_cnn()).eval()
    report = remove_zero_channels(plain, torch.randn(1, *INPUT_SHAPE))
    # Layers 3 and 6 (the middle convs) keep 2 of 8 channels each; 0 and 10 stay dense.
    assert report.channels_after == {"0": 8, "3": 2, "6": 2, "10": 4}
    inputs = torch.randn(5, *INPUT_SHAPE)
    assert torch.allclose(report.model(inputs), plain(inputs), atol=1e-5)
    assert report.macs_after < report.macs_before


def test_sparsity_is_logged_at_each_update(tmp_path):
    callback = make_callback("magnitude")
    student = tiny_cnn()
    callback.attach(student, torch.randn(2, *INPUT_SHAPE))
    logger = pl.loggers.CSVLogger(tmp_path, name="csv", version="")
    run = pl.Trainer(
        max_steps=16,
        logger=logger,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[callback, SparsityLogger(callback)],
        log_every_n_steps=1,
    )
    run.fit(module_for(student), train_dataloaders=loader())
    text = (tmp_path / "csv" / "metrics.csv").read_text()
    header = text.splitlines()[0].split(",")
    assert "sparsity/global" in header and "sparsity/3" in header
    column = header.index("sparsity/3")
    values = [
        float(row.split(",")[column]) for row in text.splitlines()[1:] if row.split(",")[column]
    ]
    schedule = callback.schedule
    assert values == pytest.approx(
        [round(schedule.sparsity_at(t) * 192) / 192 for t in (2, 5, 8, 11, 14)]  # 8x8x3 weights
    )


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (
            lambda: PruningCallback(
                Magnitude(), OneShotSchedule(sparsity=0.5, at=0), include=["nope*"]
            ),
            "pruning.include",
        ),
        (
            lambda: PruningCallback(
                Magnitude(), OneShotSchedule(sparsity=0.5, at=0), exclude=["x"]
            ),
            "pruning.exclude",
        ),
        (
            lambda: PruningCallback(
                Magnitude(), OneShotSchedule(sparsity=0.5, at=0), layer_sparsity={"3": 1.0}
            ),
            "pruning.layer_sparsity.3",
        ),
        (
            lambda: PruningCallback(
                Magnitude(),
                OneShotSchedule(sparsity=0.5, at=0),
                include=["0", "10"],
                keep_first_last_dense=True,
            ),
            "pruning.include",
        ),
    ],
)
def test_bad_layer_selection_is_refused_at_attach(build, field):
    with pytest.raises(ConfigError) as error:
        build().attach(tiny_cnn(), torch.randn(2, *INPUT_SHAPE))
    assert error.value.field == field


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (
            lambda: PruningCallback(Magnitude(), OneShotSchedule(sparsity=0.5, at=0), unit="batch"),
            "pruning.unit",
        ),
        (lambda: NMSparsity(4, 4), "pruning.criterion.n"),
        (lambda: ChannelPruning("fisher"), "pruning.criterion.score"),
        (lambda: Magnitude(scope="net"), "pruning.criterion.scope"),
        (lambda: IterativeSchedule([(10, 0.5), (5, 0.7)]), "schedule.steps[1][0]"),
        (
            lambda: AGPSchedule(final_sparsity=1.0, start=0, frequency=1, num_updates=2),
            "schedule.final_sparsity",
        ),
        (
            lambda: PruningCallback(
                Magnitude(scope="global"),
                OneShotSchedule(sparsity=0.5, at=0),
                layer_sparsity={"3": 0.2},
            ),
            "pruning.layer_sparsity",
        ),
    ],
)
def test_bad_settings_are_refused_at_construction(build, field):
    with pytest.raises(ConfigError) as error:
        build()
    assert error.value.field == field


def test_taylor_on_frozen_layers_is_refused_before_training():
    student = tiny_cnn()
    student[3].weight.requires_grad_(False)
    callback = make_callback("channel_taylor")
    with pytest.raises(ConfigError) as error:
        callback.attach(student, torch.randn(2, *INPUT_SHAPE))
    assert error.value.field == "pruning.criterion"
    assert "taylor needs" in str(error.value)
