"""Run directories and recipes from someone else, through the real entry points.

`distill-export RUN_DIR` builds only targets under the allowlist (distill.trust) plus the
prefixes its own command line gives (`--trust-targets`); the run's config.yaml cannot extend it.
`distill-train` takes extra prefixes from its command line only (`trusted_targets=[...]`), never
from a recipe. A refusal is exit 2 naming the field and the target, before anything is built:
each evil config would create a marker file if it ran, and the run directory is left as it was.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from distill.cli.export import main as export_main
from distill.cli.train import main as train_main
from distill.models import MLP
from distill.pipeline import train
from distill.trust import DEFAULT_PREFIXES
from tests.conftest import compose_train

RUN = [
    "data=digits",
    "teacher=cnn2d_digits",
    "student=mlp",
    "student.hidden_sizes=[16]",
    "teacher.train.max_epochs=1",
    "trainer.max_epochs=1",
    "pruning=none",
    "quantization=none",
    "export=false",
    "logger=none",
    "callbacks=none",
    "threads=1",
    "trainer.enable_progress_bar=false",
]
OWN = __name__  # the user's own package, in these tests
ALLOWED = f"a class or function under an allowed prefix: {', '.join(DEFAULT_PREFIXES)}"
EXPORT_HINT = (
    "(add one with distill-export RUN_DIR --trust-targets PREFIX; a run directory's own "
    "trusted_targets is not read)"
)
TRAIN_HINT = "(add one on the command line: trusted_targets=[PREFIX])"


class TrustedMLP(MLP):
    """A student class of the user's own package: the same weights as MLP."""


def evil_pickle(folder: Path, marker: Path) -> Path:
    """A file that creates `marker` when unpickled whole (torch.load, weights_only=False)."""

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = folder / "evil.pt"
    torch.save(Evil(), path)
    return path


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under `folder`, with its size and modification time."""
    return {
        str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in folder.rglob("*")
    }


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished distill-train run (no export yet), as someone might send it."""
    root = tmp_path_factory.mktemp("sent")
    train(compose_train(RUN, root))
    return root / "run"


