"""A run directory's state, in `status.json`: what a scheduler, a report or a resume reads to
know whether the run finished.

`summary.json` says what a run measured; it is written when training is done, also when the
export after it then fails or is interrupted, so its presence alone never meant "complete".
`status.json` is written (atomically) when the run starts and at every change of stage, so a
run killed by anything but SIGKILL says where it stopped and how to continue.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from distill.cluster.requeue import hpc_checkpoints, slurm_restart_count
from distill.errors import ConfigError
from distill.files import atomic_write_json

log = logging.getLogger(__name__)

STATUS_FILE = "status.json"
STATES = ("running", "interrupted", "failed", "complete")
# The stages of a run, in order; `export` comes after `summary.json` is first written.
STAGES = ("setup", "baseline", "teacher", "fit", "test", "export", "done")


# Where a process learns its rank before any trainer exists, in Lightning's order
# (lightning_fabric.utilities.rank_zero._get_rank): Lightning's DDP launcher starts ranks 1..N-1
# by running the same command again with LOCAL_RANK set; torchrun and srun set the others.
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def process_rank(environ: Mapping[str, str] | None = None) -> int:
    """This process's global rank as its launcher set it (0 when none did). Rank 0 owns the
    run directory: it checks it, and it alone writes status.json."""
    environ = os.environ if environ is None else environ
    for key in RANK_VARIABLES:
        value = environ.get(key)
        if value is not None:
            return int(value) if value.isdigit() else 0
    return 0


def resume_command(run_dir: Path) -> str:
    return shlex.join(["distill-train", f"resume={run_dir}"])


def write_state(run_dir: Path, state: str, stage: str, **facts: Any) -> dict[str, Any]:
    """Record `state` at `stage` (plus facts: the signal, the checkpoint, the error)."""
    if state not in STATES or stage not in STAGES:
        raise ValueError(f"unknown run state {state!r} at stage {stage!r}")
    payload: dict[str, Any] = {"state": state, "stage": stage, **facts}
    if state in ("interrupted", "failed"):
        payload["resume"] = resume_command(run_dir)
    payload["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    atomic_write_json(Path(run_dir) / STATUS_FILE, payload)
    return payload


def read_state(run_dir: Path) -> dict[str, Any] | None:
    """The run's recorded state; None when it has none (not a run, or one from before
    status.json existed: then a summary.json means it finished)."""
    path = Path(run_dir) / STATUS_FILE
    try:
        state = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return state if isinstance(state, dict) and state.get("state") in STATES else None


def is_complete(run_dir: Path) -> bool:
    """Whether the run in `run_dir` finished everything it was asked to do."""
    state = read_state(run_dir)
    if state is None:
        return (Path(run_dir) / "summary.json").is_file()
    return bool(state["state"] == "complete")


def ensure_fresh_run_dir(run_dir: Path, environ: Mapping[str, str] | None = None) -> None:
    """A run never writes into another run's directory, with two exceptions that continue the
    run there: a resume (`resume=RUN_DIR`, which does not call this), and a SLURM job requeued
    into its own unfinished run (`requeued_into`). A finished run is never continued."""
    if requeued_into(run_dir, environ):
        return
    finished = is_complete(run_dir)
    if finished or holds_run(run_dir):
        raise ConfigError("hydra.run.dir", str(run_dir), fresh_dir_hint(run_dir, finished))


def requeued_into(run_dir: Path, environ: Mapping[str, str] | None = None) -> bool:
    """Whether this job was requeued by SLURM (SLURM_RESTART_COUNT > 0 in `environ`, by
    default the process's) into its own run directory, which holds an unfinished run: after a
    SIGUSR1 (Lightning's hpc checkpoint) or a preemption's SIGTERM (interrupted.ckpt)."""
    restarted = slurm_restart_count(os.environ if environ is None else environ) >= 1
    return restarted and not is_complete(run_dir) and holds_run(run_dir)


def holds_run(run_dir: Path) -> bool:
    """Whether `run_dir` holds (part of) an earlier run: its state, summary or checkpoints."""
    return (
        (run_dir / STATUS_FILE).exists()
        or (run_dir / "summary.json").exists()
        or any((run_dir / "checkpoints").glob("*.ckpt"))
        or bool(hpc_checkpoints(run_dir))
    )


def fresh_dir_hint(run_dir: Path, finished: bool) -> str:
    allowed = "a directory that holds no earlier run"
    if finished:
        return f"{allowed} (this one holds a finished run)"
    resume = resume_command(run_dir)
    return f"{allowed} (this one holds an unfinished run: continue it with {resume})"
