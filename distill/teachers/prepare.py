"""Train and cache a recipe's teacher(s) once, before the runs that use them (`distill-teacher`).

The teachers are built and provisioned exactly as `distill-train` does it (same specs, data
fingerprint, seed, compute and trainer), so the cache keys are the same: a sweep over student
settings started afterwards finds every teacher cached.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig

from distill.checks import torch_threads
from distill.config import build, build_named
from distill.data import ClassificationDataModule
from distill.losses import WeightedSum
from distill.teachers.cache import data_fingerprint
from distill.teachers.provision import build_teachers, provide_teachers
from distill.teachers.spec import ensemble_rule, teacher_specs
from distill.teachers.training import teacher_compute, teacher_trainer_factory
from distill.trust import check_config_targets

log = logging.getLogger(__name__)


def prepare_teachers(cfg: DictConfig) -> dict[str, dict[str, Any]]:
    """Give the teacher(s) of the run config `cfg` trained weights in the cache (training those
    it does not hold yet); member name -> facts (origin, cache_key, checkpoint, test_acc).
    Empty when the recipe's loss reads no teacher."""
    check_config_targets(cfg)  # every target allowed, before any is built
    with torch_threads(cfg.get("threads")):
        # As pipeline.train does before it builds the run, so the data split is the same.
        pl.seed_everything(cfg.seed, workers=True)
        datamodule: ClassificationDataModule = build(cfg.data, "data")
        datamodule.setup("fit")
        if not WeightedSum(build_named(cfg.loss, "loss")).requires_teacher:
            log.info("The loss of this recipe reads no teacher: nothing to train")
            return {}
        specs = teacher_specs(cfg)
        teacher = build_teachers(specs, datamodule, ensemble_rule(cfg))
        return provide_teachers(
            teacher,
            specs,
            data_fingerprint(cfg.data, datamodule),
            seed=cfg.seed,
            compute=teacher_compute(cfg.trainer),
            trainer_factory=teacher_trainer_factory(cfg.trainer),
            datamodule=datamodule,
            run_dir=Path(cfg.paths.output_dir),
        )
