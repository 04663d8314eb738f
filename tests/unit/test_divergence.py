"""A NaN or infinite loss (or weights) stops training with `TrainingDiverged`, naming the term,
the value, the step and the epoch, before the update; checkpoints saved before stay as they were.
"""

from __future__ import annotations

import functools
import math

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from distill.errors import TrainingDiverged
from distill.losses import CrossEntropy, LossTerm, StepOutputs, WeightedSum
from distill.module import DistillationModule

ADVICE = "Check the learning rate, the loss weights and temperature, and the inputs."
# 64 samples in batches of 16: steps 0-3 are epoch 0, steps 4-7 epoch 1.
STEPS_PER_EPOCH = 4


class Poison(LossTerm):
    """Cross-entropy, except `value` at its call number `at` (one call per training step)."""

    def __init__(self, value: float, at: int = 0, weight: float = 1.0) -> None:
        super().__init__(weight=weight)
        self.value, self.at, self.calls = value, at, 0
        self.on_poison = lambda: None  # what a test records when the bad value is returned

    def compute(self, outputs: StepOutputs) -> torch.Tensor:
        call, self.calls = self.calls, self.calls + 1
        loss = nn.functional.cross_entropy(outputs.student_logits, outputs.targets)
        if call != self.at:
            return loss
        self.on_poison()
        return loss * 0 + self.value  # still on the graph, as a real term's value is


class Constant(LossTerm):
    def __init__(self, value: float, weight: float = 1.0) -> None:
        super().__init__(weight=weight)
        self.value = value

    def compute(self, outputs: StepOutputs) -> torch.Tensor:
        return outputs.student_logits.sum() * 0 + self.value


def tiny_net() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def make_module(terms: dict[str, LossTerm]) -> DistillationModule:
    torch.manual_seed(0)
    return DistillationModule(
        tiny_net(),
        WeightedSum(terms),
        optimizer=functools.partial(torch.optim.SGD, lr=0.1),
        num_classes=3,
    )


def loader(n: int = 64) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(n, 6, generator=generator)
    targets = torch.randint(0, 3, (n,), generator=generator)
    return DataLoader(TensorDataset(inputs, targets), batch_size=16)


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    return next(iter(loader()))


def trainer(callbacks=(), max_epochs: int = 3) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=max_epochs,
        logger=False,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=list(callbacks),
    )


def checkpoint_bytes(folder) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_a_finite_loss_passes_untouched():
    module = make_module({"ce": CrossEntropy(weight=0.5), "other": Poison(math.nan, at=-1)})
    inputs, targets = batch()
    expected, _ = module.loss(StepOutputs(module.student(inputs), targets))
    module.log = lambda *args, **kwargs: None  # no Trainer to log to
    total = module.training_step((inputs, targets), 0)
    assert torch.equal(total, expected) and total.requires_grad


def test_a_finite_fit_is_not_stopped():
    module = make_module({"ce": CrossEntropy(), "other": Poison(math.nan, at=-1)})
    fitted = trainer(max_epochs=2)
    fitted.fit(module, loader(), loader(32))
    assert fitted.global_step == 2 * STEPS_PER_EPOCH


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_the_message_names_the_term_its_value_the_step_and_the_epoch(value):
    module = make_module({"ce": CrossEntropy(), "kd": Poison(value, weight=0.9)})
    module.log = lambda *args, **kwargs: None
    with pytest.raises(TrainingDiverged) as raised:
        module.training_step(batch(), 0)
    assert str(raised.value) == (
        f"the training loss is not finite at step 0 (epoch 0): loss.kd={value}. Training "
        f"stopped before this step's update; checkpoints saved before it are kept. {ADVICE}"
    )


def test_every_bad_term_is_named_and_a_weight_that_made_one_bad_is_shown():
    module = make_module(
        {
            "ce": CrossEntropy(),
            "kd": Poison(math.nan),
            "off": Constant(math.inf, weight=0),  # 0 * inf is nan
            "big": Constant(1e30, weight=1e30),  # a finite value times a weight overflows
        }
    )
    module.log = lambda *args, **kwargs: None
    with pytest.raises(TrainingDiverged) as e:
        module.training_step(batch(), 0)
    assert str(e.value).startswith("the training loss is not finite at step 0 (epoch 0)")
    assert (
        ": loss.kd=nan, loss.off=inf (times weight 0: nan), loss.big=1e+30 (times weight 1e+30: "
        "inf). Training stopped"
    ) in str(e.value)


