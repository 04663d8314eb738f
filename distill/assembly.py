"""Every object of a run, built from its config and checked, before anything is trained.

Order matters: the run's own settings (`check_run_settings`: those no constructor takes) are
checked first, then data, models, loss, compression, optimizer and trainer are built, so a bad
setting fails in seconds, before a teacher is trained or a file is written as if the run
succeeded. Nothing here trains or writes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig
from torch import Tensor, nn

from distill.checkpoint_io import CHECKPOINT_DIR, AtomicCheckpointIO
from distill.checks import (
    check_fits_data,
    check_optimizer,
    check_resume_checkpoint,
    check_resume_fits,
)
from distill.compression import PruningCallback, QuantizationCallback, SparsityLogger
from distill.config import build, build_named, check_group_overrides
from distill.data import ClassificationDataModule
from distill.deploy.pte import check_setting as check_pte_setting
from distill.errors import ConfigError
from distill.files import require_writable_dir
from distill.fit_steps import planned_optimizer_steps
from distill.interruption import InterruptCheckpoint
from distill.losses import WeightedSum
from distill.module import DistillationModule
from distill.teachers import Teacher, TeacherSpec, build_teachers, ensemble_rule, teacher_specs
from distill.trust import check_config_targets
from distill.validate import require_choice, require_int

log = logging.getLogger(__name__)


@dataclass
class Compression:
    """The student's compression callbacks, attached in chain order (mask, then fake-quant)."""

    pruning: PruningCallback | None = None
    quantization: QuantizationCallback | None = None
    # Observes the pruning callback's updates; after it, so it logs in the same hook.
    sparsity_logger: SparsityLogger | None = None

    @property
    def callbacks(self) -> list[pl.Callback]:
        callbacks = (self.pruning, self.sparsity_logger, self.quantization)
        return [callback for callback in callbacks if callback is not None]


def attach_compression(
    cfg: DictConfig, student: nn.Module, example_inputs: Tensor, max_epochs: int | None
) -> Compression:
    """Build the run's pruning and quantization callbacks and attach them to `student`.

    One place for training and for `distill-export` (which rebuilds a finished run's student):
    masks go on before anything sees the student, so checkpoint keys never change, and the
    fake-quant after them, because a weight is masked first, then quantized.
    """
    compression = Compression()
    if cfg.get("pruning"):
        compression.pruning = build(cfg.pruning, "pruning")
        if compression.pruning.unit == "epoch":
            compression.pruning.resolve_schedule(max_epochs)
        compression.pruning.attach(student, example_inputs)
        compression.sparsity_logger = SparsityLogger(compression.pruning)
    if cfg.get("quantization"):
        compression.quantization = build(cfg.quantization, "quantization")
        compression.quantization.resolve_epochs(max_epochs)
        compression.quantization.attach(student, example_inputs)
    return compression


def check_step_schedule(
    pruning: PruningCallback | None, trainer: pl.Trainer, datamodule: ClassificationDataModule
) -> None:
    """Refuse a schedule counted in optimizer steps that does not fit the run, now rather than
    at fit start (after the teacher); resolved there as before, from Lightning's own count."""
    if pruning is None or pruning.unit != "step":
        return
    steps = planned_optimizer_steps(trainer, len(datamodule.train_dataset), datamodule.batch_size)
    if steps is not None:
        pruning.check_schedule(steps)


@dataclass
class AssembledRun:
    """What `pipeline.train` runs: built, checked and wired, nothing trained yet."""

    cfg: DictConfig
    datamodule: ClassificationDataModule
    loss: WeightedSum
    student: nn.Module
    teacher: Teacher | None
    teacher_specs: dict[str, TeacherSpec]
    compression: Compression
    module: DistillationModule
    trainer: pl.Trainer
    loggers: list[Any]
    use_output_cache: bool
    output_cache_reason: str | None

    @property
    def exports(self) -> bool:
        return exports(self.cfg)


# numpy's seed range, which Lightning's seed_everything enforces.
SEED_MAX = 2**32 - 1


def check_run_settings(cfg: DictConfig, overrides: Sequence[str] = ()) -> None:
    """Refuse the run's own settings that no constructor checks, before anything is seeded,
    built or written: each would otherwise fail after the teacher was trained, or not at all.

    `overrides` are the job's command-line overrides, where Hydra's composition has not yet
    dropped a repeated or empty group list (`loss=[ce,kd,kd]`, `loss=[]`).
    """
    check_group_overrides(overrides)
    if not cfg.get("loss"):
        raise ConfigError("loss", cfg.get("loss"), "one or more loss terms, e.g. loss=[ce,kd]")
    require_int("seed", cfg.get("seed"), minimum=0, maximum=SEED_MAX)
    # Lightning reads -1 as "no limit" and null as 1000 epochs; a distillation run is always
    # given its length (the LR schedule and a fractional quantization.start_epoch need it).
    require_int("trainer.max_epochs", cfg.trainer.get("max_epochs"), minimum=1)
    require_int("export_latency_repeats", cfg.get("export_latency_repeats", 20), minimum=1)
    check_pte_setting(cfg.get("export_executorch", "auto"), exporting=exports(cfg))
    if cfg.get("ckpt_path") is not None:
        check_resume_checkpoint(cfg.ckpt_path)


def exports(cfg: DictConfig) -> bool:
    """Whether the run ends with the deployment export (never for a fast_dev_run)."""
    return bool(cfg.get("export", False)) and not cfg.trainer.get("fast_dev_run")


