"""`distill-train` whose KD term turns NaN in its second epoch: exit 1 with one line naming the
term and the step, the first epoch's checkpoints byte-identical and loadable, and nothing that
claims the run finished (no summary.json, no student files, no export). `distill-teacher`
likewise, and its cache keeps no entry for the teacher.

Each runs the real entry point in-process on the tiny digits recipe, with a loss term's
`compute` patched to return NaN at one known step: an injection that needs no `_target_` from
the tests package.
"""

from __future__ import annotations

import math
import sys

import pytest
import torch

from distill.checks import check_resume_checkpoint
from distill.cli.teacher import main as teacher_main
from distill.cli.train import main
from distill.losses import CrossEntropy, SoftTargetKD
from distill.sweep_report.runs import log_error

TINY = [
    "data=digits",
    "teacher=cnn2d_digits",
    "student=mlp",
    "teacher.train.max_epochs=1",
    "trainer.max_epochs=3",
    "pruning=none",
    "quantization=none",
    "export=false",
    "logger=none",
    "~callbacks.progress_bar",
    "trainer.enable_progress_bar=false",
    "threads=1",
]
# Digits' 1,294 training images in batches of 64: 21 steps per epoch. Step 24 is in epoch 1,
# after epoch 0's checkpoints were saved.
STEPS_PER_EPOCH = 21
BAD_STEP = STEPS_PER_EPOCH + 3
STUDENT_FILES = ["summary.json", "student.pt", "student_state.pt", "student_slim.pt2", "export"]


def test_a_nan_loss_fails_the_run_and_keeps_the_last_good_checkpoints(
    tmp_path, monkeypatch, capsys
):
    run_dir = tmp_path / "run"
    checkpoints = run_dir / "checkpoints"
    seen: dict[str, bytes] = {}
    compute = SoftTargetKD.compute
    calls = iter(range(10**6))

    def nan_at_bad_step(self, outputs):
        value = compute(self, outputs)
        if next(calls) != BAD_STEP:
            return value
        seen.update((path.name, path.read_bytes()) for path in checkpoints.iterdir())
        return value * math.nan

    monkeypatch.setattr(SoftTargetKD, "compute", nan_at_bad_step)
    argv = [
        *TINY,
        f"hydra.run.dir={run_dir}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"paths.log_dir={tmp_path / 'logs'}",
    ]
    monkeypatch.setattr(sys, "argv", ["distill-train", *argv])

    with pytest.raises(SystemExit) as exited:
        main()

    captured = capsys.readouterr()
    output = captured.out + captured.err
    assert exited.value.code == 1, output[-3000:]
    error = (
        f"Training diverged: the training loss is not finite at step {BAD_STEP} (epoch 1): "
        "loss.kd=nan. Training stopped before this step's update; checkpoints saved before it "
        "are kept."
    )
    assert error in output and output.count("Training diverged") == 1, output[-3000:]
    assert "Traceback" not in output
    # distill-report lists the run as failed with that line.
    assert log_error((run_dir / "train.log").read_text()).startswith(error)

    assert set(seen) == {"best-epoch000.ckpt", "last.ckpt"}
    assert {path.name: path.read_bytes() for path in checkpoints.iterdir()} == seen
    for name in seen:
        check_resume_checkpoint(str(checkpoints / name))  # what a resume accepts
        state = torch.load(checkpoints / name, weights_only=True)["state_dict"]
        assert state and all(torch.isfinite(value).all() for value in state.values())
    for name in STUDENT_FILES:
        assert not (run_dir / name).exists(), name


def test_a_teacher_whose_loss_turns_nan_fails_and_is_not_cached(tmp_path, monkeypatch, capsys):
    compute = CrossEntropy.compute
    calls = iter(range(10**6))

    def nan_at_step_3(self, outputs):
        value = compute(self, outputs)
        return value * math.nan if next(calls) == 3 else value

    monkeypatch.setattr(CrossEntropy, "compute", nan_at_step_3)
    argv = [
        *TINY,
        f"hydra.run.dir={tmp_path / 'run'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"paths.log_dir={tmp_path / 'logs'}",
    ]
    monkeypatch.setattr(sys, "argv", ["distill-teacher", *argv])

    with pytest.raises(SystemExit) as exited:
        teacher_main()

    captured = capsys.readouterr()
    output = captured.out + captured.err
    assert exited.value.code == 1, output[-3000:]
    assert (
        "Training diverged: the training loss is not finite at step 3 (epoch 0): loss.ce=nan."
    ) in output
    assert "Traceback" not in output
    assert not list((tmp_path / "cache").rglob("teacher.pt"))  # no cache entry claims it
