"""One trial of a search: a `distill-train` process with the trial's overrides, in its own run
directory under the search's, and what it gave.

A trial is a separate process, not a call into the pipeline: it is exactly the run its command
line says (the report prints that line for the user to rerun), a crash or an out-of-memory
kill fails one trial and not the search, and the run directory it leaves is an ordinary one
(`.hydra/`, train.log, summary.json) that distill-report and distill-export read.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.errors import ConfigError
from distill.run_summary import metric
from distill.search.settings import SearchSettings
from distill.sweep_report.runs import FINISHED, read_run

# What the report shows of a failed trial's output when its job log names no error.
OUTPUT_TAIL_LINES = 20


@dataclass(frozen=True)
class TrialOutcome:
    """What one trial's run gave: its objective and budget numbers, or why it has none."""

    run_dir: Path
    seconds: float
    objective: float | None = None
    budget_value: float | None = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.error is None


def trial_dir(search_dir: Path, number: int) -> Path:
    return Path(search_dir) / f"trial_{number:03d}"


def trial_command(overrides: Sequence[str]) -> str:
    """The command a user runs to repeat the trial outside the search."""
    return shlex.join(["distill-train", *overrides])


def run_trial(overrides: Sequence[str], run_dir: Path, settings: SearchSettings) -> TrialOutcome:
    """Run `distill-train overrides` into `run_dir`; read its summary.json."""
    started = time.perf_counter()
    process = subprocess.run(
        [sys.executable, "-m", "distill.cli.train", *overrides, f"hydra.run.dir={run_dir}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seconds = time.perf_counter() - started
    run = read_run(run_dir, run_dir.parent) if run_dir.is_dir() else None
    if process.returncode != 0 or run is None or run.status != FINISHED:
        reason = (run.error if run is not None else None) or _tail(process.stdout)
        error = f"distill-train exited with status {process.returncode}: {reason}"
        return TrialOutcome(run_dir, seconds, error=error)
    summary: dict[str, Any] = run.summary or {}
    try:
        objective = metric(summary, settings.objective)
        budget = settings.budget
        value = None if budget is None else metric(summary, budget.metric)
    except ConfigError as missing:
        return TrialOutcome(run_dir, seconds, error=str(missing))
    return TrialOutcome(run_dir, seconds, objective=objective, budget_value=value)


def _tail(output: str) -> str:
    lines = output.strip().splitlines()
    return "\n".join(lines[-OUTPUT_TAIL_LINES:]) or "(no output)"
