"""End-to-end runs of the pipeline on offline data, with tiny budgets."""

from __future__ import annotations

import json

import pytest
import torch

from distill import run_summary
from distill.cli.train import _train as hydra_task
from distill.errors import ConfigError
from distill.pipeline import train

from .test_fast_dev_run import QUIET

SUMMARY_KEYS = {
    ("teacher", "test_acc"),
    ("teacher", "params_total"),
    ("student", "test_acc"),
    ("student", "params_total"),
    ("student", "params_nonzero"),
    ("sparsity", "global"),
    ("sparsity", "layers"),
    ("artifacts", "student"),
    ("timing", "fit_s"),
    ("timing", "total_s"),
}

DIGITS = [
    "data=digits",
    "teacher=cnn2d_digits",
    "student=mlp",
    "teacher.train.max_epochs=15",
    "trainer.max_epochs=20",
    "pruning=none",
    *QUIET,
]


def test_digits_run_end_to_end_then_reuses_the_cached_teacher(compose_cfg, tmp_path, monkeypatch):
    summary = train(compose_cfg(*DIGITS))
    assert summary["student"]["test_acc"] >= 0.90
    assert summary["teacher"]["test_acc"] >= 0.90
    assert summary["teacher"]["origin"] == "trained"
    assert summary["sparsity"]["global"] == 0.0
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk["seed"] == 0
    for section, key in SUMMARY_KEYS:
        assert key in on_disk[section], (section, key)
    for artifact in on_disk["artifacts"].values():
        assert (tmp_path / "run" / artifact["path"]).stat().st_size == artifact["bytes"]
    # The student artifact is a plain state_dict that loads with weights_only.
    state = torch.load(tmp_path / "run" / "student.pt", weights_only=True)
    assert sum(v.numel() for k, v in state.items()) == on_disk["student"]["params_total"]

    # The same recipe in another run directory: the teacher comes from the cache, and the
    # student's run is the same as when the teacher was trained first in the same process.
    # This time through the Hydra task itself, which returns the metric a sweeper optimizes,
    # and summary.json is written once.
    cfg = compose_cfg(*DIGITS, "optimized_metric=student.agreement", root=tmp_path / "second")
    cfg.paths.cache_dir = str(tmp_path / "cache")
    writes = []
    real_write = run_summary.atomic_write_json
    monkeypatch.setattr(
        run_summary,
        "atomic_write_json",
        lambda path, data: writes.append(path) or real_write(path, data),
    )
    returned = hydra_task.__wrapped__(cfg)
    assert writes == [tmp_path / "second" / "run" / "summary.json"]
    again = json.loads(writes[0].read_text())
    assert returned == again["student"]["agreement"]
    assert again["teacher"]["origin"] == "cache"
    assert again["teacher"]["cache_key"] == summary["teacher"]["cache_key"]
    assert again["teacher"]["test_acc"] == summary["teacher"]["test_acc"]
    assert again["student"]["test_acc"] == summary["student"]["test_acc"]
    assert again["student"]["agreement"] == summary["student"]["agreement"]


def test_a_run_directory_is_never_reused(compose_cfg, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "summary.json").write_text("{}")
    with pytest.raises(ConfigError) as error:
        train(compose_cfg(*DIGITS))
    assert error.value.field == "hydra.run.dir"


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("student.num_classes=7", "student"),
        ("teacher.model.num_classes=5", "teacher.model"),
        ("loss.kd.temperature=-1", "loss.kd.temperature"),
        ("loss.ce.weight=-0.5", "loss.ce.weight"),
        ("teacher.checkpoint=/nonexistent/teacher.pt", "teacher.checkpoint"),
        ("data.batch_size=0", "data.batch_size"),
        ("optimized_metric=accuracy", "optimized_metric"),
    ],
)
def test_bad_input_stops_before_training_and_writes_nothing(override, field, compose_cfg, tmp_path):
    with pytest.raises(ConfigError) as error:
        train(compose_cfg(*DIGITS, override))
    assert error.value.field == field
    assert not (tmp_path / "run" / "summary.json").exists()
    assert not (tmp_path / "cache" / "teachers").exists()