def received(run_dir: Path, tmp_path: Path, changes: dict) -> Path:
    """A copy of the run whose config.yaml has `changes` (dotted key -> value) written in."""
    copy = tmp_path / "received"
    shutil.copytree(run_dir, copy)
    cfg = OmegaConf.load(copy / "config.yaml")
    for key, value in changes.items():
        OmegaConf.update(cfg, key, value, merge=False, force_add=True)
    (copy / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    return copy


def evil_changes(case: str, marker: Path, evil: Path) -> tuple[dict, str, str]:
    """(the config.yaml changes, the field refused, its target) of each evil run directory."""
    touch = ["touch", str(marker)]
    return {
        "data_unpickles_a_file": (
            {"data": {"_target_": "torch.load", "f": str(evil), "weights_only": False}},
            "data._target_",
            "torch.load",
        ),
        "inside_the_student": (
            {"student.activation": {"_target_": "os.system", "_args_": [shlex.join(touch)]}},
            "student.activation._target_",
            "os.system",
        ),
        "inside_a_loss_term_export_never_builds": (
            {"loss.kd.extra": {"_target_": "builtins.eval", "_args_": [f"open('{marker}', 'w')"]}},
            "loss.kd.extra._target_",
            "builtins.eval",
        ),
        "in_the_students_positional_arguments": (
            {"student._args_": [{"_target_": "subprocess.run", "args": touch}]},
            "student._args_[0]._target_",
            "subprocess.run",
        ),
        "trusting_itself": (
            {
                "trusted_targets": ["os"],
                "data": {"_target_": "os.system", "_args_": [shlex.join(touch)]},
            },
            "data._target_",
            "os.system",
        ),
    }[case]


@pytest.mark.parametrize(
    "case",
    [
        "data_unpickles_a_file",
        "inside_the_student",
        "inside_a_loss_term_export_never_builds",
        "in_the_students_positional_arguments",
        "trusting_itself",
    ],
)
def test_export_refuses_a_run_naming_code_outside_the_allowlist_before_anything_runs(
    case, finished_run, tmp_path, caplog
):
    marker = tmp_path / "pwned"
    changes, field, target = evil_changes(case, marker, evil_pickle(tmp_path, marker))
    run_dir = received(finished_run, tmp_path, changes)
    before = snapshot(run_dir)

    assert export_main([str(run_dir), "--latency-repeats", "1"]) == 2

    assert f"Configuration error: {field}={target!r} is not allowed: {ALLOWED} " in caplog.text
    assert EXPORT_HINT in caplog.text
    assert "Traceback" not in caplog.text
    assert not marker.exists()
    assert snapshot(run_dir) == before


def test_export_builds_the_users_own_model_only_under_a_prefix_its_command_line_trusts(
    finished_run, tmp_path, caplog
):
    # The run says it trusts the prefix: a run directory cannot trust code for itself.
    changes = {"student._target_": f"{OWN}.TrustedMLP", "trusted_targets": [OWN]}
    run_dir = received(finished_run, tmp_path, changes)
    before = snapshot(run_dir)
    assert export_main([str(run_dir), "--latency-repeats", "1"]) == 2
    refused = f"Configuration error: student._target_='{OWN}.TrustedMLP' is not allowed: {ALLOWED}"
    assert f"{refused} {EXPORT_HINT}" in caplog.text
    assert snapshot(run_dir) == before

    assert export_main([str(run_dir), "--latency-repeats", "1", "--trust-targets", OWN]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (run_dir / summary["artifacts"]["onnx_fp32"]["path"]).is_file()
    assert (run_dir / summary["artifacts"]["compressed"]["path"]).is_file()


def test_export_of_a_run_with_an_allowed_config_still_works(finished_run, tmp_path):
    run_dir = received(finished_run, tmp_path, {})
    assert export_main([str(run_dir), "--latency-repeats", "1"]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (run_dir / summary["artifacts"]["onnx_int8"]["path"]).is_file()


def test_export_refuses_a_trust_flag_that_names_no_module(finished_run, tmp_path, caplog):
    run_dir = received(finished_run, tmp_path, {})
    before = snapshot(run_dir)
    assert export_main([str(run_dir), "--trust-targets", "my pkg"]) == 2
    assert (
        "Configuration error: --trust-targets=['my pkg'] is not allowed: a list of module "
        "prefixes, e.g. [my_pkg.models]"
    ) in caplog.text
    assert snapshot(run_dir) == before


# --- distill-train ----------------------------------------------------------------------------


def run_train(overrides: list[str], tmp_path: Path, monkeypatch) -> tuple[int, Path]:
    """`distill-train` in-process on the tiny run; (exit status, run directory)."""
    run_dir = tmp_path / "run"
    argv = [
        *RUN,
        "+trainer.max_time=00:00:00:20",  # a refusal that regressed must not train for long
        f"hydra.run.dir={run_dir}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"paths.log_dir={tmp_path / 'logs'}",
        *overrides,
    ]
    monkeypatch.setattr(sys, "argv", ["distill-train", *argv])
    try:
        train_main()
    except SystemExit as exited:
        return int(exited.code or 0), run_dir
    return 0, run_dir


@pytest.mark.parametrize(
    ("overrides", "field", "target"),
    [
        (["student._target_=os.system"], "student._target_", "os.system"),
        (
            ["+student.extra={_target_:subprocess.run,args:[touch,'{marker}']}"],
            "student.extra._target_",
            "subprocess.run",
        ),
        # Built late (the teacher trains first), refused first.
        (
            ["teacher.train.optimizer._target_=builtins.exec"],
            "teacher.train.optimizer._target_",
            "builtins.exec",
        ),
        # The user's own model, without the prefix that trusts it.
        ([f"student._target_={OWN}.TrustedMLP"], "student._target_", f"{OWN}.TrustedMLP"),
    ],
)
def test_train_refuses_a_target_outside_the_allowlist_before_any_work(
    overrides, field, target, tmp_path, monkeypatch, capsys
):
    marker = tmp_path / "pwned"
    overrides = [override.replace("{marker}", str(marker)) for override in overrides]
    status, run_dir = run_train(overrides, tmp_path, monkeypatch)
    output = "".join(capsys.readouterr())
    assert status == 2, output[-3000:]
    assert f"Configuration error: {field}={target!r} is not allowed: {ALLOWED} {TRAIN_HINT}" in (
        output
    )
    assert not marker.exists()
    assert not run_dir.exists()  # refused in the task: the directory Hydra made is gone
    assert not (tmp_path / "cache").exists()  # no teacher trained


def test_train_builds_the_users_own_model_under_a_prefix_its_command_line_trusts(
    tmp_path, monkeypatch
):
    overrides = [f"student._target_={OWN}.TrustedMLP", f"trusted_targets=[{OWN}]"]
    status, run_dir = run_train(overrides, tmp_path, monkeypatch)
    assert status == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["student"]["target"] == f"{OWN}.TrustedMLP"


def recipe_folder(tmp_path: Path, text: str) -> str:
    """An outside folder of recipes holding `mine.yaml`; the override that finds it."""
    folder = tmp_path / "recipes"
    folder.mkdir()
    (folder / "mine.yaml").write_text(f"# @package _global_\n{text}")
    return f"hydra.searchpath=[distill-recipes://{folder}]"


def test_a_recipe_cannot_trust_code_for_itself(tmp_path, monkeypatch, capsys):
    searchpath = recipe_folder(
        tmp_path, f"trusted_targets: [{OWN}]\nstudent:\n  _target_: {OWN}.TrustedMLP\n"
    )
    status, run_dir = run_train([searchpath, "recipe=mine"], tmp_path, monkeypatch)
    output = "".join(capsys.readouterr())
    assert status == 2, output[-3000:]
    assert (
        f"Configuration error: trusted_targets=['{OWN}'] is not allowed: set on the command "
        "line only (trusted_targets=[PREFIX]): a recipe or config file cannot trust code for "
        "itself"
    ) in output
    assert not run_dir.exists()  # refused in the task: the directory Hydra made is gone


def test_a_recipe_cannot_add_to_what_hydra_builds_itself(tmp_path, monkeypatch, capsys):
    marker = tmp_path / "pwned"
    searchpath = recipe_folder(
        tmp_path,
        "hydra:\n  callbacks:\n    evil:\n      _target_: builtins.open\n"
        f"      file: {marker}\n      mode: w\n",
    )
    status, run_dir = run_train([searchpath, "recipe=mine"], tmp_path, monkeypatch)
    output = capsys.readouterr().err
    assert status == 2
    assert "mine.yaml: a recipe may not set hydra.*" in output
    assert not marker.exists()
    assert not run_dir.exists()  # refused before Hydra's app made the run directory
