"""Resume in place: `distill-train resume=RUN_DIR` completes the run in RUN_DIR.

Before Hydra starts (`resume_arguments`), the run's own overrides (its `.hydra/overrides.yaml`)
become the command line, with `hydra.run.dir` pointing back at RUN_DIR, and the config they
compose is compared with the one the run saved: a resume never runs a recipe that changed
underneath it. In the task (`resume_point`), the run continues from its newest checkpoint that
loads, or, when training and testing were done and only the export was cut short, redoes the
export. Logs are appended to (CSV, TensorBoard, train.log; the W&B run keeps its id).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from distill.checkpoint_io import newest_valid_checkpoint, remove_partial_writes
from distill.errors import ConfigError
from distill.run_state import process_rank, read_state

log = logging.getLogger(__name__)

RESUME_KEY = "resume"
# Trust is the person's who resumes, never the run directory's: a directory received from
# someone else could name its own module in its saved overrides. The resume command may give
# it again (`distill-train resume=RUN_DIR trusted_targets=[my_pkg]`); the saved one is dropped.
TRUST_KEY = "trusted_targets"
SAVED_OVERRIDES = Path(".hydra") / "overrides.yaml"
SAVED_CONFIG = Path(".hydra") / "config.yaml"


def resume_target(arguments: Sequence[str]) -> str | None:
    """The RUN_DIR of a `resume=RUN_DIR` argument, if there is one."""
    values = [a.split("=", 1)[1] for a in arguments if a.startswith(f"{RESUME_KEY}=")]
    return values[-1] if values else None


def resume_arguments(arguments: Sequence[str]) -> list[str]:
    """The command line that resumes the run named by `resume=RUN_DIR` in `arguments`."""
    target = resume_target(arguments)
    assert target is not None
    trust = [a for a in arguments if a.startswith(f"{TRUST_KEY}=")]
    others = [a for a in arguments if not a.startswith((f"{RESUME_KEY}=", f"{TRUST_KEY}="))]
    if others and process_rank() > 0:
        # A DDP rank that Lightning started with rank 0's command line: the resume is already
        # expanded (and checked) there, and Lightning added the run directory to it.
        return list(arguments)
    if others:
        raise ConfigError(
            RESUME_KEY,
            target,
            f"resume=RUN_DIR alone (and {TRUST_KEY}=[...] if the run needs it): the run's own "
            f"settings are in RUN_DIR/{SAVED_OVERRIDES} (got also {' '.join(others)})",
        )
    run_dir = Path(target).expanduser().resolve()
    saved = run_dir / SAVED_OVERRIDES
    if not saved.is_file() or not (run_dir / SAVED_CONFIG).is_file():
        raise ConfigError(
            RESUME_KEY, target, f"the directory of a distill-train run (it has no {saved.name})"
        )
    check_unfinished(run_dir, target)
    overrides = OmegaConf.load(saved)
    if not isinstance(overrides, Sequence):
        raise ConfigError(RESUME_KEY, target, f"a run whose {SAVED_OVERRIDES} is a list")
    own = [str(o) for o in overrides if not str(o).startswith((f"{RESUME_KEY}=", f"{TRUST_KEY}="))]
    return [*own, *trust, f"{RESUME_KEY}={run_dir}", f"hydra.run.dir={run_dir}"]


def check_unfinished(run_dir: Path, shown: str) -> None:
    state = read_state(run_dir)
    finished = (
        state["state"] == "complete" if state is not None else (run_dir / "summary.json").is_file()
    )
    if finished:
        raise ConfigError(
            RESUME_KEY, shown, "a run that did not finish (this one is complete: status.json)"
        )


def check_config_unchanged(composed: DictConfig, run_dir: Path) -> None:
    """Refuse a resume whose configs compose to something other than what the run saved (the
    project's conf/ or a recipe changed since): name the first key that differs."""
    saved = OmegaConf.load(run_dir / SAVED_CONFIG)
    ours = OmegaConf.to_container(composed, resolve=False)
    theirs = OmegaConf.to_container(saved, resolve=False)
    for container in (ours, theirs):
        assert isinstance(container, dict)
        container.pop(RESUME_KEY, None)
        container.pop(TRUST_KEY, None)
    difference = first_difference(theirs, ours)
    if difference is not None:
        key, before, now = difference
        raise ConfigError(
            RESUME_KEY,
            str(run_dir),
            f"a run whose recipe is unchanged: {key} was {before!r} when it ran and composes "
            f"to {now!r} now (the configs changed; start a new run)",
        )


def first_difference(before: Any, now: Any, prefix: str = "") -> tuple[str, Any, Any] | None:
    if isinstance(before, dict) and isinstance(now, dict):
        for key in [*before, *(k for k in now if k not in before)]:
            if key not in before or key not in now:
                return f"{prefix}{key}", before.get(key, "<absent>"), now.get(key, "<absent>")
            found = first_difference(before[key], now[key], f"{prefix}{key}.")
            if found is not None:
                return found
        return None
    return None if before == now else (prefix.rstrip("."), before, now)


@dataclass(frozen=True)
class ResumePoint:
    """Where a resumed run continues: its newest checkpoint (None: none was saved, so from
    where it first started), or only the export."""

    checkpoint: Path | None
    export_only: bool = False


def fit_checkpoint(cfg: DictConfig, resume: ResumePoint | None) -> str | None:
    """What the fit starts from: a resumed run's own newest checkpoint, else the run's
    `ckpt_path` (null: from scratch)."""
    if resume is not None and resume.checkpoint is not None:
        return str(resume.checkpoint)
    ckpt_path = cfg.get("ckpt_path")
    return None if ckpt_path is None else str(ckpt_path)


def resume_point(cfg: DictConfig, run_dir: Path, requeued: bool = False) -> ResumePoint | None:
    """Where a run continues: one with `resume` set, or with
    `requeued`, a SLURM job started again in its own directory. None for a run that is
    neither."""
    target = cfg.get(RESUME_KEY)
    if target is None and not requeued:
        return None
    if target is not None and Path(str(target)).resolve() != run_dir.resolve():
        raise ConfigError(
            RESUME_KEY, target, f"this run's own directory ({run_dir}): use resume=RUN_DIR alone"
        )
    check_unfinished(run_dir, str(target or run_dir))
    for path in remove_partial_writes(run_dir):
        log.info("Removed %s, a checkpoint write that was cut short", path)
    state = read_state(run_dir) or {}
    trained = (run_dir / "summary.json").is_file() and (run_dir / "student_state.pt").is_file()
    if state.get("stage") == "export" and trained:
        log.info("Resuming %s: training and test are done; redoing the export", run_dir)
        return ResumePoint(None, export_only=True)
    checkpoint = newest_valid_checkpoint(run_dir)
    if checkpoint is None:
        # Stopped before its first checkpoint: it starts again as it started the first time.
        start = cfg.get("ckpt_path") or "the beginning"
        log.info("Resuming %s: it saved no checkpoint, so it starts again from %s", run_dir, start)
    else:
        log.info("Resuming %s from %s", run_dir, checkpoint)
    return ResumePoint(checkpoint)
