"""Recipe files: found by name or path, their expected blocks read and checked."""

from __future__ import annotations

import signal

import pytest
from omegaconf import OmegaConf

from distill.errors import ConfigError
from distill.interruption import RunInterrupted
from distill.recipe import RECIPES_DIR, Expectation, find_recipe, read_recipe, recipe_names
from distill.reproduce import compare, lookup, markdown, write_reproduction


def recipe_cfg(**recipe):
    return OmegaConf.create({"seed": 0, "recipe": recipe})


EXPECTED = {"student.test_acc": {"value": 0.9, "tolerance": 0.01}}


def test_every_shipped_recipe_says_what_it_expects(compose_cfg):
    assert "default" in recipe_names() and "mnist1d_kd" in recipe_names()
    for name in recipe_names():
        recipe = read_recipe(compose_cfg(f"recipe={name}"), name)
        assert recipe.expected, name
        assert recipe.measured_on != "not recorded", name


def test_recipes_are_found_by_name_or_path_and_unknown_names_get_close_ones(tmp_path):
    assert find_recipe("mnist1d_kd") == (RECIPES_DIR, "mnist1d_kd")
    own = tmp_path / "mine.yaml"
    own.write_text("# @package _global_\n")
    assert find_recipe(str(own)) == (tmp_path, "mine")
    with pytest.raises(ConfigError) as error:
        find_recipe("mnist1d_kdd")
    assert error.value.field == "recipe" and error.value.value == "mnist1d_kdd"
    assert "did you mean mnist1d_kd" in str(error.value)
    with pytest.raises(ConfigError, match="an existing recipe file"):
        find_recipe(str(tmp_path / "absent.yaml"))


def test_a_recipe_block_is_read_with_its_quick_variant():
    cfg = recipe_cfg(
        description="d",
        measured_on="here",
        expected=EXPECTED,
        quick={"overrides": ["trainer.max_epochs=1"], "expected": EXPECTED},
    )
    recipe = read_recipe(cfg, "r")
    assert recipe.expected == {"student.test_acc": Expectation(0.9, 0.01)}
    assert recipe.quick_overrides == ("trainer.max_epochs=1",)
    assert recipe.has_quick and recipe.expectations(quick=True) == recipe.expected


@pytest.mark.parametrize(
    ("recipe", "field"),
    [
        (None, "recipe"),
        ({"description": "no numbers"}, "recipe.expected"),
        ({"expected": {}}, "recipe.expected"),
        ({"expected": EXPECTED, "expect": 1}, "recipe.expect"),
        ({"expected": {"student.test_acc": 0.9}}, "recipe.expected.student.test_acc"),
        (
            {"expected": {"student.test_acc": {"value": "high", "tolerance": 0.1}}},
            "recipe.expected.student.test_acc.value",
        ),
        (
            {"expected": {"student.test_acc": {"value": 0.9, "tolerance": -1}}},
            "recipe.expected.student.test_acc.tolerance",
        ),
        (
            {"expected": {"student.test_acc": {"value": 0.9, "tol": 0.1}}},
            "recipe.expected.student.test_acc.tol",
        ),
        ({"expected": EXPECTED, "quick": {"overrides": "a=1"}}, "recipe.quick.overrides"),
        ({"expected": EXPECTED, "quick": {"expected": {}}}, "recipe.quick.expected"),
    ],
)
def test_bad_recipe_blocks_are_refused_naming_the_field(recipe, field):
    cfg = OmegaConf.create({"recipe": recipe})
    with pytest.raises(ConfigError) as error:
        read_recipe(cfg, "r")
    assert error.value.field == field


def test_checks_pass_within_the_tolerance_and_fail_outside_or_when_missing(tmp_path):
    expectations = {
        "student.test_acc": Expectation(0.9455, 0.01),
        "teacher.test_acc": Expectation(0.97, 0.001),
        "artifacts.onnx_int8.test_acc": Expectation(0.94, 0.01),
        "artifacts.compressed.bytes": Expectation(3202, 0),
    }
    summary = {
        "student": {"test_acc": 0.9355},  # exactly at the tolerance
        "teacher": {"test_acc": 0.975},
        "artifacts": {"compressed": {"bytes": 3202}},
    }
    assert lookup(summary, "artifacts.compressed.bytes") == 3202.0
    assert lookup(summary, "artifacts.onnx_int8.test_acc") is None
    checks = compare(expectations, summary)
    assert [(c.key, c.verdict) for c in checks] == [
        ("student.test_acc", "PASS"),
        ("teacher.test_acc", "FAIL"),
        ("artifacts.onnx_int8.test_acc", "FAIL"),
        ("artifacts.compressed.bytes", "PASS"),
    ]
    recipe = read_recipe(recipe_cfg(expected=EXPECTED, measured_on="m"), "r")
    result = write_reproduction(tmp_path, recipe, False, checks, "distill-train recipe=r")
    assert result["verdict"] == "FAIL"
    text = (tmp_path / "reproduce.md").read_text()
    assert text == markdown(result)
    assert "| teacher.test_acc | 0.97 | 0.975 | ±0.001 | FAIL |" in text
    assert "| artifacts.onnx_int8.test_acc | 0.94 | missing | ±0.01 | FAIL |" in text
    passing = write_reproduction(tmp_path, recipe, False, checks[:1], "c")
    assert passing["verdict"] == "PASS"
    # A run that failed is a FAIL whatever its checks say.
    failed = write_reproduction(tmp_path, recipe, False, checks[:1], "c", error="exit 1")
    assert failed["verdict"] == "FAIL"


class _RunStoppedByCtrlC:
    """A distill-train child as Ctrl+C finds it: waiting on it is interrupted."""

    def __init__(self, *args, **kwargs) -> None:
        self.signals: list[str] = []
        self.returncode: int | None = None

    def wait(self) -> int:
        raise RunInterrupted(signal.SIGINT)

    def poll(self) -> int | None:
        return self.returncode

    def terminate(self) -> None:
        self.signals.append("SIGTERM")
        self.returncode = 143

    def communicate(self, timeout=None):
        return None, None


def test_ctrl_c_during_a_reproduction_leaves_no_verdict_and_exits_130(
    tmp_path, monkeypatch, caplog
):
    from distill import reproduce_run
    from distill.cli.reproduce import main

    started: list[_RunStoppedByCtrlC] = []

    def popen(*args, **kwargs):
        started.append(_RunStoppedByCtrlC())
        return started[-1]

    run_dir = tmp_path / "run"
    monkeypatch.setattr(reproduce_run, "prepare", lambda *a: (None, ["recipe=default"], run_dir))
    monkeypatch.setattr(reproduce_run.subprocess, "Popen", popen)
    assert main(["default"]) == 130
    assert started[0].signals == ["SIGTERM"]  # the run was told to stop, not left running
    assert not (run_dir / "reproduce.json").exists()  # an interrupted run is not a FAIL
    assert f"distill-train resume={run_dir}" in caplog.text
