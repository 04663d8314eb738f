"""One distillation run: build, fit, test, export, write `summary.json` once.

Everything the user configured is built and checked first (`assembly.assemble`), so a bad
setting fails in seconds, before any teacher is trained or any file is written as if the run
succeeded. The return value is the summary; `distill-train` returns its `optimized_metric` to
Hydra, so sweepers (Optuna) can optimize it.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from lightning_fabric.plugins.environments import SLURMEnvironment
from omegaconf import OmegaConf

from distill.assembly import AssembledRun, assemble, check_run_settings
from distill.baseline import baseline_facts, train_baseline, wants_baseline
from distill.checkpoint_io import CHECKPOINT_DIR
from distill.checks import torch_threads
from distill.cluster.requeue import retire_hpc_checkpoints
from distill.deploy.artifacts import export_run, produce_artifacts
from distill.deploy.run_dir import TrainedRun
from distill.interruption import INTERRUPTED_CHECKPOINT, Interruption
from distill.resume import fit_checkpoint, resume_point
from distill.run_outputs import best_checkpoint_to_test, save_student, sparsity_facts, student_facts
from distill.run_progress import Progress, export_status, recorded
from distill.run_state import ensure_fresh_run_dir, process_rank, requeued_into
from distill.run_summary import RunSummary, check_metric_key, read_summary
from distill.summary import print_summary
from distill.teachers import (
    cached_teacher_outputs,
    data_fingerprint,
    provide_teachers,
    teacher_compute,
    teacher_trainer_factory,
    when_missing_of,
)

log = logging.getLogger(__name__)

# Lightning warns about modules in eval mode when training starts; the frozen teacher is
# exactly that, on purpose.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training")


def train(cfg: Any, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Run the recipe in `cfg`; returns the summary that is also written to summary.json.

    `overrides`, the command line's, are checked for what composing `cfg` hid (a group list
    that names an option twice)."""
    with torch_threads(cfg.get("threads")):
        return _run(cfg, overrides)


def _run(cfg: Any, overrides: Sequence[str]) -> dict[str, Any]:
    run_dir = Path(cfg.paths.output_dir)
    resume = resume_point(cfg, run_dir, requeued=requeued_into(run_dir))
    check_run_settings(cfg, overrides)
    if resume is None and process_rank() == 0:  # other DDP ranks join rank 0's directory
        ensure_fresh_run_dir(run_dir)
    if resume is not None and resume.export_only:
        return _export_only(cfg, run_dir)
    pl.seed_everything(cfg.seed, workers=True)
    run = assemble(cfg)
    check_metric_key(cfg.get("optimized_metric"), run.exports)
    interruption = Interruption()
    fit_from = fit_checkpoint(cfg, resume)
    with interruption.installed(slurm_requeue(run.trainer)), recorded(run_dir) as progress:
        return _train_and_export(run, fit_from, interruption, progress)


