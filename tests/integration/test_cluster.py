"""A sweep the way a cluster runs it: `distill-teacher` once, then `distill-train -m` through
hydra-submitit-launcher (here its local launcher, processes on this machine), every job finding
the teacher cached; and the refusals that come before any job starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from hydra.core.utils import setup_globals
from submitit.core.utils import DelayedSubmission

WORKTREE = Path(__file__).resolve().parents[2]
TINY = [
    "data=digits",
    "teacher=cnn2d_digits",
    "student=mlp",
    "teacher.train.max_epochs=1",
    "trainer.max_epochs=1",
    # The default ramp cannot finish in one epoch (refused); these tests are about the teacher.
    "pruning=none",
    "logger=none",
    "callbacks=none",
    "export=false",
    "threads=1",
    "trainer.enable_progress_bar=false",
]


def run(module: str, *args: str, root: Path) -> subprocess.CompletedProcess:
    """`python -m distill.cli.<module>` from the worktree (so its `distill` is imported, in
    the submitit jobs too), every output under `root`."""
    env = {
        **os.environ,
        "DISTILL_CACHE_DIR": str(root / "cache"),
        "DISTILL_LOG_DIR": str(root / "logs"),
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", f"distill.cli.{module}", *args],
        cwd=WORKTREE,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_teacher_once_then_a_local_submitit_sweep_finds_it_in_every_job(tmp_path, monkeypatch):
    prepared = run("teacher", *TINY, root=tmp_path)
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    (line,) = [line for line in prepared.stdout.splitlines() if line.startswith("teacher:")]
    assert "origin=trained" in line
    (entry,) = (tmp_path / "cache" / "teachers").iterdir()
    assert f"cache_key={entry.name} path={entry / 'teacher.pt'}" in line

    # A student-side sweep: both jobs are the same teacher key as the prepared one.
    sweep = run(
        "train",
        "-m",
        "hydra/launcher=submitit_local",
        *TINY,
        "teacher.when_missing=fail",  # a job that had to train it would fail instead
        "trainer.max_epochs=1,2",
        root=tmp_path,
    )
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    (sweep_dir,) = (tmp_path / "logs" / "multirun").iterdir()
    assert sorted(path.name for path in sweep_dir.iterdir()) == [
        ".submitit",
        "0",
        "1",
        "multirun.yaml",
    ]
    for job, epochs in (("0", 1), ("1", 2)):
        summary = json.loads((sweep_dir / job / "summary.json").read_text())
        assert summary["output_dir"] == str(sweep_dir / job)
        assert summary["teacher"]["origin"] == "cache"
        assert summary["teacher"]["cache_key"] == entry.name
        assert summary["timing"]["epochs"] == epochs
    # Each job's submitit logs: one folder per local job id, with its result.
    assert len(list((sweep_dir / ".submitit").glob("*/*_result.pkl"))) == 2

    # What a requeued job re-runs is this pickle: its launcher's config still resolves to the
    # same sweep directory (the timestamp is resolved once, cached in the pickled config), so
    # the job comes back to its own run directory.
    setup_globals()  # Hydra's resolvers (`now`), as the launcher registers them in a job
    monkeypatch.setenv("DISTILL_LOG_DIR", str(tmp_path / "logs"))  # oc.env: the job's env
    for pickled in (sweep_dir / ".submitit").glob("*/*_submitted.pkl"):
        submission = DelayedSubmission.load(pickled)
        assert submission.function.config.hydra.sweep.dir == str(sweep_dir)


def test_fail_names_the_distill_teacher_command_and_trains_nothing(tmp_path):
    result = run("train", *TINY, "teacher.when_missing=fail", root=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "teacher.when_missing='fail' is not allowed: a teacher that is already cached" in output
    expected = " ".join(["distill-teacher", *TINY, "teacher.when_missing=fail"])
    assert f"Train the teacher with: {expected}" in output
    assert not (tmp_path / "cache" / "teachers").exists()
    assert not list(tmp_path.glob("logs/**/summary.json"))


def test_a_slurm_sweep_without_partition_is_refused_before_any_job(tmp_path):
    result = run("train", "-m", "hydra/launcher=slurm", *TINY, "seed=0,1", root=tmp_path)
    assert result.returncode == 2
    assert "Configuration error: hydra.launcher.partition=None is not allowed" in result.stderr
    assert not (tmp_path / "logs").exists()
