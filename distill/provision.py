"""Teachers for a run: built from config, given trained weights, combined when there are several.

One teacher comes from `teacher` (a file of conf/teacher/). Several come from `teachers`, a
mapping of name -> teacher node (a recipe composes it with `/teacher@teachers.<name>: <file>`),
each with its own checkpoint or cached training and a `weight`; `teacher_ensemble.rule` says how
their soft targets combine.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from torch import nn

from distill.checks import check_fits_data
from distill.config import build
from distill.data import ClassificationDataModule
from distill.ensemble import TeacherEnsemble
from distill.losses import CrossEntropy, WeightedSum
from distill.module import DistillationModule
from distill.summary import artifact
from distill.teacher import load_weights
from distill.teacher_cache import TeacherCache

log = logging.getLogger(__name__)

# Settings that change how fast data loads but not what a teacher learns from it.
DATA_KEYS_NOT_IN_CACHE_KEY = ("num_workers", "eval_batch_size")


def data_material(cfg: DictConfig) -> dict[str, Any]:
    """The data settings that decide what a teacher sees (cache keys are built from them)."""
    return {
        key: value
        for key, value in OmegaConf.to_container(cfg.data, resolve=True).items()
        if key not in DATA_KEYS_NOT_IN_CACHE_KEY
    }


def teacher_nodes(cfg: DictConfig) -> dict[str, tuple[str, DictConfig]]:
    """name -> (config path, node) of every teacher of the run."""
    if cfg.get("teachers"):
        return {name: (f"teachers.{name}", node) for name, node in cfg.teachers.items()}
    return {"teacher": ("teacher", cfg.teacher)}


def build_teachers(cfg: DictConfig, datamodule: ClassificationDataModule) -> nn.Module:
    """The run's teacher (or ensemble), checked against the data, checkpoints loaded."""
    models: dict[str, nn.Module] = {}
    for name, (field, node) in teacher_nodes(cfg).items():
        model = build(node.model, f"{field}.model")
        check_fits_data(model, datamodule, f"{field}.model")
        if node.get("checkpoint"):
            load_weights(model, node.checkpoint, field=f"{field}.checkpoint")
        models[name] = model
    if len(models) == 1:
        return next(iter(models.values()))
    weights = {name: node.get("weight", 1.0) for name, (_, node) in teacher_nodes(cfg).items()}
    rule = cfg.get("teacher_ensemble", {}).get("rule", "mean")
    return TeacherEnsemble(models, weights, rule=rule)


def provide_teachers(
    cfg: DictConfig, teacher: nn.Module, datamodule: ClassificationDataModule
) -> dict[str, Any]:
    """Give every teacher trained weights; facts about them for summary.json."""
    members = (
        {name: frozen.model for name, frozen in teacher.members.items()}
        if isinstance(teacher, TeacherEnsemble)
        else {"teacher": teacher}
    )
    nodes = teacher_nodes(cfg)
    facts = {
        name: provide_teacher(cfg, nodes[name][1], nodes[name][0], model, datamodule)
        for name, model in members.items()
    }
    if isinstance(teacher, TeacherEnsemble):
        return {"rule": teacher.rule, "members": facts}
    return facts["teacher"]


def provide_teacher(
    cfg: DictConfig,
    node: DictConfig,
    field: str,
    model: nn.Module,
    datamodule: ClassificationDataModule,
) -> dict[str, Any]:
    """Trained weights for `model`: from its checkpoint (already loaded), or the cache."""
    if node.get("checkpoint"):
        path = Path(node.checkpoint)
        log.info("Teacher %s loaded from %s", field, path)
        return {"origin": "checkpoint", "checkpoint": artifact(path, Path(cfg.paths.output_dir))}
    material = {
        "model": OmegaConf.to_container(node.model, resolve=True),
        "data": data_material(cfg),
        "train": OmegaConf.to_container(node.train, resolve=True),
        "seed": cfg.seed,
    }
    cached = TeacherCache(node.get("cache_dir") or cfg.teacher.cache_dir).get_or_train(
        model, material, train=lambda m: train_teacher(cfg, node, field, m, datamodule)
    )
    return {
        "origin": cached.origin,
        # Outside the run directory, so an absolute path.
        "checkpoint": artifact(cached.path, Path(cfg.paths.output_dir)),
        "cache_key": cached.meta.get("key"),
        "test_acc": cached.meta.get("test_acc"),
    }


def train_teacher(
    cfg: DictConfig,
    node: DictConfig,
    field: str,
    model: nn.Module,
    datamodule: ClassificationDataModule,
) -> dict[str, Any]:
    """Supervised training of a teacher on the labels, with the teacher's own settings."""
    started = time.perf_counter()
    pl.seed_everything(cfg.seed, workers=True)
    settings = node.train
    # The run wraps its teachers frozen (eval mode, no gradients) before they are trained, and
    # Lightning keeps each module's mode at fit start: without train() here, BatchNorm would
    # train on its initial running statistics and never update them.
    model.train().requires_grad_(True)
    module = DistillationModule(
        model,
        WeightedSum({"ce": CrossEntropy()}),
        optimizer=build(settings.optimizer, f"{field}.train.optimizer"),
        lr_scheduler=(
            build(settings.lr_scheduler, f"{field}.train.lr_scheduler")
            if settings.lr_scheduler
            else None
        ),
        num_classes=datamodule.num_classes,
    )
    # One device, never a distributed strategy: under DDP the other ranks start only when the
    # student's fit launches them, and they then find this teacher in the cache. A DDP teacher
    # fit here would wait for ranks that are themselves waiting for the cache lock.
    trainer: pl.Trainer = build(
        cfg.trainer,
        "trainer",
        max_epochs=settings.max_epochs,
        logger=False,
        enable_checkpointing=False,
        callbacks=[],
        default_root_dir=str(Path(cfg.paths.output_dir) / "teacher"),
        devices=1,
        strategy="auto",
        sync_batchnorm=False,
    )
    trainer.fit(module, datamodule=datamodule)
    (results,) = trainer.test(module, datamodule=datamodule, verbose=False)
    model.eval().requires_grad_(False)
    return {"test_acc": results["test/acc"], "train_s": time.perf_counter() - started}
