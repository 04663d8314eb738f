"""`distill-export RUN_DIR` refuses a run directory that is not whole, before any work: exit 2,
one line naming `run_dir`, the file and what is wrong with it, no traceback, and the directory
left exactly as it was (no export/, summary.json untouched)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from distill.cli.export import main as export_main
from distill.pipeline import train
from tests.conftest import compose_train
from tests.integration.test_untrusted import RUN, snapshot


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("finished")
    train(compose_train(RUN, root))
    return root / "run"


def cut_in_half(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def remove_configs(run_dir: Path) -> None:
    (run_dir / "config.yaml").unlink()
    shutil.rmtree(run_dir / ".hydra", ignore_errors=True)


def remove_student(run_dir: Path) -> None:
    (run_dir / "student_state.pt").unlink()
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)


# (what is done to the finished run, what the message says after "run_dir='<dir>' is not
# allowed: ").
DAMAGE: dict[str, tuple[Callable[[Path], object], str]] = {
    "student_state_cut_short": (
        lambda run: cut_in_half(run / "student_state.pt"),
        "a run whose student_state.pt loads (torch cannot read it: RuntimeError: "
        "PytorchStreamReader failed",
    ),
    "student_state_empty": (
        lambda run: (run / "student_state.pt").write_bytes(b""),
        "a run whose student_state.pt loads (the file is empty)",
    ),
    "student_state_not_a_state_dict": (
        lambda run: torch.save([1, 2, 3], run / "student_state.pt"),
        "a run whose student_state.pt holds a state_dict",
    ),
    "student_state_of_another_model": (
        lambda run: torch.save({"weight": torch.zeros(2)}, run / "student_state.pt"),
        "a student state matching the run's config (missing keys",
    ),
    "no_trained_student": (
        remove_student,
        "a run directory holding a trained student (student_state.pt or checkpoints/last.ckpt); "
        "this one has neither: did the run finish?",
    ),
    "summary_cut_short": (
        lambda run: cut_in_half(run / "summary.json"),
        "a finished run with a whole summary.json (it is cut short or not JSON: ",
    ),
    "summary_missing": (
        lambda run: (run / "summary.json").unlink(),
        "a finished run (it has no summary.json)",
    ),
    "summary_not_an_object": (
        lambda run: (run / "summary.json").write_text("[1, 2]"),
        "a finished run (summary.json holds no JSON object)",
    ),
    "config_cut_short": (
        lambda run: (run / "config.yaml").write_text("student:\n  _target_: [distill.models"),
        "a run whose config.yaml is whole YAML (",
    ),
    "config_not_a_run_config": (
        lambda run: (run / "config.yaml").write_text("just: a mapping\n"),
        "a run whose config.yaml is a distill-train config (it has no student or paths)",
    ),
    "configs_missing": (remove_configs, "a distill-train run directory (no config.yaml there)"),
}


@pytest.mark.parametrize("case", DAMAGE)
def test_export_refuses_a_damaged_run_directory_and_writes_nothing(
    case, finished_run, tmp_path, caplog, capsys
):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    damage, message = DAMAGE[case]
    damage(run_dir)
    before = snapshot(run_dir)

    assert export_main([str(run_dir), "--latency-repeats", "1"]) == 2

    output = caplog.text + capsys.readouterr().err
    assert f"Configuration error: run_dir={str(run_dir)!r} is not allowed: {message}" in output
    assert "Traceback" not in output
    assert snapshot(run_dir) == before  # no export/, no summary rewritten


def test_the_undamaged_run_exports(finished_run, tmp_path):
    """The check is not a refusal of every run: the same copy, undamaged, exports."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    assert export_main([str(run_dir), "--latency-repeats", "1"]) == 0
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "complete"
