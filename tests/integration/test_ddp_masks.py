"""Under DDP every rank ends with identical masks and activation ranges (2 CPU processes, gloo).

Parametrized modules cannot be pickled, so `ddp_spawn` is out; the test runs a script under
Lightning's `ddp` strategy, which starts the second rank by re-running the script.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import pytorch_lightning as pl
    import torch

    from distill.compression import AGPSchedule, PruningCallback, QuantizationCallback
    from tests.unit.test_pruning import CRITERIA, INPUT_SHAPE, loader, masks_of, module_for
    from tests.unit.test_pruning import tiny_cnn

    name, out, qat = sys.argv[1], Path(sys.argv[2]), sys.argv[3] == "qat"


    class SaveMasksPerRank(pl.Callback):
        def on_train_end(self, trainer, pl_module):
            state = masks_of(pl_module.student)
            if qat:  # and the activation observers' ranges, which DDP broadcasts as buffers
                state.update(
                    (key, value)
                    for key, value in pl_module.student.state_dict().items()
                    if key.endswith(("min_val", "max_val"))
                )
            torch.save(state, out / f"rank{trainer.global_rank}.pt")


    schedule = AGPSchedule(final_sparsity=0.75, start=1, frequency=2, num_updates=3)
    callback = PruningCallback(CRITERIA[name](), schedule, unit="step")
    student = tiny_cnn()
    callback.attach(student, torch.randn(2, *INPUT_SHAPE))
    callbacks = [callback, SaveMasksPerRank()]
    if qat:
        quantization = QuantizationCallback(start_epoch=0)
        quantization.attach(student, torch.randn(2, *INPUT_SHAPE))
        callbacks.append(quantization)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_steps=8,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        callbacks=callbacks,
    )
    trainer.fit(module_for(student), train_dataloaders=loader())
    """
)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "qat"),
    [("magnitude", ""), ("channel_taylor", ""), ("random", ""), ("magnitude", "qat")],
)
def test_every_rank_ends_with_identical_masks(name, qat, tmp_path):
    script = tmp_path / "ddp_prune.py"
    script.write_text(SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script), name, str(tmp_path), qat or "-"],
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rank0 = torch.load(tmp_path / "rank0.pt")
    rank1 = torch.load(tmp_path / "rank1.pt")
    assert rank0.keys() == rank1.keys() and rank0
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    assert any(not mask.all() for key, mask in rank0.items() if key.endswith("mask"))
    if qat:
        ranges = [key for key in rank0 if key.endswith("min_val")]
        assert ranges and any(float(rank0[key]) != 0 for key in ranges)


@pytest.mark.slow
def test_distill_train_under_ddp_trains_the_teacher_once_and_finishes(tmp_path):
    # The teacher is trained on one device before the second rank starts; that rank then finds
    # it in the cache (a DDP teacher fit would wait for a rank that waits for the cache lock).
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "distill.cli.train",
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "data=digits",
            "teacher=cnn2d_digits",
            "student=mlp",
            "teacher.train.max_epochs=2",
            "trainer.max_epochs=3",
            "pruning=agp_unstructured",
            "pruning.schedule.start=0",
            "pruning.schedule.num_updates=2",
            "logger=csv",
        ],
        cwd=tmp_path,
        env={
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
            "OMP_NUM_THREADS": "1",
            "DISTILL_CACHE_DIR": str(tmp_path / "cache"),
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (summary_path,) = tmp_path.glob("outputs/*/*/summary.json")
    summary = json.loads(summary_path.read_text())
    assert summary["teacher"]["origin"] == "trained"
    assert summary["sparsity"]["layers"]["features.3"] == pytest.approx(0.8, abs=1e-3)
