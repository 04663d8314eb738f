"""Teachers for a run: built from their specs, given trained weights, combined when several.

One teacher comes from `teacher` (a file of conf/teacher/). Several come from `teachers`, a
mapping of name -> teacher node (a recipe composes it with `/teacher@teachers.<name>: <file>`),
each with its own checkpoint or cached training and a `weight`; `teacher_ensemble.rule` says how
their soft targets combine.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from distill.checks import check_fits_data
from distill.data import ClassificationDataModule
from distill.summary import artifact
from distill.teachers.base import Teacher
from distill.teachers.cache import TeacherCache, cache_key, teacher_key_material
from distill.teachers.checkpoint import load_weights
from distill.teachers.ensemble import TeacherEnsemble
from distill.teachers.frozen import SINGLE, FrozenTeacher
from distill.teachers.missing import MissingTeacherError
from distill.teachers.spec import DEFAULT_RULE, TeacherSpec
from distill.teachers.training import TrainerFactory, train_teacher

log = logging.getLogger(__name__)


def build_teachers(
    specs: Mapping[str, TeacherSpec], datamodule: ClassificationDataModule, rule: str = DEFAULT_RULE
) -> Teacher:
    """The run's teacher (or ensemble), checked against the data, checkpoints loaded.

    Specs named just "teacher" (from `teacher_specs` of a run with one teacher) give a
    FrozenTeacher; any others an ensemble, which needs two or more.
    """
    models: dict[str, nn.Module] = {}
    for name, spec in specs.items():
        model = spec.build_model()
        check_fits_data(model, datamodule, f"{spec.field}.model")
        if spec.checkpoint is not None:
            load_weights(model, spec.checkpoint, field=f"{spec.field}.checkpoint")
        models[name] = model
    if list(models) == [SINGLE]:
        return FrozenTeacher(models[SINGLE], target=specs[SINGLE].target)
    weights = {name: spec.weight for name, spec in specs.items()}
    return TeacherEnsemble(models, weights, rule=rule)


def provide_teachers(
    teacher: Teacher,
    specs: Mapping[str, TeacherSpec],
    data_fingerprint: Mapping[str, Any],
    seed: int,
    compute: Mapping[str, Any],
    trainer_factory: TrainerFactory,
    datamodule: ClassificationDataModule,
    run_dir: Path,
    when_missing: str = "train",
) -> dict[str, dict[str, Any]]:
    """Give every member of `teacher` trained weights: member name -> facts for summary.json
    (`teacher.describe` puts them in place). With `when_missing="fail"` nothing is trained:
    every member that must train is looked up first, and the first missing one raises
    MissingTeacherError before any other is loaded."""
    if when_missing == "fail":
        for name in teacher.member_models():
            require_cached(specs[name], data_fingerprint, seed, compute)
    return {
        name: provide_teacher(
            specs[name],
            model,
            data_fingerprint,
            seed,
            compute,
            trainer_factory,
            datamodule,
            run_dir,
        )
        for name, model in teacher.member_models().items()
    }


def require_cached(
    spec: TeacherSpec,
    data_fingerprint: Mapping[str, Any],
    seed: int,
    compute: Mapping[str, Any],
) -> None:
    """Raise MissingTeacherError unless `spec` loads a checkpoint or its cache holds it."""
    if spec.checkpoint is not None:
        return
    assert spec.cache_dir is not None  # a spec that must train has one
    cache = TeacherCache(spec.cache_dir, field=spec.cache_dir_field)
    key = cache_key(teacher_key_material(spec, data_fingerprint, seed, compute))
    if not cache.has(key):
        raise MissingTeacherError(spec.field, key, cache.weights_path(key))


def provide_teacher(
    spec: TeacherSpec,
    model: nn.Module,
    data_fingerprint: Mapping[str, Any],
    seed: int,
    compute: Mapping[str, Any],
    trainer_factory: TrainerFactory,
    datamodule: ClassificationDataModule,
    run_dir: Path,
) -> dict[str, Any]:
    """Trained weights for `model`: from its checkpoint (already loaded), or the cache, which
    trains it (`train_teacher`, under `run_dir/teacher`) when it has no entry yet."""
    if spec.checkpoint is not None:
        path = Path(spec.checkpoint)
        log.info("Teacher %s loaded from %s", spec.field, path)
        return {"origin": "checkpoint", "checkpoint": artifact(path, run_dir)}
    assert spec.cache_dir is not None  # a spec that must train has one
    cached = TeacherCache(spec.cache_dir, field=spec.cache_dir_field).get_or_train(
        model,
        teacher_key_material(spec, data_fingerprint, seed, compute),
        train=lambda m: train_teacher(
            spec, m, datamodule, seed, trainer_factory, run_dir / "teacher"
        ),
    )
    return {
        "origin": cached.origin,
        # Outside the run directory, so an absolute path.
        "checkpoint": artifact(cached.path, run_dir),
        "cache_key": cached.meta.get("key"),
        "test_acc": cached.meta.get("test_acc"),
    }
