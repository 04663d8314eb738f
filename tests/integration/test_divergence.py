"""`distill-train` whose KD term turns NaN in its second epoch: exit 1 with one line naming the
term and the step, the first epoch's checkpoints byte-identical and loadable, and nothing that
claims the run finished (no summary.json, no student files, no export). `distill-teacher`
likewise, and its cache keeps no entry for the teacher.

Each runs the real entry point in-process on the tiny digits recipe, with a loss term's
`compute` patched to return NaN at one known step: an injection that needs no `_target_` from
the tests package.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from distill.checks import check_resume_checkpoint
from distill.cli.teacher import main as teacher_main
from distill.cli.train import main
from distill.losses import CrossEntropy, SoftTargetKD
from distill.sweep_report.runs import log_error

REPO = Path(__file__).resolve().parents[2]
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
    # The run's state says where it stopped and why; a resume would start from last.ckpt.
    state = json.loads((run_dir / "status.json").read_text())
    assert (state["state"], state["stage"]) == ("failed", "fit")
    assert state["error"].startswith("TrainingDiverged: the training loss is not finite at step")


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


# Under DDP only rank 1's loss turns NaN; both ranks must stop at that step (a rank that
# stopped alone would leave the other waiting in backward's all-reduce) and name the same
# culprit. Lightning's `ddp` strategy starts rank 1 by re-running the script.
DDP_SCRIPT = textwrap.dedent(
    """
    import math
    import os
    import sys
    from datetime import timedelta
    from pathlib import Path

    import pytorch_lightning as pl
    from pytorch_lightning.strategies import DDPStrategy

    from distill.errors import TrainingDiverged
    from distill.losses import CrossEntropy
    from tests.unit.test_divergence import Poison, loader, make_module

    out = Path(sys.argv[1])
    # Rank 1 only (LOCAL_RANK is set in rank 1's environment when its process starts).
    at = 2 if os.environ.get("LOCAL_RANK") == "1" else -1
    module = make_module({"ce": CrossEntropy(), "kd": Poison(math.nan, at=at)})
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        # A regression (one rank stops, one waits) then fails in a minute instead of hanging
        # for gloo's default half hour.
        strategy=DDPStrategy(timeout=timedelta(seconds=60)),
        max_epochs=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,
    )
    try:
        trainer.fit(module, train_dataloaders=loader())
    except TrainingDiverged as error:
        (out / f"rank{trainer.global_rank}.txt").write_text(str(error))
    """
)


@pytest.mark.slow
def test_under_ddp_every_rank_stops_at_the_step_one_rank_diverged(tmp_path):
    script = tmp_path / "ddp_nan.py"
    script.write_text(DDP_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,  # a hang (the bug this guards against) fails here
    )
    assert result.returncode == 0, result.stderr[-3000:]
    messages = {(tmp_path / f"rank{rank}.txt").read_text() for rank in (0, 1)}
    (message,) = messages  # the same on both ranks
    # Each rank sees half of the 64 samples: 2 steps per epoch, and step 2 is epoch 1's first.
    assert message.startswith(
        "the training loss is not finite at step 2 (epoch 1): loss.kd=nan on rank 1. Training "
        "stopped before this step's update"
    )
