"""Eight `distill-train` jobs started at once on one machine, sharing one cache directory.

Every job finishes, the teacher they share is trained exactly once, and nothing shared or
owned is corrupted: one whole teacher entry and one whole teacher-output entry in the cache,
no temporary file left behind, and each run directory complete with its own settings.

The jobs are real processes (`python -m distill.cli.train`). So that all eight meet at the
teacher's lock, and not one after the other as their imports happen to finish, the teacher's
cache entry is first held by a stand-in for a job that is killed while writing the teacher: it
takes the entry's lock, starts writing teacher.pt and stalls. Once every job says it waits for
that lock, the stand-in is killed with SIGKILL: the lock must go with it, and the half file it
leaves must not be taken for a teacher nor stay in the cache.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from distill.checks import torch_threads
from distill.config import build
from distill.teachers import (
    data_fingerprint,
    load_weights,
    teacher_cache_key,
    teacher_compute,
    teacher_specs,
)

# The repository root, for PYTHONPATH: the jobs import this checkout's distill.
ROOT = Path(__file__).resolve().parents[2]

TINY = [
    "data=digits",
    "teacher=cnn2d_digits",
    "student=mlp",
    "teacher.train.max_epochs=1",
    "trainer.max_epochs=1",
    "pruning=none",
    "quantization=none",
    "logger=none",
    "callbacks=none",
    "trainer.enable_progress_bar=false",
    "threads=1",
]

# One student setting per job. None of them enters the teacher's cache key (seed, data, the
# teacher's own settings and the compute do), so all eight need the same teacher; nor the
# teacher-output cache's key (the teacher's weights, the data and the feature taps).
STUDENTS = [
    "loss.kd.temperature=1",
    "loss.kd.temperature=8",
    "loss.kd.weight=0.5",
    "student.hidden_sizes=[64]",
    "student.hidden_sizes=[32,32]",
    "student.dropout=0.1",
    "optimizer.lr=0.01",
    "optimizer.weight_decay=0.001",
]
# The export (ONNX, compressed checkpoint, report) costs ~4 s of CPU a job: two of the jobs
# export, at the same time as the others train.
EXPORTING = {0, 1}

WAITING = "Another run holds"
DEADLINE_S = 300

# The stand-in for a job killed while it writes the teacher: the lock, a half-written
# teacher.pt (through the same atomic write the cache uses), then nothing until it is killed.
HALF_WRITER = """
import sys, time
from pathlib import Path
from distill.files import atomic_write, exclusive_lock

def stall(handle):
    handle.write(b"half a teacher")
    handle.flush()
    print("holding", flush=True)
    time.sleep(3600)

entry = Path(sys.argv[1])
entry.mkdir(parents=True, exist_ok=True)
with exclusive_lock(entry / ".lock"):
    atomic_write(entry / "teacher.pt", stall)
"""


def job_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"}


def start_job(number: int, cache_dir: Path, run_dir: Path) -> subprocess.Popen:
    export = "true" if number in EXPORTING else "false"
    command = [
        sys.executable,
        "-m",
        "distill.cli.train",
        *TINY,
        STUDENTS[number],
        f"export={export}",
        f"paths.cache_dir={cache_dir}",
        f"hydra.run.dir={run_dir}",
    ]
    # The job writes to its own copy of the handle; this one can close at once.
    with open(run_dir.parent / f"{run_dir.name}.out", "wb") as output:
        return subprocess.Popen(
            command, cwd=run_dir.parent, env=job_env(), stdout=output, stderr=subprocess.STDOUT
        )


def job_output(run_dir: Path) -> str:
    return (run_dir.parent / f"{run_dir.name}.out").read_text(errors="replace")[-3000:]


def wait_until_all_wait_for_the_lock(jobs: list[subprocess.Popen], run_dirs: list[Path]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    pending = set(range(len(jobs)))
    while pending:
        for number in sorted(pending):
            assert jobs[number].poll() is None, job_output(run_dirs[number])
            log = run_dirs[number] / "train.log"
            if log.is_file() and WAITING in log.read_text():
                pending.discard(number)
        assert time.monotonic() < deadline, f"jobs {sorted(pending)} never reached the lock"
        time.sleep(0.5)


def teacher_key(cfg) -> str:
    """The cache key the jobs compute for their teacher (on one thread, as `threads=1`)."""
    with torch_threads(1):
        compute = teacher_compute(cfg.trainer)
    return teacher_cache_key(
        teacher_specs(cfg)["teacher"], data_fingerprint(cfg.data), cfg.seed, compute
    )


def teacher_logits_on_training_set(cfg, weights: Path) -> np.ndarray:
    """The cached teacher's logits for every training sample, computed here from its file."""
    datamodule = build(cfg.data, "data")
    datamodule.setup("fit")
    model = teacher_specs(cfg)["teacher"].build_model()
    load_weights(model, weights, field="teacher cache entry")
    inputs = torch.stack([sample[0] for sample in datamodule.train_dataset])
    with torch.no_grad():
        return model.eval()(inputs).numpy()


def hidden_files(directory: Path) -> list[str]:
    """Names of temporary files and folders (atomic writes, staging) anywhere under it."""
    return sorted(
        str(path.relative_to(directory))
        for path in directory.rglob(".*")
        if not path.name.endswith(".lock") and path.name != ".hydra"
    )


