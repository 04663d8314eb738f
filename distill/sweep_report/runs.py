"""The runs under a folder: each one's overrides, and its summary or why it has none.

A run is a directory with a `summary.json` (finished: distill/pipeline.py writes it once, at
the end) or a `.hydra/` folder (Hydra made it, so the job started). A started run without a
summary either failed, and its error is in its job log (`<hydra.job.name>.log`) or, under the
submitit launcher, in the job's stderr file `<sweep>/.submitit/<job id>/*_log.err`; or it shows
no error, and is still running or was killed without a word.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from distill.run_state import read_state
from distill.run_summary import SUMMARY_FILE

FINISHED = "ok"
FAILED = "failed"
INTERRUPTED = "interrupted"
NO_SUMMARY = "no summary (running or killed)"

# An error is the end of a traceback, not the whole of one: the last lines name the exception.
ERROR_LINES = 15

# Hydra's job log format: `[2026-12-02 21:28:49,872][distill][ERROR] - message`; the lines
# after a record (a traceback from log.exception) belong to it.
_RECORD = re.compile(r"^\[[^\]]*\]\[[^\]]*\]\[(DEBUG|INFO|WARNING|ERROR|CRITICAL)\] - ")
_TRACEBACK = "Traceback (most recent call last):"
# What a cluster's stderr says when it kills a job (slurmstepd: error: *** JOB 1 CANCELLED ...,
# oom-kill) or a program fails without a traceback.
_STDERR_ERROR = re.compile(r"error|exception|killed|cancelled|oom", re.IGNORECASE)


@dataclass(frozen=True)
class Run:
    """One run directory and what it says about itself."""

    path: Path
    rel: str  # relative to the folder searched, POSIX-style ("." for that folder itself)
    overrides: tuple[str, ...]
    status: str  # FINISHED, FAILED, INTERRUPTED or NO_SUMMARY
    summary: dict[str, Any] | None
    error: str | None


def find_runs(root: Path) -> list[Run]:
    """Every run under `root` (itself included), sorted by directory with numbers as numbers."""
    root = Path(root)
    runs = []
    for current, dirs, files in os.walk(root):
        path = Path(current)
        if SUMMARY_FILE in files or ".hydra" in dirs:
            runs.append(read_run(path, root))
            dirs[:] = []  # a run's own folders (export/, checkpoints/) hold no runs
            continue
        # .submitit/, .hydra/ of a non-run and the like hold no runs either.
        dirs[:] = sorted(name for name in dirs if not name.startswith("."))
    return sorted(runs, key=lambda run: _natural_key(run.rel))


def read_run(path: Path, root: Path) -> Run:
    """The run at `path`, found under `root` (where its sweep's .submitit/ may be)."""
    rel = path.relative_to(root).as_posix() or "."
    overrides = _overrides(path)
    state = read_state(path)
    if state is not None and state["state"] == "interrupted":
        said = f"interrupted by {state.get('signal')} during {state['stage']}"
        return Run(path, rel, overrides, INTERRUPTED, None, f"{said}; {state.get('resume')}")
    summary_path = path / SUMMARY_FILE
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text())
        except (OSError, ValueError) as unreadable:
            message = f"{SUMMARY_FILE} is unreadable: {unreadable}"
            return Run(path, rel, overrides, FAILED, None, message)
        if isinstance(summary, dict) and summary.get("status", "complete") != "complete":
            # Trained and tested, but its export failed: the job log says why.
            why = _job_error(path, root) or f"status {summary['status']}"
            return Run(path, rel, overrides, FAILED, None, why)
        if isinstance(summary, dict):
            return Run(path, rel, overrides, FINISHED, summary, None)
        return Run(path, rel, overrides, FAILED, None, f"{SUMMARY_FILE} is not a JSON object")
    error = _job_error(path, root)
    return Run(path, rel, overrides, FAILED if error else NO_SUMMARY, None, error)


def log_error(text: str) -> str | None:
    """The last ERROR or CRITICAL record of a Hydra job log (with its traceback), else the end
    of the last traceback in it, else None."""
    records: list[list[str]] = []
    levels: list[str | None] = []
    for line in text.splitlines():
        match = _RECORD.match(line)
        if match or not records:
            records.append([line])
            levels.append(match.group(1) if match else None)
        else:
            records[-1].append(line)
    for record, level in zip(reversed(records), reversed(levels), strict=True):
        if level in ("ERROR", "CRITICAL"):
            # The message without the record's time, logger and level prefix.
            return _tail([_RECORD.sub("", record[0], count=1), *record[1:]])
    return _traceback_tail(text)


def stderr_error(text: str) -> str | None:
    """What a job's stderr says went wrong: its last traceback, else its last error lines."""
    traceback = _traceback_tail(text)
    if traceback:
        return traceback
    lines = [line.strip() for line in text.splitlines() if _STDERR_ERROR.search(line)]
    return "\n".join(lines[-5:]) or None


def _tail(lines: list[str]) -> str:
    lines = [line.rstrip() for line in lines]
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines[-ERROR_LINES:])


def _traceback_tail(text: str) -> str | None:
    start = text.rfind(_TRACEBACK)
    return None if start < 0 else _tail(text[start:].splitlines())


def _job_error(path: Path, root: Path) -> str | None:
    hydra = _hydra_job(path)
    name = hydra.get("name")
    logs = sorted(path.glob("*.log"), key=lambda log: (log.stem != name, log.name))
    for log in logs:
        error = log_error(_read(log))
        if error:
            return error
    job_id = hydra.get("id")
    if not job_id:
        return None
    # The launcher's submitit_folder is `${hydra.sweep.dir}/.submitit/%j` by default: look in
    # the run's parent folders up to the one searched.
    for folder in [path, *path.parents]:
        for err in sorted((folder / ".submitit" / str(job_id)).glob("*_log.err")):
            error = stderr_error(_read(err))
            if error:
                return error
        if folder == root or root not in folder.parents:
            break
    return None


def _hydra_job(path: Path) -> dict[str, Any]:
    """`hydra.job` of the run's .hydra/hydra.yaml (name: the log's stem; id: submitit's job)."""
    try:
        loaded = yaml.safe_load(_read(path / ".hydra" / "hydra.yaml"))
        job = loaded["hydra"]["job"]
    except (yaml.YAMLError, KeyError, TypeError):
        return {}
    return job if isinstance(job, dict) else {}


def _overrides(path: Path) -> tuple[str, ...]:
    try:
        loaded = yaml.safe_load(_read(path / ".hydra" / "overrides.yaml"))
    except yaml.YAMLError:
        return ()
    return tuple(str(item) for item in loaded) if isinstance(loaded, list) else ()


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _natural_key(text: str) -> list[tuple[int, int | str]]:
    """`2` before `10`: digits compare as numbers."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", text)]
