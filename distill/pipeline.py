"""One distillation run, from a composed config to a tested student and `summary.json`.

Order matters: everything the user configured is built and checked first (data, models,
loss, optimizer, trainer, teacher checkpoint), so a bad setting fails in seconds, before any
teacher is trained or any file is written as if the run succeeded.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn

from distill.checks import check_fits_data, ensure_fresh_run_dir
from distill.compression import (
    ChannelPruning,
    PruningCallback,
    QuantizationCallback,
    bake_into,
)
from distill.config import build, build_named
from distill.data import ClassificationDataModule
from distill.deploy import save_slim
from distill.deploy.artifacts import export_run
from distill.deploy.run_dir import STUDENT_STATE_FILE, TrainedRun, save_run_config
from distill.errors import ConfigError
from distill.files import atomic_write, atomic_write_json
from distill.losses import WeightedSum
from distill.module import DistillationModule
from distill.summary import (
    artifact,
    count_nonzero_parameters,
    count_parameters,
    print_summary,
    weight_sparsity,
)
from distill.teachers import (
    Teacher,
    build_teachers,
    cached_teacher_outputs,
    data_fingerprint,
    ensemble_rule,
    provide_teachers,
    teacher_specs,
    teacher_trainer_factory,
)

log = logging.getLogger(__name__)


# Lightning warns about modules in eval mode when training starts; the frozen teacher is
# exactly that, on purpose.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run the recipe in `cfg`; returns the summary that is also written to summary.json."""
    started = time.perf_counter()
    run_dir = Path(cfg.paths.output_dir)
    ensure_fresh_run_dir(run_dir)
    pl.seed_everything(cfg.seed, workers=True)

    datamodule: ClassificationDataModule = build(cfg.data, "data")
    datamodule.setup("fit")
    loss = WeightedSum(build_named(cfg.loss, "loss"))
    student: nn.Module = build(cfg.student, "student")
    check_fits_data(student, datamodule, "student")
    specs = teacher_specs(cfg) if loss.requires_teacher else {}
    teacher = build_teachers(specs, datamodule, ensemble_rule(cfg)) if specs else None
    use_output_cache, cache_reason = plan_teacher_output_cache(cfg, teacher, datamodule)
    optimizer = build(cfg.optimizer, "optimizer")
    lr_scheduler = build(cfg.lr_scheduler, "lr_scheduler") if cfg.lr_scheduler else None
    # Built before the teacher is trained: it checks every feature tap and sizes the loss
    # terms' adapters and banks (only shapes matter, so an untrained teacher will do), and a
    # shape that cannot be matched stops the run here.
    module = DistillationModule(
        student,
        loss,
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        num_classes=datamodule.num_classes,
        teacher=teacher,
        example_inputs=datamodule.example_input_batch(2),
        num_train_samples=len(datamodule.train_dataset),
    )
    datamodule.return_indices = module.requires_indices or use_output_cache
    callbacks = list(build_named(cfg.callbacks, "callbacks").values())
    pruning: PruningCallback | None = build(cfg.pruning, "pruning") if cfg.get("pruning") else None
    if pruning is not None:
        # Masks go on before anything sees the student, so checkpoint keys never change.
        pruning.attach(student, datamodule.example_input_batch(2))
        callbacks.append(pruning)
    quantization: QuantizationCallback | None = (
        build(cfg.quantization, "quantization") if cfg.get("quantization") else None
    )
    if quantization is not None:
        quantization.resolve_epochs(cfg.trainer.get("max_epochs"))
        # After the masks: a weight is masked first, then quantized.
        quantization.attach(student, datamodule.example_input_batch(2))
        if cfg.get("export", False) and not cfg.trainer.get("fast_dev_run"):
            check_quantization_exportable(quantization, cfg.trainer.get("max_epochs"))
        callbacks.append(quantization)
    loggers = list(build_named(cfg.logger, "logger").values())
    trainer: pl.Trainer = build(
        cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False
    )

    teacher_facts: dict[str, Any] = {}
    teacher_started = time.perf_counter()
    if teacher is not None:
        teacher_facts = provide_teachers(
            teacher,
            specs,
            data_fingerprint(cfg.data),
            seed=cfg.seed,
            trainer_factory=teacher_trainer_factory(cfg.trainer),
            datamodule=datamodule,
            run_dir=run_dir,
        )
    teacher_s = time.perf_counter() - teacher_started
    cache_facts: dict[str, Any] = {"used": False, "reason": cache_reason}
    if use_output_cache and teacher is not None:
        teacher_outputs, cache_facts = cached_teacher_outputs(
            teacher,
            module.teacher_taps,
            datamodule.train_dataset,
            Path(cfg.paths.cache_dir) / "teacher_outputs",
            material={"data": data_fingerprint(cfg.data), "split_seed": cfg.seed},
        )
        module.use_teacher_outputs(teacher_outputs)

    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    # Reseed so the student's run is the same whether the teacher was trained or cached.
    pl.seed_everything(cfg.seed, workers=True)
    fit_started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    fit_s = time.perf_counter() - fit_started

    checkpoint = trainer.checkpoint_callback
    best = checkpoint.best_model_path if isinstance(checkpoint, ModelCheckpoint) else ""
    # Under pruning (or QAT) the best validation score may come from before the final sparsity
    # (or quantization) was reached; the student that counts is the one at the end.
    tested = None if pruning is not None or quantization is not None else best or None
    test_started = time.perf_counter()
    (results,) = trainer.test(module, datamodule=datamodule, ckpt_path=tested)
    test_s = time.perf_counter() - test_started
    if not trainer.is_global_zero:
        return {}

    # The student artifact is plain: effective (masked) weights under the model's own keys,
    # loadable into a freshly built student with no distill code in the way.
    plain_student = bake_into(student, build(cfg.student, "student"))
    student_path = atomic_write(
        run_dir / "student.pt", lambda handle: torch.save(plain_student.state_dict(), handle)
    )
    # The student as trained (masks, fake-quant, observers): what distill-export starts from.
    state_path = atomic_write(
        run_dir / STUDENT_STATE_FILE, lambda handle: torch.save(student.state_dict(), handle)
    )
    save_run_config(cfg, run_dir)
    artifacts = {
        "student": artifact(student_path, run_dir),
        "student_state": artifact(state_path, run_dir),
    }
    if pruning is not None and isinstance(pruning.criterion, ChannelPruning):
        artifacts["slim"] = save_slim(plain_student, datamodule.example_input_batch(2), run_dir)
    if best:
        artifacts["checkpoint_best"] = artifact(Path(best), run_dir)
    if isinstance(checkpoint, ModelCheckpoint) and checkpoint.last_model_path:
        artifacts["checkpoint_last"] = artifact(Path(checkpoint.last_model_path), run_dir)
    # Pruning sparsity: the zeros the masks made. Quantization rounds a few more small weights
    # to zero; those are counted separately.
    quantized_zeros = weight_sparsity(student)[0] if quantization is not None else None
    with quantization.float_weights(student) if quantization else contextlib.nullcontext():
        sparsity_global, sparsity_layers = weight_sparsity(student)
    summary = {
        "seed": cfg.seed,
        "output_dir": str(run_dir),
        "data": {
            "target": cfg.data._target_,
            "num_classes": datamodule.num_classes,
            "input_shape": list(datamodule.input_shape),
        },
        "teacher": None,
        "student": {
            "target": cfg.student._target_,
            "test_acc": results["test/acc"],
            "test_acc_top5": results.get("test/acc_top5"),
            "agreement": results.get("test/agreement"),
            "params_total": count_parameters(plain_student),
            "params_nonzero": count_nonzero_parameters(plain_student),
        },
        "sparsity": {
            "global": sparsity_global,
            "layers": sparsity_layers,
            "global_after_quantization": quantized_zeros,
        },
        "artifacts": artifacts,
        "loss": {name: type(term).__name__ for name, term in loss.terms.items()},
        "timing": {
            "teacher_s": teacher_s,
            "teacher_cache": cache_facts,
            "fit_s": fit_s,
            "test_s": test_s,
            "epochs": trainer.current_epoch,
            "total_s": time.perf_counter() - started,
        },
    }
    if teacher is not None:
        summary["teacher"] = teacher.describe(results["test/teacher_acc"], teacher_facts)
    if quantization is not None:
        summary["quantization"] = quantization.describe()
    atomic_write_json(run_dir / "summary.json", summary)
    export = cfg.get("export", False)
    if export and trainer.fast_dev_run:
        log.info("fast_dev_run: a smoke test, so no deployment export (export=true ignored)")
        export = False
    if export:
        export_started = time.perf_counter()
        run = TrainedRun(cfg, datamodule, student.eval(), quantization)
        export_run(
            run_dir,
            run,
            latency_repeats=cfg.get("export_latency_repeats", 20),
            teacher=teacher,
        )
        summary = json.loads((run_dir / "summary.json").read_text())
        summary["timing"]["export_s"] = time.perf_counter() - export_started
        atomic_write_json(run_dir / "summary.json", summary)
    print_summary(summary)
    return summary


def check_quantization_exportable(
    quantization: QuantizationCallback, max_epochs: int | None
) -> None:
    """Refuse, before training, a QAT setting the int8 export could not use."""
    quantization.check_exportable()
    starts_too_late = max_epochs is not None and 0 < max_epochs <= quantization.start_epoch
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
    mode = cfg.get("teacher_output_cache", "off")
    if mode not in CACHE_MODES:
        raise ConfigError("teacher_output_cache", mode, f"one of {CACHE_MODES}")
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
