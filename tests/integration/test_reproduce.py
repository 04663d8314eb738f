"""`distill-reproduce`: a shipped recipe's quick variant passes; a wrong number fails."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from distill.cli.reproduce import main

ROOT = Path(__file__).resolve().parents[2]

# A recipe of one's own, by path: digits, a tiny schedule, one deliberately wrong number.
OWN_RECIPE = """\
# @package _global_
defaults:
  - override /data: digits
  - override /teacher: cnn2d_digits
  - override /student: mlp
  - override /pruning: none
  - override /quantization: none
threads: 1
export: false
teacher:
  train:
    max_epochs: 2
trainer:
  max_epochs: 2
recipe:
  description: digits, two epochs
  measured_on: nowhere
  expected:
    student.test_acc: {value: 0.10, tolerance: 0.01}
    sparsity.global: {value: 0.0, tolerance: 0.0}
"""


def paths(tmp_path: Path) -> list[str]:
    return [
        f"paths.log_dir={tmp_path / 'logs'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "logger=none",
        "~callbacks.progress_bar",
        "trainer.enable_progress_bar=false",
    ]


def only_run(tmp_path: Path, name: str) -> Path:
    (run_dir,) = (tmp_path / "logs" / "reproduce" / name).iterdir()
    return run_dir


def test_the_default_recipe_reproduces_its_quick_numbers(tmp_path, capsys):
    # The shipped numbers themselves: this fails when code changes what the recipe reaches.
    assert main(["default", "--quick", *paths(tmp_path)]) == 0
    run_dir = only_run(tmp_path, "default")
    result = json.loads((run_dir / "reproduce.json").read_text())
    assert result["verdict"] == "PASS" and result["variant"] == "quick"
    assert {check["key"] for check in result["checks"]} >= {"student.test_acc", "sparsity.global"}
    assert all(check["verdict"] == "PASS" for check in result["checks"])
    assert result["command"].startswith("distill-train recipe=default data.num_samples=4000")
    assert (run_dir / "reproduce.md").read_text() in capsys.readouterr().out
    # The run is an ordinary distill-train run: Hydra's record and the summary are there.
    assert (run_dir / ".hydra" / "overrides.yaml").is_file()
    assert (run_dir / "summary.json").is_file()


def test_a_wrong_expected_number_fails_with_exit_status_1(tmp_path):
    recipe = tmp_path / "own.yaml"
    recipe.write_text(OWN_RECIPE)
    command = [sys.executable, "-m", "distill.cli.reproduce", str(recipe), *paths(tmp_path)]
    process = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert process.returncode == 1, process.stderr[-2000:]
    result = json.loads((only_run(tmp_path, "own") / "reproduce.json").read_text())
    assert result["verdict"] == "FAIL" and result["error"] is None
    verdicts = {check["key"]: check["verdict"] for check in result["checks"]}
    assert verdicts == {"student.test_acc": "FAIL", "sparsity.global": "PASS"}
    assert "| student.test_acc | 0.1 |" in process.stdout


def test_recipes_that_cannot_be_checked_are_refused_before_training(tmp_path, caplog):
    # No expected block; an expected key no summary holds; --quick without a quick variant.
    bare = tmp_path / "bare.yaml"
    bare.write_text("# @package _global_\nthreads: 1\n")
    typo = tmp_path / "typo.yaml"
    typo.write_text(OWN_RECIPE.replace("student.test_acc:", "student.test_ac:"))
    int8 = tmp_path / "int8.yaml"  # export: false, so no ONNX artifact
    int8.write_text(OWN_RECIPE.replace("student.test_acc:", "artifacts.onnx_int8.test_acc:"))
    cases = [
        ([str(bare)], "recipe="),
        ([str(typo)], "recipe.expected.student.test_ac="),
        ([str(int8)], "the export is off"),
        ([str(typo.with_name("own.yaml")), "--quick"], "recipe.quick="),
        (["mnist1d_kdd"], "did you mean mnist1d_kd"),
    ]
    (tmp_path / "own.yaml").write_text(OWN_RECIPE)
    for args, message in cases:
        caplog.clear()
        assert main([*args, *paths(tmp_path)]) == 2, args
        assert message in caplog.text, (args, caplog.text)
    assert "did you mean student.test_acc" in _refusal(typo, tmp_path, caplog)
    # Nothing ran: no run directory was made.
    assert not (tmp_path / "logs").exists()


def _refusal(recipe: Path, tmp_path: Path, caplog) -> str:
    caplog.clear()
    main([str(recipe), *paths(tmp_path)])
    return caplog.text
