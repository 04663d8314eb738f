"""SIGTERM, SIGUSR1 and Ctrl+C (SIGINT) end a run with a checkpoint at the current step, its
state recorded as interrupted, and a non-zero exit status: a scheduler that preempts a run must
not record it as a success, and the run must be resumable in place (`distill-train
resume=RUN_DIR`).

Lightning, during a fit, turns SIGTERM into a `SIGTERMException` at the next step boundary
(the step in flight finishes, so the state is consistent) and the process then exits with
status 0: the exception is a `SystemExit` without a code. Here:
- while the student trains, either signal asks the trainer to stop at the next boundary, where
  `InterruptCheckpoint` saves `checkpoints/interrupted.ckpt` (at the end of the last finished
  step, the point Lightning's step checkpoints resume from exactly);
- anywhere else (the teacher's training, the test, the export) there is no student step to
  finish, so the signal raises `RunInterrupted` at once;
- under SLURM with Lightning's auto-requeue, SIGUSR1 stays Lightning's (it saves an hpc
  checkpoint and requeues the job; SLURM's SIGTERM that follows ends it as above);
- Ctrl+C is handled like SIGTERM rather than left to Lightning, which stops the fit without a
  checkpoint and exits 1; a second Ctrl+C while the run is stopping does not wait for the step:
  the run ends interrupted at once, with the checkpoints it has.

Under DDP a signal may reach one rank only (`kill` of rank 0, a scheduler's signal to one
task), and a rank that stops alone leaves the others waiting in a collective forever (measured:
SIGUSR1 to rank 0 hung the run). So the ranks agree: a signal only marks its rank, every rank
all-reduces the marks at the end of every training step, and all stop (and save) together at
the first boundary after any was signalled. Lightning's own SIGTERM handler is set aside for
the fit: it broadcasts from inside the handler, a collective the other ranks are not in.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)

INTERRUPTED_CHECKPOINT = "interrupted.ckpt"


class RunInterrupted(Exception):
    """The run was told to stop by a signal; it saved what it could."""

    def __init__(self, signum: int, checkpoint: Path | None = None) -> None:
        self.signum = signum
        self.checkpoint = checkpoint
        super().__init__(f"interrupted by {signal_name(signum)}")

    @property
    def exit_status(self) -> int:
        # The shell's status for "ended by signal N", so schedulers and scripts see the cause.
        return 128 + self.signum


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class Interruption:
    """The signals a run handles, and what each does at the moment it arrives."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.fit_trainer: pl.Trainer | None = None  # the student's trainer, while it fits

    @property
    def distributed(self) -> bool:
        """A fit of several processes is running: a signal stops it once the ranks agree."""
        return self.fit_trainer is not None and self.fit_trainer.world_size > 1

    def handle(self, signum: int, frame: FrameType | None) -> None:
        first = self.signum is None
        if not first and signum == signal.SIGINT:
            # Ctrl+C again: the user will not wait for the step in flight. Raised mid-step, so
            # no checkpoint of this moment; one saved at a step boundary since is kept.
            trainer = self.fit_trainer
            raise RunInterrupted(signum, interrupted_checkpoint(trainer) if trainer else None)
        if first:  # the signal that started the stop is the one recorded
            self.signum = signum
        if self.fit_trainer is not None:
            if first:
                log.warning(
                    "%s: stopping after the current step%s",
                    signal_name(signum),
                    " (Ctrl+C again to stop at once)" if signum == signal.SIGINT else "",
                )
            if not self.distributed:
                # Lightning sets this itself for SIGTERM; the others get the same treatment.
                self.fit_trainer._signal_connector.received_sigterm = True
            return
        if first:
            raise RunInterrupted(signum)

    @contextlib.contextmanager
    def fitting(self, trainer: pl.Trainer) -> Iterator[None]:
        """While the student trains: stop at the next step boundary, with a checkpoint."""
        self.fit_trainer = trainer
        for callback in trainer.callbacks:  # type: ignore[attr-defined]
            if isinstance(callback, InterruptCheckpoint):
                callback.interruption = self
        try:
            yield
        except SystemExit as error:  # Lightning's SIGTERMException, status 0
            if self.signum is None:
                raise
            raise RunInterrupted(self.signum, interrupted_checkpoint(trainer)) from error
        finally:
            self.fit_trainer = None
        if self.signum is not None:  # arrived after the last step: the fit is complete
            raise RunInterrupted(self.signum)

    def agree(self, trainer: pl.Trainer) -> None:
        """At a point every rank of a multi-process fit reaches: if any rank was signalled, all
        take the highest signal number and ask the trainer to stop. A collective: every rank
        must call it at the same points (the end of each training step, the end of training)."""
        if not self.distributed:
            return
        marks = torch.tensor([self.signum or 0], device=trainer.strategy.root_device)
        torch.distributed.all_reduce(marks, op=torch.distributed.ReduceOp.MAX)
        agreed = int(marks.item())
        if agreed:
            self.signum = self.signum or agreed
            trainer._signal_connector.received_sigterm = True

    @contextlib.contextmanager
    def installed(self, slurm_requeue: bool) -> Iterator[Interruption]:
        """Handle SIGTERM, SIGINT and SIGUSR1 (not SIGUSR1 under Lightning's SLURM
        auto-requeue, which registers its own only where none is set) for the duration of the
        run."""
        signums = [signal.SIGTERM]
        # A process started with Ctrl+C ignored (`nohup`, `cmd &` in a script) keeps ignoring
        # it, as Python itself does.
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            signums.append(signal.SIGINT)
        if not slurm_requeue:
            signums.append(signal.SIGUSR1)
        previous = {signum: signal.getsignal(signum) for signum in signums}
        for signum in signums:
            signal.signal(signum, self.handle)
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def stop_process(process: subprocess.Popen[Any], wait_s: float) -> None:
    """End a child `distill-train` whose parent is stopping: SIGTERM (it stops after its
    current step, with a checkpoint; a second signal after the terminal's Ctrl+C stops it no
    faster), then a kill if it is still running after `wait_s` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.communicate(timeout=wait_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


def interrupted_checkpoint(trainer: pl.Trainer) -> Path | None:
    for callback in trainer.callbacks:  # type: ignore[attr-defined]
        if isinstance(callback, InterruptCheckpoint) and callback.saved is not None:
            return callback.saved
    return None


class InterruptCheckpoint(pl.Callback):
    """Saves `<dirpath>/interrupted.ckpt` when the trainer was told to stop (SIGTERM, SIGUSR1,
    Ctrl+C).

    At the end of a training step, where step checkpoints are taken (resuming from there is
    exact); if the stop comes elsewhere (validation, between epochs), when Lightning raises it.
    Attached after the pruning and quantization callbacks, so their step is done. Not a
    Lightning `Checkpoint`: one of those would stand in for the ModelCheckpoint Lightning adds
    to a run configured without one.
    """

    def __init__(self, dirpath: str | Path) -> None:
        self.dirpath = Path(dirpath)
        self.saved: Path | None = None
        self._saved_step: int | None = None
        # The run's signal handling, while its fit runs (Interruption.fitting sets it).
        self.interruption: Interruption | None = None

    @property
    def path(self) -> Path:
        return self.dirpath / INTERRUPTED_CHECKPOINT

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After Lightning registered its handlers; its teardown restores the run's own.
        interruption = self.interruption
        main_thread = threading.current_thread() is threading.main_thread()
        if interruption is not None and interruption.distributed and main_thread:
            signal.signal(signal.SIGTERM, interruption.handle)

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        if self.interruption is not None:
            self.interruption.agree(trainer)
        if trainer.received_sigterm:
            self._save(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A signal after the last step's agreement: every rank learns of it, so all of them
        # end the fit interrupted rather than one going on to the test alone.
        if self.interruption is not None:
            self.interruption.agree(trainer)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        # Lightning raises SIGTERMException only between steps, where the state is whole; a
        # second Ctrl+C or an error can land mid-step: no checkpoint then.
        if trainer.received_sigterm and isinstance(exception, SIGTERMException):
            self._save(trainer)

    def _save(self, trainer: pl.Trainer) -> None:
        if self._saved_step == trainer.global_step:
            return
        trainer.save_checkpoint(self.path, weights_only=False)  # the full state
        self.saved, self._saved_step = self.path, trainer.global_step
        log.warning("Saved %s at step %d", self.path, trainer.global_step)
