"""`distill-train`: compose conf/train.yaml with the command line's overrides and run it."""

from __future__ import annotations

import logging
import shlex
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from distill.config import CONF_DIR
from distill.errors import ConfigError, ExportError, TrainingDiverged

log = logging.getLogger("distill")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def _train(cfg: DictConfig) -> float | None:
    """The Hydra task: run the recipe, return its `optimized_metric` (what sweepers optimize)."""
    # Imported here so that `--help` and `--cfg job` answer without loading torch.
    from distill.pipeline import train
    from distill.run_summary import metric
    from distill.teachers import MissingTeacherError

    try:
        apply_when_missing(cfg)
        summary = train(cfg, job_overrides())
    except MissingTeacherError as error:
        log.error("Configuration error: %s", error)
        log.error("Train the teacher with: %s", teacher_command())
        sys.exit(2)
    except ConfigError as error:
        log.error("Configuration error: %s", error)
        sys.exit(2)
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
    from distill.overrides import check_overrides_compose
    from distill.recipe import check_recipe_overrides

    try:
        check_recipe_overrides(sys.argv[1:])
        check_overrides_compose(sys.argv[1:])
    except ConfigError as error:
        print(f"distill-train: {error}", file=sys.stderr)
        sys.exit(2)
    _train()


if __name__ == "__main__":
    main()
