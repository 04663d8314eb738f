"""Supervised training of a teacher on the labels, with the teacher's own settings."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Protocol

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from pytorch_lightning.plugins.environments import LightningEnvironment, SLURMEnvironment
from torch import nn

from distill.config import build
from distill.data import ClassificationDataModule
from distill.losses import CrossEntropy, WeightedSum
from distill.teachers.spec import TeacherSpec


class TrainerFactory(Protocol):
    """Makes the Lightning Trainer that trains one teacher."""

    def __call__(self, *, max_epochs: int, default_root_dir: Path) -> pl.Trainer: ...


def teacher_trainer_factory(trainer: DictConfig) -> TrainerFactory:
    """Trainers for teachers from the run's `trainer` config: no logger, no checkpoints, no
    callbacks, and one device with no distributed strategy.

    One device because under DDP the other ranks start only when the student's fit launches
    them, and they then find this teacher in the cache. A DDP teacher fit here would wait for
    ranks that are themselves waiting for the cache lock.

    Inside a SLURM job the teacher's trainer is told it runs alone (LightningEnvironment), so
    it installs no requeue handler: Lightning's SLURMEnvironment would, on SIGUSR1, save an
    hpc checkpoint of the teacher mid-training, and after the requeue the teacher's own `test`
    (ckpt_path=None under SLURM means "the newest hpc checkpoint") would load those weights
    over the trained ones before they are cached. A teacher is trained before a sweep instead
    (`distill-teacher`), or again from scratch by the job that is started next.
    """

    def make(*, max_epochs: int, default_root_dir: Path) -> pl.Trainer:
        alone: dict[str, Any] = (
            {"plugins": [LightningEnvironment()]} if SLURMEnvironment.detect() else {}
        )
        built: pl.Trainer = build(
            trainer,
            "trainer",
            max_epochs=max_epochs,
            logger=False,
            enable_checkpointing=False,
            callbacks=[],
            default_root_dir=str(default_root_dir),
            devices=1,
            strategy="auto",
            sync_batchnorm=False,
            **alone,
        )
        return built

    return make


def teacher_compute(trainer: DictConfig) -> dict[str, Any]:
    """What a teacher trained by `teacher_trainer_factory(trainer)` is computed on, as far as
    it changes the weights: accelerator, precision and, on CPU, the torch thread count (CPU
    kernels split their sums by thread, so 1 and 2 threads train different teachers). Part of
    the teacher cache key."""
    accelerator = str(trainer.get("accelerator", "auto"))
    if accelerator == "auto":
        accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    elif accelerator == "gpu":
        accelerator = "cuda"
    compute: dict[str, Any] = {
        "accelerator": accelerator,
        "precision": str(trainer.get("precision", "32-true")),
    }
    if accelerator == "cpu":
        compute["threads"] = torch.get_num_threads()
    return compute


def train_teacher(
    spec: TeacherSpec,
    model: nn.Module,
    datamodule: ClassificationDataModule,
    seed: int,
    trainer_factory: TrainerFactory,
    root_dir: Path,
) -> dict[str, Any]:
    """Train `model` in place as `spec` says; facts worth keeping (test accuracy, time)."""
    # distill.module imports this package (for the Teacher interface): import it here.
    from distill.module import DistillationModule

    started = time.perf_counter()
    pl.seed_everything(seed, workers=True)
    # Start from initial weights drawn from the seed alone. The model was built with the run,
    # after whatever else the process drew from the global RNG (a student built first, an
    # earlier fit), so its own initial weights are not a function of the cache key.
    model.load_state_dict(spec.build_model().state_dict())
    # The run's teacher wraps its members frozen (eval mode, no gradients) before they are
    # trained; undo both for this one, in place. Lightning does not switch modules to train
    # mode when fit starts (it warns and keeps the mode), so a model left in eval mode would
    # train with frozen BatchNorm statistics and no dropout.
    model.train().requires_grad_(True)
    module = DistillationModule(
        model,
        WeightedSum({"ce": CrossEntropy()}),
        optimizer=spec.build_optimizer(),
        lr_scheduler=spec.build_lr_scheduler(),
        num_classes=datamodule.num_classes,
    )
    trainer = trainer_factory(max_epochs=spec.max_epochs, default_root_dir=root_dir)
    # Under SLURM, Lightning resumes from an hpc checkpoint by itself: as weights only.
    trainer.fit(module, datamodule=datamodule, weights_only=True)
    (results,) = trainer.test(module, datamodule=datamodule, verbose=False, weights_only=True)
    model.eval().requires_grad_(False)
    return {"test_acc": results["test/acc"], "train_s": time.perf_counter() - started}