def assemble(cfg: DictConfig) -> AssembledRun:
    """Build every object of the run in `cfg` and check it against the data. Every `_target_`
    of the config is checked against the allowlist first (distill.trust), so a refused one in
    a late node (callbacks, the teacher's optimizer) is refused before the data is built."""
    check_config_targets(cfg)
    datamodule: ClassificationDataModule = build(cfg.data, "data", ClassificationDataModule)
    datamodule.setup("fit")
    loss = WeightedSum(build_named(cfg.loss, "loss"))
    student: nn.Module = build(cfg.student, "student", nn.Module)
    check_fits_data(student, datamodule, "student")
    optimizer = build(cfg.optimizer, "optimizer")
    lr_scheduler = build(cfg.lr_scheduler, "lr_scheduler") if cfg.lr_scheduler else None
    check_optimizer(optimizer, "optimizer", lr_scheduler, "lr_scheduler")
    specs = teacher_specs(cfg) if loss.requires_teacher else {}
    for spec in specs.values():
        if spec.must_train:
            assert spec.cache_dir is not None  # a spec that must train has one
            require_writable_dir(spec.cache_dir_field, spec.cache_dir)
            check_optimizer(
                spec.build_optimizer(),
                f"{spec.field}.train.optimizer",
                spec.build_lr_scheduler(),
                f"{spec.field}.train.lr_scheduler",
            )
    teacher = build_teachers(specs, datamodule, ensemble_rule(cfg)) if specs else None
    use_output_cache, output_cache_reason = plan_teacher_output_cache(cfg, teacher, datamodule)
    if use_output_cache:
        require_writable_dir("paths.cache_dir", cfg.paths.cache_dir)
    max_epochs = cfg.trainer.get("max_epochs")
    example = datamodule.example_input_batch(2)
    compression = attach_compression(cfg, student, example, max_epochs)
    if compression.quantization is not None and exports(cfg):
        check_quantization_exportable(compression.quantization, max_epochs)
    module = DistillationModule(
        student,
        loss,
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        num_classes=datamodule.num_classes,
        teacher=teacher,
        example_inputs=example,
        num_train_samples=len(datamodule.train_dataset),
    )
    if cfg.get("ckpt_path") is not None:
        check_resume_fits(cfg.ckpt_path, module)
    # Terms with per-sample state (CRD's memory bank) and cached teacher outputs both look
    # samples up by their index in the training set.
    datamodule.return_indices = module.requires_indices or use_output_cache
    callbacks = [
        *build_named(cfg.callbacks, "callbacks").values(),
        *compression.callbacks,
        InterruptCheckpoint(Path(cfg.paths.output_dir) / CHECKPOINT_DIR),
    ]
    loggers = list(build_named(cfg.logger, "logger").values())
    trainer: pl.Trainer = build(
        cfg.trainer,
        "trainer",
        callbacks=callbacks,
        logger=loggers or False,
        **checkpoint_plugins(cfg.trainer),
    )
    check_step_schedule(compression.pruning, trainer, datamodule)
    return AssembledRun(
        cfg,
        datamodule,
        loss,
        student,
        teacher,
        specs,
        compression,
        module,
        trainer,
        loggers,
        use_output_cache,
        output_cache_reason,
    )


def checkpoint_plugins(trainer_cfg: DictConfig) -> dict[str, Any]:
    """Atomic checkpoint writes (`AtomicCheckpointIO`), unless the user's trainer config brings
    its own plugins, which then decide how checkpoints are written."""
    if trainer_cfg.get("plugins"):
        log.info("trainer.plugins is set: checkpoints are written by those plugins")
        return {}
    return {"plugins": [AtomicCheckpointIO()]}


def check_quantization_exportable(
    quantization: QuantizationCallback, max_epochs: int | None
) -> None:
    """Refuse, before training, a QAT setting the int8 export could not use."""
    quantization.check_exportable()
    start = quantization.start_epoch
    starts_too_late = max_epochs is not None and start is not None and 0 < max_epochs <= start
    if quantization.activations and starts_too_late:
        raise ConfigError(
            "quantization.start_epoch",
            quantization.epoch_settings["start_epoch"],
            f"an epoch before trainer.max_epochs={max_epochs} (this is epoch "
            f"{quantization.start_epoch}): the int8 export needs the "
            "activation ranges QAT observes (or use quantization=none, and the export "
            "calibrates after training, or export=false)",
        )


CACHE_MODES = ("auto", "on", "off")


def plan_teacher_output_cache(
    cfg: DictConfig, teacher: Teacher | None, datamodule: ClassificationDataModule
) -> tuple[bool, str | None]:
    """Whether to compute teacher outputs once, and if not, why (for the log and summary)."""
    mode = require_choice(
        "teacher_output_cache", cfg.get("teacher_output_cache", "off"), CACHE_MODES
    )
    reason = None
    if teacher is None:
        reason = "no teacher"
    elif datamodule.has_random_augmentation:
        reason = (
            "the training inputs are randomly augmented, so teacher outputs change every epoch "
            "(turn augmentation off, e.g. data.augment=false, to cache them)"
        )
    elif teacher.output_cache_refusal() is not None:
        reason = teacher.output_cache_refusal()
    elif mode == "off":
        reason = "teacher_output_cache=off"
    if mode == "on" and reason is not None:
        raise ConfigError("teacher_output_cache", mode, f"'auto' or 'off' here: {reason}")
    if reason is not None and teacher is not None:
        log.info("Teacher outputs are not cached: %s", reason)
    return reason is None, reason
