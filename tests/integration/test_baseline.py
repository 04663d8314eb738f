"""`baseline=true`: the labels-only student next to the distilled one, and the KD gain."""

from __future__ import annotations

import json

import pytest
import torch
from rich.console import Console

from distill.errors import ConfigError
from distill.pipeline import train
from distill.summary import print_summary
from tests.conftest import compose_train

from .test_fast_dev_run import QUIET

DIGITS = [
    "data=digits",
    "teacher=cnn2d_digits",
    "student=mlp",
    "teacher.train.max_epochs=2",
    "trainer.max_epochs=2",
    "pruning=none",
    "quantization=none",
    *QUIET,
]


def test_baseline_trains_the_labels_only_student_and_reports_the_gain(tmp_path):
    with_baseline = train(compose_train([*DIGITS, "baseline=true"], tmp_path / "a"))
    alone = train(compose_train(DIGITS, tmp_path / "b"))
    run_dir = tmp_path / "a" / "run"
    baseline = json.loads((run_dir / "baseline" / "summary.json").read_text())
    # The baseline is the same run from the labels alone: no teacher, cross-entropy only.
    assert baseline["teacher"] is None and baseline["loss"] == {"ce": "CrossEntropy"}
    assert baseline["student"]["params_total"] == alone["student"]["params_total"]
    section = with_baseline["baseline"]
    assert section["output_dir"] == "baseline"
    assert section["test_acc"] == {"student.test_acc": baseline["student"]["test_acc"]}
    assert section["kd_gain"] == {
        "student.test_acc": with_baseline["student"]["test_acc"] - baseline["student"]["test_acc"]
    }
    # Training the baseline first changes nothing in the distilled run.
    assert with_baseline["student"] == alone["student"]
    states = [
        torch.load(d / "run" / "student.pt", weights_only=True)
        for d in (tmp_path / "a", tmp_path / "b")
    ]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk["baseline"] == section
    # The table distill-train prints ends the run with the answer: did distillation pay?
    console = Console(record=True, width=200)
    print_summary(on_disk, console)
    labels_only = 100 * section["test_acc"]["student.test_acc"]
    gain = 100 * section["kd_gain"]["student.test_acc"]
    (line,) = [row for row in console.export_text().splitlines() if "labels only (no KD)" in row]
    assert f"{labels_only:.2f}% (KD {gain:+.2f} pts)" in line


def test_a_labels_only_run_asked_for_a_baseline_is_refused_before_training(tmp_path):
    cfg = compose_train([*DIGITS, "baseline=true", "loss=[ce]"], tmp_path)
    with pytest.raises(ConfigError) as error:
        train(cfg)
    assert error.value.field == "baseline"
    assert not (tmp_path / "run" / "summary.json").exists()
    assert not (tmp_path / "run" / "baseline").exists()


def test_the_baseline_numbers_are_keys_a_recipe_or_search_may_use(tmp_path):
    from distill.assembly import assemble
    from distill.reproduce import summary_metric_keys

    keys = summary_metric_keys(assemble(compose_train([*DIGITS, "baseline=true"], tmp_path)))
    assert {"baseline.kd_gain.student.test_acc", "baseline.test_acc.student.test_acc"} <= keys
    assert "baseline.kd_gain.teacher.test_acc" not in keys
