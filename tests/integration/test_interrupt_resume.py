"""A run stopped by a signal, or killed in the middle of a checkpoint write or of its export,
is recorded as unfinished, exits non-zero, and `distill-train resume=RUN_DIR` completes the same
directory with the same student as a run that was never stopped.

Every run is a real `distill-train` process (signals and SIGKILL need one); a seam in the
product code (`write_checkpoint_bytes`, the export's `BUILDERS`) is patched by a tiny launcher
script to kill the process at an exact point.
"""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from distill.checkpoint_io import checkpoint_step

RUN = [
    "data=digits",
    "teacher=cnn2d_digits",
    "student=mlp",
    "teacher.train.max_epochs=1",
    "trainer.max_epochs=6",  # digits: 21 steps per epoch; QAT from the middle of the run
    "quantization=qat_int8",
    "pruning=none",
    "export=false",
    "logger=csv",
    "threads=1",
    "~callbacks.progress_bar",
    "trainer.enable_progress_bar=false",
    "callbacks.step_checkpoint.every_n_train_steps=5",
]
TIMEOUT = 240


def command(run_dir: Path, cache: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "distill.cli.train",
        *RUN,
        f"paths.cache_dir={cache}",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]


def resume(run_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "distill.cli.train", f"resume={run_dir}"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def launcher(tmp_path: Path, patch: str) -> list[str]:
    """`python script.py ARGS` runs distill-train with `patch` applied first."""
    script = tmp_path / "launch.py"
    script.write_text(
        "import os, signal, sys\n"
        + textwrap.dedent(patch)
        + "\nfrom distill.cli.train import main\n"
        + "sys.argv = ['distill-train', *sys.argv[1:]]\nmain()\n"
    )
    return [sys.executable, str(script)]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache) -> Path:
    """The same run, never stopped (it also trains the teacher every other run reuses)."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    done = subprocess.run(command(run_dir, cache), capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir


def state(run_dir: Path) -> dict:
    return json.loads((run_dir / "status.json").read_text())


def comparable(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("timing", "output_dir", "artifacts"):
        summary.pop(key)
    summary["teacher"].pop("origin")
    return summary


def assert_same_student(run_dir: Path, reference: Path) -> None:
    assert comparable(run_dir) == comparable(reference)
    ours, theirs = (
        torch.load(path / "student_state.pt", weights_only=True) for path in (run_dir, reference)
    )
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name


def wait_for(path_glob: tuple[Path, str], process: subprocess.Popen) -> None:
    folder, pattern = path_glob
    deadline = time.monotonic() + TIMEOUT
    while not list(folder.glob(pattern)):
        assert process.poll() is None, "the run ended before the point to stop it at"
        assert time.monotonic() < deadline
        time.sleep(0.005)


@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT], ids=["SIGTERM", "SIGUSR1", "SIGINT"]
)
def test_a_signal_saves_a_checkpoint_exits_nonzero_and_resume_completes_the_run(
    signum, tmp_path, cache, reference
):
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        command(run_dir, cache), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    wait_for((run_dir / "checkpoints", "step*.ckpt"), process)
    process.send_signal(signum)
    output, _ = process.communicate(timeout=TIMEOUT)

    # Not a success: the shell's status for "ended by this signal", and the state says so.
    assert process.returncode == 128 + signum, output[-3000:]
    recorded = state(run_dir)
    assert recorded["state"] == "interrupted" and recorded["stage"] == "fit"
    assert recorded["signal"] == signal.Signals(signum).name
    assert recorded["checkpoint"] == "checkpoints/interrupted.ckpt"
    assert recorded["resume"] == f"distill-train resume={run_dir}"
    assert f"continue with: distill-train resume={run_dir}" in output
    assert not (run_dir / "summary.json").exists()
    step, _ = checkpoint_step(run_dir / "checkpoints" / "interrupted.ckpt")
    assert 5 <= step < 6 * 21  # at the step the signal found, not at an epoch's end
    if signum != signal.SIGTERM:
        return  # the same path from here on

    done = resume(run_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (
        f"Resuming {run_dir} from {run_dir / 'checkpoints' / 'interrupted.ckpt'}"
        in (run_dir / "train.log").read_text()
    )
    assert state(run_dir)["state"] == "complete"
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "complete"
    assert not (run_dir / "checkpoints" / "interrupted.ckpt").exists()  # consumed
    assert_same_student(run_dir, reference)
    # The CSV log continues: the rows before the stop are kept, the rest appended.
    with open(run_dir / "csv" / "metrics.csv") as handle:
        epochs = {int(row["epoch"]) for row in csv.DictReader(handle) if row.get("epoch")}
    assert set(range(6)) <= epochs  # (the test's row comes after the last epoch)


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_one_and_resume_uses_it(
    tmp_path, cache, reference
):
    run_dir = tmp_path / "run"
    kill_on_third_write = """
        import distill.checkpoint_io as io
        writes = []
        original = io.write_checkpoint_bytes
        def dying(checkpoint, handle):
            writes.append(checkpoint["global_step"])
            if len(writes) == 3:  # step 15: half a file, then the process is gone
                handle.write(b"PK" * 1000)
                handle.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            original(checkpoint, handle)
        io.write_checkpoint_bytes = dying
    """
    killed = subprocess.run(
        [*launcher(tmp_path, kill_on_third_write), *command(run_dir, cache)[3:]],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert killed.returncode == -signal.SIGKILL
    checkpoints = run_dir / "checkpoints"
    assert sorted(path.name for path in checkpoints.glob("*.ckpt")) == ["step0000010.ckpt"]
    assert checkpoint_step(checkpoints / "step0000010.ckpt") == (10, 0)
    (partial,) = checkpoints.glob(".step0000015.ckpt.*.tmp")  # the write that was cut
    assert checkpoint_step(partial) is None
    assert state(run_dir) == {**state(run_dir), "state": "running", "stage": "fit"}

    done = resume(run_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    log = (run_dir / "train.log").read_text()
    assert f"Resuming {run_dir} from {checkpoints / 'step0000010.ckpt'}" in log
    assert not partial.exists()
    assert state(run_dir)["state"] == "complete"
    assert_same_student(run_dir, reference)


def test_an_export_cut_short_is_recorded_and_resume_redoes_only_the_export(tmp_path, cache):
    run_dir = tmp_path / "run"
    stop_after_first_artifact = """
        import distill.deploy.artifacts as artifacts
        def stop(context):
            os.kill(os.getpid(), signal.SIGTERM)
        artifacts.BUILDERS = [artifacts.BUILDERS[0], stop, *artifacts.BUILDERS[1:]]
    """
    stopped = subprocess.run(
        [
            *launcher(tmp_path, stop_after_first_artifact),
            *command(run_dir, cache)[3:],
            "export=true",
            "export_executorch=false",  # ExecuTorch's own export is tested elsewhere; ~10 s
            "trainer.max_epochs=2",
            "export_latency_repeats=1",
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    recorded = state(run_dir)
    assert (recorded["state"], recorded["stage"]) == ("interrupted", "export")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "export_interrupted"  # trained, but it does not look finished
    assert "onnx_int8" not in summary["artifacts"]
    assert not (run_dir / "export").exists()
    assert not list(run_dir.glob(".export-*"))
    # What a SIGKILL in the middle of an export leaves; the next export clears it.
    (run_dir / ".export-killed").mkdir()

    done = resume(run_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    log = (run_dir / "train.log").read_text()
    assert "training and test are done; redoing the export" in log
    assert "Restoring states" not in log.split("redoing the export")[1]  # no second fit
    assert state(run_dir)["state"] == "complete"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete"
    assert (run_dir / summary["artifacts"]["onnx_int8"]["path"]).is_file()
    assert not list(run_dir.glob(".export-*"))


@pytest.fixture
def finished_and_unfinished(tmp_path, reference) -> tuple[Path, Path]:
    """The reference run (finished), and a copy of its beginning that was interrupted."""
    unfinished = tmp_path / "unfinished"
    (unfinished / ".hydra").mkdir(parents=True)
    for name in ("config.yaml", "overrides.yaml", "hydra.yaml"):
        (unfinished / ".hydra" / name).write_bytes((reference / ".hydra" / name).read_bytes())
    (unfinished / "status.json").write_text(
        json.dumps({"state": "interrupted", "stage": "fit", "signal": "SIGTERM"})
    )
    return reference, unfinished


def run_main(monkeypatch, capsys, *arguments: str) -> tuple[int, str]:
    from distill.cli.train import main

    monkeypatch.setattr(sys, "argv", ["distill-train", *arguments])
    with pytest.raises(SystemExit) as exited:
        main()
    captured = capsys.readouterr()
    return exited.value.code, captured.out + captured.err


def snapshot(run_dir: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(path.relative_to(run_dir)): (path.read_bytes(), path.stat().st_mtime_ns)
        for path in sorted(run_dir.rglob("*"))
        if path.is_file()
    }


def test_an_earlier_run_is_refused_before_hydra_writes_into_it(
    finished_and_unfinished, cache, monkeypatch, capsys
):
    finished, unfinished = finished_and_unfinished
    for run_dir, says in (
        (finished, "this one holds a finished run"),
        (unfinished, f"continue it with distill-train resume={unfinished}"),
    ):
        before = snapshot(run_dir)
        code, output = run_main(monkeypatch, capsys, *command(run_dir, cache)[3:])
        assert code == 2
        refused = f"hydra.run.dir='{run_dir}' is not allowed: a directory that holds no earlier"
        assert refused in output and says in output and "Traceback" not in output
        assert snapshot(run_dir) == before  # .hydra/config.yaml, train.log: untouched


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["resume={finished}"], "a run that did not finish (this one is complete"),
        (["resume={unfinished}", "trainer.max_epochs=9"], "resume=RUN_DIR alone"),
        (["resume={nowhere}"], "the directory of a distill-train run"),
        (["resume={changed}"], "a run whose recipe is unchanged: optimizer.lr was 0.123 when"),
    ],
    ids=["finished", "with_overrides", "not_a_run", "recipe_changed"],
)
def test_resume_refusals(
    arguments, message, finished_and_unfinished, tmp_path, monkeypatch, capsys
):
    finished, unfinished = finished_and_unfinished
    # A run whose saved config differs from what its overrides compose to today.
    changed = tmp_path / "changed"
    (changed / ".hydra").mkdir(parents=True)
    for name in ("overrides.yaml", "hydra.yaml", "config.yaml"):
        text = (unfinished / ".hydra" / name).read_text()
        if name == "config.yaml":
            head, tail = text.rsplit("\n  lr: ", 1)  # the student's optimizer: 2 spaces in
            text = f"{head}\n  lr: 0.123 #{tail}"
        (changed / ".hydra" / name).write_text(text)
    (changed / "status.json").write_text((unfinished / "status.json").read_text())
    places = {
        "finished": finished,
        "unfinished": unfinished,
        "changed": changed,
        "nowhere": tmp_path / "nowhere",
    }
    arguments = [argument.format(**places) for argument in arguments]
    before = {name: snapshot(path) for name, path in places.items() if path.exists()}

    code, output = run_main(monkeypatch, capsys, *arguments)
    assert code == 2, output[-2000:]
    assert message in output and "Traceback" not in output
    assert not places["nowhere"].exists()
    assert {name: snapshot(path) for name, path in places.items() if path.exists()} == before
