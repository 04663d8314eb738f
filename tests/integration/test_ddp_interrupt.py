"""Under DDP (2 CPU processes, gloo) a signal that reaches one rank stops every rank at the same
step with a checkpoint, and `resume=RUN_DIR` (which Lightning relaunches on every rank)
completes the run with the student of a run never stopped.

Before: SIGUSR1 or `kill -INT` to rank 0 alone stopped rank 0 while rank 1 waited in a
collective forever, and a DDP resume was refused on rank 1 (Lightning gives it rank 0's
expanded command line).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

RUN = [
    "trainer=ddp",
    "trainer.accelerator=cpu",
    "data=digits",
    "teacher=cnn2d_digits",
    "student=mlp",
    "teacher.train.max_epochs=1",
    "trainer.max_epochs=8",
    "pruning=agp_unstructured",
    "quantization=none",
    "export=false",
    "logger=csv",
    "~callbacks.progress_bar",
    "trainer.enable_progress_bar=false",
    "callbacks.step_checkpoint.every_n_train_steps=5",
]
TIMEOUT = 300


def environment(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "DISTILL_CACHE_DIR": str(tmp_path / "cache"),
        "WANDB_MODE": "offline",
    }


def train(run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "distill.cli.train", *RUN, f"hydra.run.dir={run_dir}"]


def student(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "student_state.pt", weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGINT], ids=["SIGUSR1", "SIGINT"])
def test_a_signal_to_rank_0_alone_stops_every_rank_and_resume_completes_the_run(signum, tmp_path):
    env = environment(tmp_path)
    reference = tmp_path / "reference"
    done = subprocess.run(
        train(reference), env=env, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert done.returncode == 0, done.stderr[-3000:]

    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        train(run_dir), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + TIMEOUT
    while not list((run_dir / "checkpoints").glob("step*.ckpt")):
        assert process.poll() is None, "the run ended before the point to stop it at"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signum)  # rank 0 only: rank 1 is its child, not signalled
    output, _ = process.communicate(timeout=TIMEOUT)  # a hang fails here
    assert process.returncode == 128 + signum, output[-3000:].decode()
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "interrupted" and status["signal"] == signal.Signals(signum).name
    assert status["checkpoint"] == "checkpoints/interrupted.ckpt"

    resumed = subprocess.run(
        [sys.executable, "-m", "distill.cli.train", f"resume={run_dir}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((run_dir / "status.json").read_text())["state"] == "complete"
    ours, theirs = student(run_dir), student(reference)
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name
