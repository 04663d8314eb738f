"""Every loss config, on the default recipe's models: builds, trains a step, reaches the student.

One settings table (the files in conf/loss/), so a new loss is covered by adding its config.
"""

from __future__ import annotations

import functools

import pytest
import torch

from distill.config import build, build_named
from distill.losses import WeightedSum
from distill.module import DistillationModule

from ..conftest import config_options

LOSSES = config_options("loss")


@pytest.mark.parametrize("name", LOSSES)
def test_loss_config_trains_the_student(name, compose_cfg):
    cfg = compose_cfg(f"loss=[ce,{name}]" if name != "ce" else "loss=[ce]", "data.num_samples=600")
    torch.manual_seed(0)
    datamodule = build(cfg.data, "data")
    datamodule.setup("fit")
    loss = WeightedSum(build_named(cfg.loss, "loss"))
    student = build(cfg.student, "student")
    teacher = build(cfg.teacher.model, "teacher.model") if loss.requires_teacher else None
    module = DistillationModule(
        student,
        loss,
        optimizer=functools.partial(torch.optim.SGD, lr=0.01),
        num_classes=datamodule.num_classes,
        teacher=teacher,
        example_inputs=datamodule.example_input_batch(2),
        num_train_samples=len(datamodule.train_dataset),
    )
    datamodule.return_indices = module.requires_indices
    module.log = lambda *args, **kwargs: None  # no Trainer to log to
    module.on_fit_start()
    batch = next(iter(datamodule.train_dataloader()))
    assert len(batch) == (3 if datamodule.return_indices else 2)
    total = module.training_step(batch, 0)
    module.on_fit_end()
    assert total.ndim == 0 and torch.isfinite(total)
    total.backward()
    grads = [p.grad for p in student.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(p.grad is None for p in module.teacher.parameters()) if teacher else True
