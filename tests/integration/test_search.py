"""distill-search end to end: real distill-train trials on digits, a search killed in the middle
of a trial and resumed by the same command, and bad input refused before anything is written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from distill.cli.search import main
from distill.search.report import INTERRUPTED_STATUS, OVER, WITHIN

BUDGET = 2600  # slim parameters: the MLP 64-32-32-10 has 3,466 dense


def search_args(tmp_path: Path) -> list[str]:
    return [
        f"paths.log_dir={tmp_path / 'logs'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"search.dir={tmp_path / 'search'}",
        "logger=none",
        "~callbacks.progress_bar",
        "trainer.enable_progress_bar=false",
        "threads=1",
        "data=digits",
        "teacher=cnn2d_digits",
        "student=mlp",
        "student.hidden_sizes=[32,32]",
        "teacher.train.max_epochs=2",
        "trainer.max_epochs=3",
        "pruning.schedule.start=0",
        "pruning.schedule.num_updates=2",
        "quantization=none",
        "export=false",
        # Only the sweeps below are searched.
        "~search.space",
        "pruning.schedule.final_sparsity=range(0.25,0.8,0.25)",
        "loss.kd.temperature=interval(1,4)",
        "search.n_trials=3",
        "search.objective=student.test_acc",
        "search.budget.metric=artifacts.slim.params",
        f"search.budget.max={BUDGET}",
    ]


def test_a_search_killed_mid_trial_resumes_and_reports_every_trial(tmp_path):
    args = search_args(tmp_path)
    search_dir = tmp_path / "search"
    first = subprocess.Popen(
        [sys.executable, "-m", "distill.cli.search", *args],
        start_new_session=True,  # its own process group: the kill takes its trial too
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not (search_dir / "trial_001" / ".hydra").is_dir():
        assert first.poll() is None, "the search ended before its second trial started"
        assert time.monotonic() < deadline
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()

    assert main(args) == 0  # the same command resumes the search in the same directory
    result = json.loads((search_dir / "search.json").read_text())
    trials = {row["number"]: row for row in result["trials"]}
    assert sorted(trials) == [0, 1, 2, 3]
    # Trial 0 is the config without the search: the recipe's own sparsity and temperature.
    assert trials[0]["base"] and trials[0]["params"] == {
        "pruning.schedule.final_sparsity": 0.5,
        "loss.kd.temperature": 4.0,
    }
    # The killed trial is listed as interrupted; its point ran again as trial 2.
    assert trials[1]["status"] == INTERRUPTED_STATUS
    assert trials[2]["retry_of"] == 1 and trials[2]["params"] == trials[1]["params"]

    finished = [trials[number] for number in (0, 2, 3)]
    for row in finished:
        summary = json.loads((search_dir / row["run_dir"] / "summary.json").read_text())
        # The numbers are the trial's own summary.json's, and the budget verdict follows them.
        assert row["objective"] == summary["student"]["test_acc"]
        assert row["budget_value"] == summary["artifacts"]["slim"]["params"]
        assert row["status"] == (WITHIN if row["budget_value"] <= BUDGET else OVER)
        # The command the report prints is the run: the overrides Hydra recorded for it.
        recorded = yaml.safe_load(
            (search_dir / row["run_dir"] / ".hydra" / "overrides.yaml").read_text()
        )
        command = row["command"].split()
        assert command[0] == "distill-train"
        assert [item.strip("'") for item in command[1:]] == [
            item for item in recorded if not item.startswith("hydra.run.dir=")
        ]
    within = [row for row in finished if row["status"] == WITHIN]
    if within:
        best = max(within, key=lambda row: (row["objective"], -row["number"]))
        assert result["best"]["number"] == best["number"]
    else:
        closest = min(finished, key=lambda row: (row["budget_value"], row["number"]))
        assert result["best"] is None and result["closest"]["number"] == closest["number"]
    for name in ("search.md", "report.md", "report.csv", "accuracy_vs_bytes.png"):
        assert (search_dir / name).is_file(), name
    assert "interrupted (retried)" in (search_dir / "search.md").read_text()


@pytest.mark.parametrize(
    ("override", "field", "says"),
    [
        (
            "search.budget.metric=artifacts.slim.parms",
            "search.budget.metric",
            "artifacts.slim.params",
        ),
        ("search.budget.metric=artifacts.onnx_int8.bytes", "search.budget.metric", "export is off"),
        ("search.objective=student.accuracy", "search.objective", "student.test_acc"),
        (
            "pruning.schedule.final_sparsity=range(5,5)",
            "search.space.pruning.schedule.final_sparsity",
            "two or more",
        ),
        (
            "loss.kd.temperature=interval(4,1)",
            "search.space.loss.kd.temperature",
            "low is below its high",
        ),
        (
            "pruning.schedule.final_sparsity=interval(0.5,1.0)",
            "search.space.pruning.schedule.final_sparsity",
            "1.0",
        ),
        ("loss.kd.temprature=interval(1,2)", "search.space.loss.kd.temprature", "temprature"),
        ("search.n_trials=0", "search.n_trials", "an integer >= 1"),
        (
            "search.sampler._target_=optuna.samplers.NoSuchSampler",
            "search.sampler._target_",
            "an Optuna sampler",
        ),
        ("recipe=defualt", "recipe", "default"),
    ],
)
def test_bad_input_is_refused_before_the_search_directory_exists(
    tmp_path, caplog, override, field, says
):
    assert main([*search_args(tmp_path), override]) == 2
    message = caplog.text
    assert f"{field}=" in message and says in message and "Traceback" not in message
    assert not (tmp_path / "search").exists()


def test_a_seed_override_with_search_seeds_is_refused(tmp_path, caplog):
    assert main([*search_args(tmp_path), "search.seeds=[0,1]", "seed=3"]) == 2
    assert "seed=['seed=3'] is not allowed: no seed override when search.seeds" in caplog.text
    assert not (tmp_path / "search").exists()


def test_a_fixed_setting_distill_train_refuses_is_refused_by_the_plan(tmp_path, caplog):
    assert main([*search_args(tmp_path), "trainer.max_epochs=0"]) == 2
    assert "trainer.max_epochs=0 is not allowed: an integer >= 1" in caplog.text
    assert not (tmp_path / "search").exists()


def test_confirm_seeds_a_trial_uses_are_refused(tmp_path, caplog):
    assert main([*search_args(tmp_path), "search.confirm_seeds=[0,7]"]) == 2
    assert "search.confirm_seeds=[0, 7] is not allowed: seeds no trial uses" in caplog.text
    assert not (tmp_path / "search").exists()
