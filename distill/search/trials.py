"""One trial of a search: a `distill-train` process with the trial's overrides, in its own run
directory under the search's, and what it gave.

A trial is a separate process, not a call into the pipeline: it is exactly the run its command
line says (the report prints that line for the user to rerun), a crash or an out-of-memory
kill fails one trial and not the search, and the run directory it leaves is an ordinary one
(`.hydra/`, train.log, summary.json) that distill-report and distill-export read.
"""

from __future__ import annotations

import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.errors import ConfigError
from distill.interruption import stop_process
from distill.run_summary import metric
from distill.search.settings import SearchSettings
from distill.sweep_report.runs import FINISHED, read_run

# What the report shows of a failed trial's output when its job log names no error.
OUTPUT_TAIL_LINES = 20
# How long a stopping search waits for its trial to stop by itself before killing it.
TRIAL_STOP_S = 60.0


@dataclass(frozen=True)
class TrialOutcome:
    """What one trial gave: its objective and budget numbers, or why it has none. With
    `search.seeds` the objective is the mean over the seeds' runs and the budget number the
    largest (the budget must hold for each), and `per_seed` keeps every run's own numbers."""

    run_dir: Path
    seconds: float
    objective: float | None = None
    budget_value: float | None = None
    error: str | None = None
    per_seed: dict[int, dict[str, float | None]] | None = None

    @property
    def finished(self) -> bool:
        return self.error is None


def trial_dir(search_dir: Path, number: int) -> Path:
    return Path(search_dir) / f"trial_{number:03d}"


def trial_command(overrides: Sequence[str], seeds: Sequence[int] | None = None) -> str:
    """The command a user runs to repeat the trial outside the search (a multirun over the
    seeds when the trial averaged several)."""
    if seeds:
        return shlex.join(["distill-train", "-m", *overrides, "seed=" + ",".join(map(str, seeds))])
    return shlex.join(["distill-train", *overrides])


def run_trial(overrides: Sequence[str], run_dir: Path, settings: SearchSettings) -> TrialOutcome:
    """Run the trial's distill-train process(es) into `run_dir` and read their summaries."""
    started = time.perf_counter()
    if not settings.seeds:
        objective, value, error = _run_one(overrides, run_dir, settings)
        seconds = time.perf_counter() - started
        return TrialOutcome(run_dir, seconds, objective, value, error)
    per_seed: dict[int, dict[str, float | None]] = {}
    for seed in settings.seeds:
        objective, value, error = _run_one(
            [*overrides, f"seed={seed}"], run_dir / f"seed_{seed}", settings
        )
        if error is not None:
            seconds = time.perf_counter() - started
            return TrialOutcome(run_dir, seconds, error=f"seed {seed}: {error}")
        per_seed[seed] = {"objective": objective, "budget_value": value}
    objectives = [numbers["objective"] for numbers in per_seed.values()]
    values = [numbers["budget_value"] for numbers in per_seed.values()]
    return TrialOutcome(
        run_dir,
        time.perf_counter() - started,
        objective=statistics.fmean(number for number in objectives if number is not None),
        budget_value=None if settings.budget is None else max(v for v in values if v is not None),
        per_seed=per_seed,
    )


def _run_one(
    overrides: Sequence[str], run_dir: Path, settings: SearchSettings
) -> tuple[float | None, float | None, str | None]:
    """(objective, budget number, error) of one `distill-train overrides` run in `run_dir`."""
    process = subprocess.Popen(
        [sys.executable, "-m", "distill.cli.train", *overrides, f"hydra.run.dir={run_dir}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = process.communicate()
    except BaseException:  # Ctrl+C or SIGTERM to the search: stop its trial before going on
        # Its point runs again in a new trial, so nothing of it has to survive.
        stop_process(process, TRIAL_STOP_S)
        raise
    run = read_run(run_dir, run_dir.parent) if run_dir.is_dir() else None
    if process.returncode != 0 or run is None or run.status != FINISHED:
        reason = (run.error if run is not None else None) or _tail(output)
        return None, None, f"distill-train exited with status {process.returncode}: {reason}"
    summary: dict[str, Any] = run.summary or {}
    try:
        objective = metric(summary, settings.objective)
        budget = settings.budget
        value = None if budget is None else metric(summary, budget.metric)
    except ConfigError as missing:
        return None, None, str(missing)
    return objective, value, None


def _tail(output: str) -> str:
    lines = output.strip().splitlines()
    return "\n".join(lines[-OUTPUT_TAIL_LINES:]) or "(no output)"
