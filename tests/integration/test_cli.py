"""The `distill-train` console script: help, printed config, and errors with exit codes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

DIGITS_QUICK = [
    "data=digits",
    "teacher=cnn2d_digits",
    "student=mlp",
    "logger=none",
    "callbacks=none",
    "trainer.enable_progress_bar=false",
]


def run_cli(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "DISTILL_CACHE_DIR": str(cwd / "cache"), "WANDB_MODE": "offline"}
    return subprocess.run(
        [sys.executable, "-m", "distill.cli.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_help_lists_the_config_groups(tmp_path):
    result = run_cli("--help", cwd=tmp_path)
    assert result.returncode == 0
    for line in (
        "data: cifar10, cifar100, digits, image_folder, mnist1d",
        "loss: at, cc, ce, crd",
        "logger: csv, none",
    ):
        assert line in result.stdout


def test_cfg_job_prints_the_composed_config_with_overrides(tmp_path):
    result = run_cli("--cfg", "job", "student=mlp", "loss.kd.temperature=2", cwd=tmp_path)
    assert result.returncode == 0
    assert "_target_: distill.models.MLP" in result.stdout
    assert "temperature: 2" in result.stdout
    assert not (tmp_path / "outputs").exists()


def test_unknown_group_option_lists_the_available_ones(tmp_path):
    result = run_cli("student=resnet9000", cwd=tmp_path)
    assert result.returncode == 2  # refused as a configuration error, before Hydra's app
    assert "student='resnet9000' is not allowed: an option of student:" in result.stderr
    assert "mlp" in result.stderr  # the available options are listed


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("loss.kd.temperature=0", "loss.kd.temperature=0 is not allowed: a finite number > 0"),
        ("student.num_classes=3", "student='distill.models.mlp.MLP' is not allowed"),
        ("teacher.checkpoint=missing.pt", "teacher.checkpoint='missing.pt' is not allowed"),
    ],
)
def test_bad_values_exit_2_with_a_message_and_no_summary(override, message, tmp_path):
    result = run_cli(*DIGITS_QUICK, override, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stdout + result.stderr
    assert not list(tmp_path.glob("outputs/**/summary.json"))
    assert not (tmp_path / "cache" / "teachers").exists()
