"""summary.json as a typed object, and the metric a sweep optimizes."""

from __future__ import annotations

import json

import pytest

from distill.errors import ConfigError
from distill.run_summary import RunSummary, check_metric_key, metric, read_summary


def _summary(**extra) -> RunSummary:
    return RunSummary(
        seed=3,
        output_dir="/runs/a",
        data={"target": "d", "num_classes": 10, "input_shape": [1, 8, 8]},
        student={"test_acc": 0.875, "params_total": 100},
        sparsity={"global": 0.5, "layers": {}, "global_after_quantization": None},
        loss={"ce": "CrossEntropy"},
        artifacts={"student": {"path": "student.pt", "bytes": 400}},
        timing={"fit_s": 1.5},
        **extra,
    )


def test_sections_keep_their_order_and_optional_ones_are_absent(tmp_path):
    written = _summary().write(tmp_path)
    loaded = json.loads(written.read_text())
    assert list(loaded) == [
        "status",
        "seed",
        "output_dir",
        "data",
        "teacher",
        "student",
        "sparsity",
        "artifacts",
        "loss",
        "timing",
    ]
    assert loaded["teacher"] is None
    assert read_summary(tmp_path) == loaded


def test_quantization_and_deployment_appear_when_set():
    recommendation = {"artifact": "onnx_fp32", "reason": "fastest"}
    summary = _summary(
        quantization={"layers": {"fc": 8}},
        deployment=[{"name": "student"}],
        deployment_recommendation=recommendation,
    )
    assert summary.to_dict()["quantization"] == {"layers": {"fc": 8}}
    assert summary.to_dict()["deployment"] == [{"name": "student"}]
    assert summary.to_dict()["deployment_recommendation"] == recommendation


def test_metric_reads_a_number_by_dotted_key():
    summary = _summary().to_dict()
    assert metric(summary, "student.test_acc") == 0.875
    assert metric(summary, "artifacts.student.bytes") == 400.0
    with pytest.raises(ConfigError, match=r"optimized_metric='student.nope'.*'nope' is not there"):
        metric(summary, "student.nope")
    with pytest.raises(ConfigError, match="a number; this key holds"):
        metric(summary, "data.target")


@pytest.mark.parametrize(
    ("key", "exports"),
    [("student.test_acc", False), ("artifacts.onnx_int8.test_acc", True), (None, False)],
)
def test_metric_keys_a_summary_can_hold_are_accepted(key, exports):
    assert check_metric_key(key, exports) == key


@pytest.mark.parametrize(
    ("key", "exports", "message"),
    [
        ("accuracy", True, "a dotted key of summary.json"),
        ("model.test_acc", True, "a dotted key of summary.json"),
        ("student.", True, "a dotted key of summary.json"),
        ("artifacts.onnx_int8.test_acc", False, "without the export"),
    ],
)
def test_metric_keys_no_summary_could_hold_are_refused_naming_the_field(key, exports, message):
    with pytest.raises(ConfigError, match=f"optimized_metric={key!r}.*{message}"):
        check_metric_key(key, exports)


def test_a_missing_summary_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="a finished run"):
        read_summary(tmp_path)