def _train_and_export(
    run: AssembledRun, fit_from: str | None, interruption: Interruption, progress: Progress
) -> dict[str, Any]:
    """Teacher, fit (from `fit_from`: a checkpoint, or None for the start), test, student files,
    summary.json, export: the run's work, its stages recorded in `progress`."""
    cfg = run.cfg
    timing = Stopwatch()
    run_dir = Path(cfg.paths.output_dir)
    # Before this run's teacher and fit, which reseed: the run is the same with or without.
    if wants_baseline(cfg, run.teacher is not None):
        progress.stage("baseline")
        baseline = train_baseline(cfg, train)
    else:
        baseline = None

    progress.stage("teacher")
    with timing("teacher_s"):
        teacher = provide_teacher(run)
    cache_facts = use_teacher_output_cache(run)
    for logger in run.loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    # Reseed so the student's run is the same whether the teacher was trained or cached.
    pl.seed_everything(cfg.seed, workers=True)
    progress.stage("fit")
    # weights_only=True: Lightning's default unpickles a remote (http) checkpoint whole, and
    # a checkpoint named by a config may come from anyone.
    with timing("fit_s"), interruption.fitting(run.trainer):
        run.trainer.fit(
            run.module,
            datamodule=run.datamodule,
            ckpt_path=fit_from,
            weights_only=True,
        )
    # A fit resumed after a SLURM requeue is done with its hpc checkpoints; under SLURM the
    # test below would otherwise load them instead of the trained weights.
    retire_hpc_checkpoints(run.trainer, run_dir)
    # Likewise a stop's checkpoint, once the fit it was saved for has ended.
    (run_dir / CHECKPOINT_DIR / INTERRUPTED_CHECKPOINT).unlink(missing_ok=True)
    progress.stage("test")
    with timing("test_s"):
        (results,) = run.trainer.test(
            run.module,
            datamodule=run.datamodule,
            ckpt_path=best_checkpoint_to_test(run),
            weights_only=True,
        )
    if not run.trainer.is_global_zero:
        return {}

    quantization = run.compression.quantization
    trained = TrainedRun.from_student(cfg, run.datamodule, run.student, quantization, run.teacher)
    artifacts = save_student(run, trained, run_dir)
    summary = RunSummary(
        seed=cfg.seed,
        output_dir=str(run_dir),
        data={
            "target": cfg.data._target_,
            "num_classes": run.datamodule.num_classes,
            "input_shape": list(run.datamodule.input_shape),
        },
        teacher=(
            run.teacher.describe(results["test/teacher_acc"], teacher)
            if run.teacher is not None and teacher is not None
            else None
        ),
        student=student_facts(results, trained.plain, cfg.student._target_),
        sparsity=sparsity_facts(run),
        artifacts=artifacts,
        loss={name: type(term).__name__ for name, term in run.loss.terms.items()},
        timing=timing.seconds,  # the stopwatch's own dict: the export's time lands in it too
    )
    summary.timing.update(teacher_cache=cache_facts, epochs=run.trainer.current_epoch)
    summary.quantization = quantization.describe() if quantization is not None else None
    progress.stage("export")
    try:
        if run.exports:
            with timing("export_s"):
                repeats = cfg.get("export_latency_repeats", 20)
                entries, summary.deployment, summary.deployment_recommendation = produce_artifacts(
                    trained, run_dir, repeats
                )
            summary.artifacts.update(entries)
    except BaseException as error:
        # The trained run is kept, and says that its export is missing and why.
        summary.status = export_status(error)
        raise
    finally:
        if baseline is not None:
            summary.baseline = baseline_facts(summary.to_dict(), baseline)
        summary.timing["total_s"] = timing.total()
        summary.write(run_dir)
    if cfg.get("export", False) and not run.exports:
        log.info("fast_dev_run: a smoke test, so no deployment export (export=true ignored)")
    print_summary(summary.to_dict())
    return summary.to_dict()


def _export_only(cfg: Any, run_dir: Path) -> dict[str, Any]:
    """A resumed run whose training and test finished: only its export is redone."""
    interruption = Interruption()
    with interruption.installed(slurm_requeue=False), recorded(run_dir) as progress:
        progress.stage("export")
        export_run(run_dir, latency_repeats=cfg.get("export_latency_repeats", 20))
    summary = read_summary(run_dir)
    print_summary(summary)
    return summary


def slurm_requeue(trainer: pl.Trainer) -> bool:
    """Whether Lightning requeues this run itself on SIGUSR1 (SLURM, auto-requeue on)."""
    environment = trainer._accelerator_connector.cluster_environment
    return isinstance(environment, SLURMEnvironment) and bool(environment.auto_requeue)


def provide_teacher(run: AssembledRun) -> dict[str, Any] | None:
    """Trained weights for the run's teacher(s); facts about them, or None without a teacher."""
    if run.teacher is None:
        return None
    cfg = run.cfg
    return provide_teachers(
        run.teacher,
        run.teacher_specs,
        data_fingerprint(cfg.data, run.datamodule),
        seed=cfg.seed,
        compute=teacher_compute(cfg.trainer),
        trainer_factory=teacher_trainer_factory(cfg.trainer),
        datamodule=run.datamodule,
        run_dir=Path(cfg.paths.output_dir),
        when_missing=when_missing_of(cfg),
    )


def use_teacher_output_cache(run: AssembledRun) -> dict[str, Any]:
    """Compute the teacher's outputs once when the plan says so; facts for summary.json."""
    if not run.use_output_cache or run.teacher is None:
        return {"used": False, "reason": run.output_cache_reason}
    cfg = run.cfg
    outputs, facts = cached_teacher_outputs(
        run.teacher,
        run.module.teacher_taps,
        run.datamodule.train_dataset,
        Path(cfg.paths.cache_dir) / "teacher_outputs",
        material={"data": data_fingerprint(cfg.data, run.datamodule), "split_seed": cfg.seed},
    )
    run.module.use_teacher_outputs(outputs)
    return facts


class Stopwatch:
    """Wall time of a run's stages, by name, for summary.json's `timing`."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = time.perf_counter() - started

    def total(self) -> float:
        return time.perf_counter() - self.started
