"""A run's stages recorded in its status.json as it goes, and how it ended."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from distill.interruption import RunInterrupted, signal_name
from distill.run_state import process_rank, write_state

log = logging.getLogger(__name__)


class Progress:
    """The stage a run is in, written to status.json at every change (by rank 0 alone)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.current = "setup"
        self.writes = process_rank() == 0
        self._write("running")

    def stage(self, name: str) -> None:
        self.current = name
        self._write("running")

    def _write(self, state: str, **facts: Any) -> None:
        if self.writes:
            write_state(self.run_dir, state, self.current, **facts)


@contextlib.contextmanager
def recorded(run_dir: Path) -> Iterator[Progress]:
    """Record the run as running, then as complete, interrupted (with the signal and the
    checkpoint it saved) or failed (with the error); the exception goes on."""
    progress = Progress(run_dir)
    try:
        yield progress
    except RunInterrupted as interrupted:
        checkpoint = interrupted.checkpoint
        write_state(
            run_dir,
            "interrupted",
            progress.current,
            signal=signal_name(interrupted.signum),
            checkpoint=str(checkpoint.relative_to(run_dir)) if checkpoint else None,
        )
        raise
    except BaseException as error:
        write_state(run_dir, "failed", progress.current, error=f"{type(error).__name__}: {error}")
        raise
    write_state(run_dir, "complete", "done")


def export_status(error: BaseException) -> str:
    """summary.json's `status` for a trained run whose export did not finish."""
    return "export_interrupted" if isinstance(error, RunInterrupted) else "export_failed"