# ~80 s of CPU in all (each job imports torch and Lightning: ~7 s): 75-120 s on the 2 shared
# cores it was measured on, so out of the default suite (run it with -m slow).
@pytest.mark.slow
def test_eight_jobs_at_once_train_the_shared_teacher_once(compose_cfg, tmp_path):
    cfg = compose_cfg(*TINY)
    cache_dir = tmp_path / "cache"
    key = teacher_key(cfg)
    entry = cache_dir / "teachers" / key
    run_dirs = [tmp_path / f"run{number}" for number in range(len(STUDENTS))]

    holder = subprocess.Popen(
        [sys.executable, "-c", HALF_WRITER, str(entry)],
        env=job_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    jobs: list[subprocess.Popen] = []
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
        started = time.monotonic()
        jobs = [start_job(n, cache_dir, run_dir) for n, run_dir in enumerate(run_dirs)]
        wait_until_all_wait_for_the_lock(jobs, run_dirs)
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        for job in jobs:
            job.wait(timeout=DEADLINE_S)
        elapsed = time.monotonic() - started
    finally:
        for process in (holder, *jobs):
            if process.poll() is None:
                process.kill()
                process.wait()
    for number, job in enumerate(jobs):
        assert job.returncode == 0, job_output(run_dirs[number])
    print(f"8 jobs in {elapsed:.1f} s")

    summaries = [json.loads((run_dir / "summary.json").read_text()) for run_dir in run_dirs]
    teachers = [summary["teacher"] for summary in summaries]
    # Trained once, by whichever job got the lock first; the seven others loaded it.
    assert sorted(teacher["origin"] for teacher in teachers) == ["cache"] * 7 + ["trained"]
    assert {teacher["cache_key"] for teacher in teachers} == {key}
    assert len({teacher["test_acc"] for teacher in teachers}) == 1
    weights = entry / "teacher.pt"
    assert {teacher["checkpoint"]["path"] for teacher in teachers} == {str(weights)}
    assert {teacher["checkpoint"]["bytes"] for teacher in teachers} == {weights.stat().st_size}

    # One entry, whole: the weights load, the meta is the trained job's, no half file left.
    assert [path.name for path in (cache_dir / "teachers").iterdir()] == [key]
    assert sorted(path.name for path in entry.iterdir()) == [".lock", "meta.json", "teacher.pt"]
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["key"] == key
    assert meta["test_acc"] == teachers[0]["test_acc"]

    # The teacher's outputs: computed once, read by the others, equal to what the cached
    # teacher computes here from its file.
    caches = [summary["timing"]["teacher_cache"] for summary in summaries]
    assert sorted(cache["origin"] for cache in caches) == ["cache"] * 7 + ["computed"]
    (outputs,) = {cache["path"] for cache in caches}
    outputs_dir = cache_dir / "teacher_outputs"
    assert sorted(path.name for path in outputs_dir.iterdir()) == sorted(
        [Path(outputs).name, f".{Path(outputs).name}.lock"]
    )
    assert sorted(path.name for path in Path(outputs).iterdir()) == ["done", "logits.npy"]
    np.testing.assert_allclose(
        np.load(Path(outputs) / "logits.npy"),
        teacher_logits_on_training_set(cfg, weights),
        rtol=0,
        atol=1e-5,
    )
    assert hidden_files(cache_dir) == []

    for number, (run_dir, summary) in enumerate(zip(run_dirs, summaries, strict=True)):
        assert summary["output_dir"] == str(run_dir)
        # Its own settings: the override it was given, in the config it saved.
        name = STUDENTS[number].split("=")[0]
        given = OmegaConf.from_dotlist([STUDENTS[number]])
        saved = OmegaConf.load(run_dir / "config.yaml")
        assert OmegaConf.select(saved, name) == OmegaConf.select(given, name), number
        files = {path.name for path in run_dir.iterdir()}
        assert {
            ".hydra",
            "checkpoints",
            "config.yaml",
            "student.pt",
            "student_state.pt",
            "summary.json",
            "train.log",
        } <= files
        assert ("export" in files) == (number in EXPORTING)
        if number in EXPORTING:
            assert (run_dir / "export" / "report.md").is_file()
            assert "onnx_int8" in summary["artifacts"]
        assert len(list((run_dir / "checkpoints").glob("*.ckpt"))) == 1
        assert hidden_files(run_dir) == []


def test_jobs_started_together_without_a_run_dir_get_one_each(tmp_path):
    # Hydra's default run directory is named after the time the job starts: to the second, jobs
    # started together shared one. Each job here is a labels-only smoke test (no teacher, one
    # batch), which ends with its overrides and its summary in its own directory.
    seeds = ["seed=1", "seed=2", "seed=3"]
    env = {**job_env(), "DISTILL_LOG_DIR": str(tmp_path / "outputs")}
    smoke = [*TINY, "loss=[ce]", "+trainer.fast_dev_run=true", "export=false"]
    jobs = [
        subprocess.Popen(
            [sys.executable, "-m", "distill.cli.train", *smoke, seed],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for seed in seeds
    ]
    assert [job.wait(timeout=DEADLINE_S) for job in jobs] == [0, 0, 0]
    run_dirs = sorted((tmp_path / "outputs").glob("*/*"))
    assert len(run_dirs) == len(seeds)
    recorded = [OmegaConf.load(run_dir / ".hydra" / "overrides.yaml") for run_dir in run_dirs]
    assert sorted(seed for overrides in recorded for seed in overrides if "seed=" in seed) == (
        sorted(seeds)
    )
    summaries = [json.loads((run_dir / "summary.json").read_text()) for run_dir in run_dirs]
    assert sorted(summary["seed"] for summary in summaries) == [1, 2, 3]
