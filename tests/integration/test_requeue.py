"""A SLURM job preempted mid-epoch and requeued resumes its own run and ends where an
uninterrupted run ends.

SLURM is imitated in this process: its environment variables (so Lightning picks its
SLURMEnvironment), a fake `scontrol` that records the requeue, and a callback that does what
SLURM does at the time limit: SIGUSR1 (Lightning saves hpc_ckpt_1.ckpt and runs `scontrol
requeue`), then the job dies.
"""

from __future__ import annotations

import json
import os
import signal
import stat

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf, open_dict

from distill.errors import ConfigError
from distill.interruption import RunInterrupted
from distill.pipeline import train
from distill.trust import trusting
from tests.conftest import compose_train

RUN = [
    "data=digits",
    "teacher=cnn2d_digits",
    "student=mlp",
    "teacher.train.max_epochs=1",
    "trainer.max_epochs=2",  # QAT from epoch 1: the preemption lands after it started
    "logger=none",
    "callbacks=none",
    "export=false",
    "threads=1",
    "trainer.enable_progress_bar=false",
]
PREEMPT_AT_STEP = 30  # digits: 21 steps per epoch, so mid-epoch 1


class Preempted(Exception):
    """The job is gone (SLURM kills it after the requeue)."""


class PreemptAt(pl.Callback):
    """SIGUSR1 to this process after optimizer step `step`, then the end of the job."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGUSR1)  # handled before os.kill returns
            raise Preempted


@pytest.fixture
def slurm(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    for key, value in {
        "SLURM_NTASKS": "1",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_JOB_NAME": "train",
        "SLURM_JOB_ID": "4242",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_RESTART_COUNT": "0",
    }.items():
        monkeypatch.setenv(key, value)
    return monkeypatch


def comparable(summary: dict) -> dict:
    summary = json.loads(json.dumps(summary))
    for key in ("timing", "output_dir", "artifacts"):
        summary.pop(key)
    summary["teacher"].pop("origin")  # trained by the first run, then cached
    return summary


def test_a_requeued_job_resumes_from_its_hpc_checkpoint_and_ends_as_if_uninterrupted(
    tmp_path, slurm
):
    cache = [f"paths.cache_dir={tmp_path / 'cache'}"]
    whole = train(compose_train([*RUN, *cache], tmp_path / "whole"))

    cfg = compose_train([*RUN, *cache], tmp_path / "job")
    run_dir = tmp_path / "job" / "run"
    with open_dict(cfg):
        cfg.callbacks = OmegaConf.create(
            {"preempt": {"_target_": f"{__name__}.PreemptAt", "step": PREEMPT_AT_STEP}}
        )
    # PreemptAt is this module's: trusted, as `trusted_targets=[...]` would on a command line.
    with trusting([__name__]), pytest.raises(Preempted):
        train(cfg)
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"
    assert [path.name for path in run_dir.glob("hpc_ckpt_*")] == ["hpc_ckpt_1.ckpt"]
    assert not (run_dir / "summary.json").exists()
    saved = torch.load(run_dir / "hpc_ckpt_1.ckpt", weights_only=False)
    assert saved["global_step"] == PREEMPT_AT_STEP

    # The same job, started again by SLURM (the same config: submitit re-runs its pickle).
    slurm.setenv("SLURM_RESTART_COUNT", "1")
    with open_dict(cfg):
        cfg.callbacks = None
    resumed = train(cfg)
    assert resumed["teacher"]["origin"] == "cache"
    assert resumed["timing"]["epochs"] == 2
    assert not list(run_dir.glob("hpc_ckpt_*"))  # retired once the resumed fit finished
    assert comparable(resumed) == comparable(whole)
    states = [
        torch.load(root / "run" / "student_state.pt", weights_only=True)
        for root in (tmp_path / "whole", tmp_path / "job")
    ]
    for name in states[0]:
        assert torch.equal(states[0][name], states[1][name]), name

    # A plain rerun into the finished directory is still refused.
    with pytest.raises(ConfigError, match="holds no earlier run"):
        train(cfg)


class TerminateAt(pl.Callback):
    """SIGTERM to this process after optimizer step `step`: a preemption without the
    `--signal` (SLURM's default), or a `scancel`."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def test_a_job_preempted_by_sigterm_and_requeued_by_slurm_continues_its_own_run(tmp_path, slurm):
    cache = [f"paths.cache_dir={tmp_path / 'cache'}"]
    whole = train(compose_train([*RUN, *cache], tmp_path / "whole"))

    cfg = compose_train([*RUN, *cache], tmp_path / "job")
    run_dir = tmp_path / "job" / "run"
    with open_dict(cfg):
        cfg.callbacks = OmegaConf.create(
            {"preempt": {"_target_": f"{__name__}.TerminateAt", "step": PREEMPT_AT_STEP}}
        )
    with trusting([__name__]), pytest.raises(RunInterrupted) as stopped:
        train(cfg)
    assert stopped.value.exit_status == 143
    assert not (tmp_path / "scontrol.log").exists()  # SIGTERM alone: SLURM decides on requeue
    state = json.loads((run_dir / "status.json").read_text())
    assert (state["state"], state["checkpoint"]) == ("interrupted", "checkpoints/interrupted.ckpt")
    saved = torch.load(run_dir / "checkpoints" / "interrupted.ckpt", weights_only=True)
    assert saved["global_step"] == PREEMPT_AT_STEP  # the step the signal came in

    slurm.setenv("SLURM_RESTART_COUNT", "1")  # PreemptMode=REQUEUE started it again
    with open_dict(cfg):
        cfg.callbacks = None
    resumed = train(cfg)
    assert comparable(resumed) == comparable(whole)
    assert json.loads((run_dir / "status.json").read_text())["state"] == "complete"
    assert not (run_dir / "checkpoints" / "interrupted.ckpt").exists()