def test_finite_terms_whose_sum_overflows_are_named_with_the_sum():
    module = make_module({"a": Constant(3e38), "b": Constant(3e38)})
    module.log = lambda *args, **kwargs: None
    with pytest.raises(TrainingDiverged) as raised:
        module.training_step(batch(), 0)
    assert str(raised.value).startswith(
        "the training loss is not finite at step 0 (epoch 0): the weighted sum of "
        "loss.a=3e+38, loss.b=3e+38 overflowed to inf. Training stopped"
    )


def test_a_fit_stops_at_the_bad_step_before_its_update_and_keeps_the_checkpoints(tmp_path):
    poison = Poison(math.nan, at=STEPS_PER_EPOCH + 1, weight=0.5)
    module = make_module({"ce": CrossEntropy(), "kd": poison})
    checkpoints = ModelCheckpoint(tmp_path, monitor="val/acc", mode="max", save_last=True)
    seen: dict[str, dict] = {}
    # What the checkpoints and the weights were when the bad loss was computed: the state
    # after step 4's update, saved at the end of epoch 0.
    poison.on_poison = lambda: seen.update(
        files=checkpoint_bytes(tmp_path),
        weights={k: v.clone() for k, v in module.student.state_dict().items()},
    )
    fitting = trainer([checkpoints])

    with pytest.raises(TrainingDiverged) as raised:
        fitting.fit(module, loader(), loader(32))

    assert raised.value.step == STEPS_PER_EPOCH + 1 and raised.value.epoch == 1
    assert str(raised.value).startswith(
        "the training loss is not finite at step 5 (epoch 1): loss.kd=nan. Training stopped"
    )
    assert set(seen["files"]) == {"epoch=0-step=4.ckpt", "last.ckpt"}
    assert checkpoint_bytes(tmp_path) == seen["files"]  # nothing saved or replaced since
    for name in seen["files"]:
        saved = torch.load(tmp_path / name, weights_only=True)["state_dict"]
        assert all(torch.isfinite(value).all() for value in saved.values())
    # The bad step never reached the weights.
    for key, value in module.student.state_dict().items():
        assert torch.equal(value, seen["weights"][key]), key


class Overflow(pl.Callback):
    """Makes one weight infinite after step `at`'s update, as an overflowing update would."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == self.at + 1:
            with torch.no_grad():
                module.student[2].weight[0, 0] = math.inf


class Snapshot(pl.Callback):
    """The checkpoint files' bytes when `epoch` starts."""

    def __init__(self, folder, epoch: int) -> None:
        self.folder, self.epoch = folder, epoch
        self.files: dict[str, bytes] = {}

    def on_train_epoch_start(self, trainer, module):
        if trainer.current_epoch == self.epoch:
            self.files = checkpoint_bytes(self.folder)


@pytest.mark.parametrize("validate", [True, False], ids=["validation", "no_validation"])
def test_weights_an_update_made_infinite_are_never_checkpointed(validate, tmp_path):
    module = make_module({"ce": CrossEntropy()})
    # Without validation the checkpoint is saved at the end of the training epoch.
    checkpoints = ModelCheckpoint(
        tmp_path, save_last=True, **({"monitor": "val/acc", "mode": "max"} if validate else {})
    )
    last_of_epoch_1 = 2 * STEPS_PER_EPOCH - 1
    before = Snapshot(tmp_path, epoch=1)
    fitting = trainer([checkpoints, Overflow(at=last_of_epoch_1), before])
    with pytest.raises(TrainingDiverged) as raised:
        fitting.fit(module, loader(), loader(32) if validate else None)

    assert str(raised.value) == (
        "the weights are not finite at step 8 (epoch 1): student.2.weight holds inf. The loss "
        "was finite up to here, so an update overflowed. Training stopped before a checkpoint "
        f"saved them; checkpoints saved before are kept. {ADVICE}"
    )
    assert set(before.files) == {"epoch=0-step=4.ckpt", "last.ckpt"}
    assert checkpoint_bytes(tmp_path) == before.files
