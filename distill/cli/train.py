"""`distill-train`: compose conf/train.yaml with the command line's overrides and run it."""

from __future__ import annotations

import logging
import shlex
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from distill.config import CONF_DIR, compose_train
from distill.errors import ConfigError, ExportError, TrainingDiverged
from distill.run_dir_guard import RunDirGuard

log = logging.getLogger("distill")

# The run directory main() resolved and checked before Hydra's app made it (None for a
# multirun): a run refused in the task removes it again, so a refusal leaves nothing behind.
_run_dir_guard: RunDirGuard | None = None


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def _train(cfg: DictConfig) -> float | None:
    """The Hydra task: run the recipe, return its `optimized_metric` (what sweepers optimize)."""
    # Imported here so that `--help` and `--cfg job` answer without loading torch.
    from distill.interruption import RunInterrupted, signal_name
    from distill.pipeline import train
    from distill.run_state import resume_command
    from distill.run_summary import metric
    from distill.teachers import MissingTeacherError
    from distill.trust import trusted_targets, trusting

    try:
        apply_when_missing(cfg)
        # Only this job's command line extends the allowlist (distill.trust), never a file.
        with trusting(trusted_targets(cfg, job_overrides())):
            summary = train(cfg, job_overrides())
    except MissingTeacherError as error:
        log.error("Configuration error: %s", error)
        log.error("Train the teacher with: %s", teacher_command())
        sys.exit(2)
    except ConfigError as error:
        log.error("Configuration error: %s", error)
        if _run_dir_guard is not None and _run_dir_guard.discard_if_untouched():
            log.info("Nothing was run; %s removed", _run_dir_guard.path)
        sys.exit(2)
    except RunInterrupted as interrupted:
        run_dir = cfg.paths.output_dir
        log.error(
            "Interrupted by %s; continue with: %s",
            signal_name(interrupted.signum),
            resume_command(run_dir),
        )
        sys.exit(interrupted.exit_status)
    except ExportError as error:
        # Training finished and its outputs are kept; only the export is missing.
        log.error("Export failed, no deployment artifact was kept: %s", error)
        sys.exit(1)
    except TrainingDiverged as error:
        # A failed run (exit 1), not a refused setting (2): the settings were valid, and only
        # training showed them unstable. An expected failure: one line, no traceback.
        log.error("Training diverged: %s", error)
        sys.exit(1)
    except Exception:
        # Hydra prints a crash's traceback to the terminal only; the job log keeps it too, so a
        # failed run of a sweep says why (distill-report reads it from there).
        log.exception("Run failed")
        raise
    key = cfg.get("optimized_metric")
    # Ranks other than 0 of a DDP run return no summary, and have nothing to report.
    return metric(summary, key) if key and summary else None


def apply_when_missing(cfg: DictConfig) -> None:
    """Replace `teacher.when_missing` by the policy this job applies: only here can Hydra say
    whether the run is a job of a multirun submitted to SLURM (see distill.teachers.missing)."""
    from distill.cluster import is_slurm_sweep_job
    from distill.teachers import resolve_when_missing

    # Not initialized when the task is called directly (tests): not a SLURM job then.
    hydra = HydraConfig.get() if HydraConfig.initialized() else None
    slurm_job = hydra is not None and is_slurm_sweep_job(hydra.mode, hydra.launcher._target_)
    with open_dict(cfg):
        setting = cfg.teacher.get("when_missing", "auto")
        cfg.teacher.when_missing = resolve_when_missing(setting, slurm_sweep_job=slurm_job)


def job_overrides() -> list[str]:
    """This job's own overrides (a sweep's job gets its own values), or none when the task is
    called directly (tests)."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def teacher_command() -> str:
    """The `distill-teacher` command with this job's own overrides (the sweep's included:
    student-side settings do not change a teacher's cache key)."""
    if not HydraConfig.initialized():
        return "distill-teacher <the same overrides>"
    return shlex.join(["distill-teacher", *job_overrides()])


def main() -> None:
    if not CONF_DIR.is_dir():
        sys.exit(
            f"distill-train: no configs at {CONF_DIR}; install from a clone with pip install -e ."
        )
    global _run_dir_guard
    try:
        arguments, _run_dir_guard = prepare_arguments(sys.argv[1:])
    except ConfigError as error:
        print(f"distill-train: {error}", file=sys.stderr)
        sys.exit(2)
    sys.argv = [sys.argv[0], *arguments]
    _train()


def prepare_arguments(arguments: list[str]) -> tuple[list[str], RunDirGuard | None]:
    """Everything checked before Hydra's app writes a file: the overrides compose, a resume's
    run and config are its own, the run directory holds no other run. Returns the command line
    Hydra gets (a resume's saved overrides; the run directory pinned) and the directory."""
    from distill.overrides import check_overrides_compose
    from distill.recipe import check_recipe_overrides
    from distill.resume import check_config_unchanged, resume_arguments, resume_target

    resuming = resume_target(arguments) is not None
    if resuming:
        arguments = resume_arguments(arguments)
    check_recipe_overrides(arguments)
    check_overrides_compose(arguments)
    guard = RunDirGuard.plan(arguments, resuming=resuming)
    if resuming and guard is not None:
        check_config_unchanged(compose_train(arguments, placeholder=False), guard.path)
    if guard is not None and not any(a.startswith("hydra.run.dir=") for a in arguments):
        arguments = [*arguments, guard.pinned]
    return arguments, guard


if __name__ == "__main__":
    main()
