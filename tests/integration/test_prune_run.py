"""Recipes with pruning, end to end: exact sparsity in summary.json, a slim artifact that runs."""

from __future__ import annotations

import json

import pytest
import torch

from distill.config import build
from distill.deploy import load_slim
from distill.errors import ConfigError
from distill.pipeline import train

from .test_train import DIGITS

SHORT_SCHEDULE = ["pruning.schedule.start=1", "pruning.schedule.num_updates=4"]
UNPRUNED_DIGITS = [override for override in DIGITS if not override.startswith("pruning=")]


def test_channel_pruned_run_ends_with_a_slim_artifact_that_matches(compose_cfg, tmp_path):
    cfg = compose_cfg(*UNPRUNED_DIGITS, "pruning=channel_l1", *SHORT_SCHEDULE)
    summary = train(cfg)
    # The MLP's one hidden layer between first and last loses exactly half its 128 neurons.
    assert summary["sparsity"]["layers"] == {
        "features.0": 0.0,
        "features.3": 0.5,
        "classifier": 0.0,
    }
    slim = summary["artifacts"]["slim"]
    assert slim["channels"] == {"features.0": 128, "features.3": 64, "classifier": 10}
    assert slim["params"] < slim["params_dense"] and slim["macs"] < slim["macs_dense"]
    run = tmp_path / "run"
    assert (run / slim["path"]).stat().st_size == slim["bytes"]

    student = build(cfg.student, "student")
    student.load_state_dict(torch.load(run / "student.pt", weights_only=True))
    student.eval()
    inputs = torch.rand(7, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(load_slim(run / slim["path"])(inputs), student(inputs), atol=1e-5)
    assert summary["student"]["test_acc"] >= 0.85


def test_unstructured_run_reports_exact_sparsity_and_nonzero_params(compose_cfg, tmp_path):
    summary = train(
        compose_cfg(
            *UNPRUNED_DIGITS,
            "pruning=agp_unstructured",
            "pruning.schedule.final_sparsity=0.9",
            *SHORT_SCHEDULE,
        )
    )
    layers = summary["sparsity"]["layers"]
    assert layers["features.3"] == pytest.approx(round(0.9 * 128 * 128) / (128 * 128))
    assert layers["features.0"] == 0.0 and layers["classifier"] == 0.0
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    state = torch.load(tmp_path / "run" / "student.pt", weights_only=True)
    nonzero = sum(int(torch.count_nonzero(value)) for value in state.values())
    # student.pt is plain (no mask buffers) and holds the effective, pruned weights.
    assert not any("parametrizations" in key for key in state)
    assert on_disk["student"]["params_nonzero"] == nonzero
    assert "slim" not in on_disk["artifacts"]


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("pruning.include=[nothing*]", "pruning.include"),
        ("pruning.schedule.final_sparsity=1.0", "pruning.schedule.final_sparsity"),
        ("pruning.unit=batch", "pruning.unit"),
        ("pruning.criterion.score=hessian", "pruning.criterion.score"),
    ],
)
def test_bad_pruning_settings_stop_before_any_training(override, field, compose_cfg, tmp_path):
    with pytest.raises(ConfigError) as error:
        train(compose_cfg(*UNPRUNED_DIGITS, "pruning=channel_l1", override))
    assert error.value.field == field
    assert not (tmp_path / "cache" / "teachers").exists()
    assert not (tmp_path / "run" / "summary.json").exists()
