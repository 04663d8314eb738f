"""`planned_optimizer_steps` gives, before any fit, the number Lightning gives at fit start."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from distill.fit_steps import planned_optimizer_steps

SAMPLES, BATCH = 50, 8  # 7 batches per epoch, the last one partial


class Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.estimated: int | float | None = None

    def on_train_start(self) -> None:
        self.estimated = self.trainer.estimated_stepping_batches

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def trainer(**settings) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **settings,
    )


@pytest.mark.parametrize(
    "settings",
    [
        {"max_epochs": 3},
        {"max_epochs": 3, "limit_train_batches": 4},
        {"max_epochs": 3, "limit_train_batches": 20},
        {"max_epochs": 2, "limit_train_batches": 0.5},
        {"max_epochs": 3, "accumulate_grad_batches": 2},
        {"max_epochs": 3, "accumulate_grad_batches": 3, "limit_train_batches": 0.9},
        {"max_epochs": 3, "max_steps": 5},
        {"max_epochs": 1, "max_steps": 100},
        {"fast_dev_run": True},
        {"fast_dev_run": 3},
    ],
    ids=str,
)
def test_the_plan_is_lightnings_own_count(settings):
    planned = planned_optimizer_steps(trainer(**settings), SAMPLES, BATCH)
    fitted = trainer(**settings)
    module = Tiny()
    data = DataLoader(TensorDataset(torch.zeros(SAMPLES, 2)), batch_size=BATCH)
    fitted.fit(module, data)
    assert planned == module.estimated
    assert isinstance(planned, int) and planned > 0


@pytest.mark.parametrize(
    "settings",
    [
        {"max_epochs": -1, "max_steps": 10},  # no epoch limit
        {"max_epochs": 2, "limit_train_batches": 0.1},  # 0.7 batches: Lightning refuses it
        {"max_epochs": 2, "devices": 2, "strategy": "ddp"},  # each rank's share: the sampler's
    ],
    ids=str,
)
def test_what_only_the_fit_knows_is_left_to_it(settings):
    settings = {"accelerator": "cpu", "devices": 1, **settings}
    made = pl.Trainer(logger=False, enable_checkpointing=False, **settings)
    assert planned_optimizer_steps(made, SAMPLES, BATCH) is None
