"""A QAT run end to end: every deployment artifact exists, runs, and is measured against torch."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from distill.cli.export import main as export_main
from distill.compression import Quantizer
from distill.config import build
from distill.deploy.artifacts import export_run
from distill.deploy.compressed import load_compressed
from distill.deploy.onnx_runtime import OrtModel, export_onnx
from distill.errors import ConfigError, ExportError
from distill.interruption import RunInterrupted
from distill.pipeline import train
from tests.conftest import compose_train

RUNNABLE = ("onnx_fp32", "onnx_int8", "onnx_int8_ptq_static", "onnx_int8_dynamic", "compressed")
QAT_DIGITS = [
    "data=digits",
    "teacher=cnn2d_digits",
    "student=cnn2d_small",
    "teacher.train.max_epochs=10",
    "trainer.max_epochs=8",
    "pruning.schedule.start=1",
    "pruning.schedule.num_updates=3",
    "quantization.start_epoch=4",
    "quantization.observer_freeze_epoch=7",
    "export=true",
    "export_latency_repeats=2",
    "logger=none",
    "callbacks=none",
    "trainer.enable_progress_bar=false",
]


@pytest.fixture(scope="module")
def qat_run(tmp_path_factory) -> tuple[Path, dict, object]:
    """One pruned + QAT run with export, shared by the tests below (they only read it)."""
    root = tmp_path_factory.mktemp("qat")
    cfg = compose_train(QAT_DIGITS, root)
    summary = train(cfg)
    return root / "run", summary, cfg


def test_every_artifact_is_listed_with_its_size_and_measurements(qat_run):
    run_dir, summary, _ = qat_run
    artifacts = summary["artifacts"]
    for name in (*RUNNABLE, "report_md", "report_json", "report_png"):
        path = run_dir / artifacts[name]["path"]
        assert path.stat().st_size == artifacts[name]["bytes"], name
    for name in RUNNABLE:
        entry = artifacts[name]
        assert 0.0 <= entry["test_acc"] <= 1.0, name
        assert 0.0 <= entry["agreement"] <= 1.0, name
        assert entry["latency_ms_bs1"] > 0 and entry["latency_ms_bs64"] > 0, name
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk["artifacts"].keys() == artifacts.keys()
    assert {row["name"] for row in on_disk["deployment"]} == {"teacher", "student", *RUNNABLE}


def test_int8_onnx_carries_the_learned_scales_and_agrees_with_the_fake_quant_student(qat_run):
    _, summary, _ = qat_run
    int8 = summary["artifacts"]["onnx_int8"]
    assert int8["method"] == "qat" and int8["weight_bits"] == [8]
    assert int8["agreement"] >= 0.99
    # Both convs run as int8 kernels; the max-pools and the global pool stay float, by name.
    assert (int8["convs"], int8["int8_convs"]) == (2, 2)
    assert int8["float_ops"] == [
        "MaxPool at features.3",
        "MaxPool at features.7",
        "ReduceMean at avgpool",
    ]
    # Checked in onnxruntime with graph optimizations off and on.
    assert int8["opt_agreement"] >= 0.99
    assert summary["quantization"]["folded"] is True
    assert summary["quantization"]["batchnorm_folds"] == 2  # both convs are followed by a BN


def test_fp32_onnx_is_the_slim_student_and_matches_the_torch_student(qat_run):
    run_dir, summary, cfg = qat_run
    student = build(cfg.student, "student")
    student.load_state_dict(torch.load(run_dir / "student.pt", weights_only=True))
    student.eval()
    inputs = torch.rand(16, 1, 8, 8)
    onnx_model = OrtModel(run_dir / summary["artifacts"]["onnx_fp32"]["path"])
    with torch.no_grad():
        expected = student(inputs).numpy()
    np.testing.assert_allclose(onnx_model(inputs), expected, atol=1e-4)
    assert summary["artifacts"]["onnx_fp32"]["agreement"] == 1.0
    # Channel pruning removed half the prunable channels from the exported graph.
    assert summary["artifacts"]["slim"]["params"] < summary["student"]["params_total"]


def test_compressed_student_restores_student_pt_exactly_and_is_smaller(qat_run):
    run_dir, summary, _ = qat_run
    entry = summary["artifacts"]["compressed"]
    restored = load_compressed(run_dir / entry["path"]).state_dict()
    expected = torch.load(run_dir / "student.pt", weights_only=True)
    assert restored.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(restored[key], value), key
    assert entry["bytes"] < entry["bytes_dense_fp32"]
    assert entry["ratio"] == pytest.approx(entry["bytes_dense_fp32"] / entry["bytes"])
    assert entry["encodings"]["int8"] == 3  # both convs and the classifier: int8 weights


def test_report_puts_every_model_side_by_side(qat_run):
    run_dir, summary, _ = qat_run
    report = json.loads((run_dir / summary["artifacts"]["report_json"]["path"]).read_text())
    names = [row["name"] for row in report["rows"]]
    assert names[:2] == ["teacher", "student"] and set(RUNNABLE) <= set(names)
    markdown = (run_dir / summary["artifacts"]["report_md"]["path"]).read_text()
    assert all(f"| {name} |" in markdown for name in names)
    # The int8 rows say what onnxruntime runs in int8 and name what it keeps in float.
    assert (
        "**onnx_int8**: int8 kernels for 2 of 2 convs; kept in float: MaxPool x2 (features.3, "
        "features.7); ReduceMean x1 (avgpool)"
    ) in markdown
    assert "## Latency toward the MACs bound" in markdown and "## Recommendation" in markdown


def test_every_artifact_row_has_its_macs_ratio_and_a_recommendation_is_made(qat_run):
    run_dir, summary, _ = qat_run
    rows = {row["name"]: row for row in summary["deployment"]}
    slim = summary["artifacts"]["slim"]
    for name in RUNNABLE:
        row = rows[name]
        assert row["exported"] is True and row["precision"] in ("fp32", "int8"), name
        dense = name == "compressed"  # restores the dense student
        assert row["macs"] == (slim["macs_dense"] if dense else slim["macs"]), name
        assert row["macs_ratio"] == pytest.approx(slim["macs_dense"] / row["macs"]), name
        for batch in ("bs1", "bs64"):
            assert row[f"speedup_per_macs_ratio_{batch}"] == pytest.approx(
                row[f"speedup_{batch}"] / row["macs_ratio"]
            ), name
    assert "exported" not in rows["student"] and "exported" not in rows["teacher"]
    chosen = summary["deployment_recommendation"]
    assert chosen["artifact"] in RUNNABLE and chosen["artifact"] in chosen["eligible"]
    on_disk = json.loads((run_dir / "summary.json").read_text())
    report = json.loads((run_dir / summary["artifacts"]["report_json"]["path"]).read_text())
    assert on_disk["deployment_recommendation"] == report["recommendation"] == chosen
    assert on_disk["deployment"] == report["rows"]


def _copy_run(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    return copy


def test_distill_export_redoes_the_export_of_a_run_directory(qat_run, tmp_path, capsys):
    run_dir, summary, _ = qat_run
    copy = _copy_run(run_dir, tmp_path)
    shutil.rmtree(copy / "export")
    assert export_main([str(copy), "--latency-repeats", "1"]) == 0
    again = json.loads((copy / "summary.json").read_text())
    assert again["artifacts"].keys() == summary["artifacts"].keys()
    assert again["deployment_recommendation"]["artifact"] in RUNNABLE
    # Same learned scales and weights: the same int8 predictions.
    assert (
        again["artifacts"]["onnx_int8"]["test_acc"] == summary["artifacts"]["onnx_int8"]["test_acc"]
    )
    assert not list(copy.glob(".export-*"))


def test_export_of_a_run_without_a_trained_student_is_refused(qat_run, tmp_path, caplog):
    copy = _copy_run(qat_run[0], tmp_path)
    (copy / "student_state.pt").unlink()
    assert export_main([str(copy)]) == 2
    assert "student_state.pt" in caplog.text and "did the run finish" in caplog.text


def test_a_failed_export_leaves_no_artifact_and_the_summary_untouched(
    qat_run, tmp_path, monkeypatch
):
    copy = _copy_run(qat_run[0], tmp_path)
    shutil.rmtree(copy / "export")
    before = (copy / "summary.json").read_text()

    def broken(*args, **kwargs):
        raise ExportError("simulated failure in the int8 export")

    monkeypatch.setattr(Quantizer, "convert", broken)
    with pytest.raises(ExportError, match="simulated"):
        export_run(copy, latency_repeats=1)
    assert not (copy / "export").exists()
    assert not list(copy.glob(".export-*"))
    assert (copy / "summary.json").read_text() == before


def test_weights_below_seven_bits_are_refused_before_training_when_exporting(tmp_path):
    cfg = compose_train([*QAT_DIGITS, "quantization.layer_bits={features.4: 4}"], tmp_path)
    with pytest.raises(ConfigError, match=r"quantization.layer_bits\[features.4\]=4"):
        train(cfg)
    assert not (tmp_path / "run" / "summary.json").exists()
    assert not (tmp_path / "cache").exists()  # no teacher was trained


def test_qat_that_would_start_after_the_last_epoch_is_refused(tmp_path):
    cfg = compose_train(
        [*QAT_DIGITS, "quantization.start_epoch=8", "quantization.observer_freeze_epoch=null"],
        tmp_path,
    )
    with pytest.raises(ConfigError, match=r"quantization.start_epoch=8.*max_epochs=8"):
        train(cfg)


class _Bessel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.special.bessel_j0(x))


def test_an_op_onnx_cannot_express_is_named_and_no_file_is_left(tmp_path):
    with pytest.raises(ExportError, match="bessel_j0"):
        export_onnx(_Bessel(), torch.randn(2, 4), tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []


def test_a_fixed_batch_export_runs_only_that_batch_and_matches_the_dynamic_one(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3))
    inputs = torch.randn(5, 1, 8)
    fixed = OrtModel(export_onnx(model, inputs, tmp_path / "fixed.onnx", dynamic_batch=False))
    dynamic = OrtModel(export_onnx(model, inputs[:2], tmp_path / "dynamic.onnx"))
    np.testing.assert_allclose(fixed(inputs), dynamic(inputs), rtol=1e-5, atol=1e-6)
    assert dynamic(inputs[:1]).shape == (1, 3)
    with pytest.raises(ExportError, match=r"input of shape \(1, 1, 8\)"):
        fixed(inputs[:1])


def test_an_input_shape_the_exported_student_cannot_take_is_a_clear_error(qat_run):
    run_dir, summary, _ = qat_run
    onnx_model = OrtModel(run_dir / summary["artifacts"]["onnx_fp32"]["path"])
    with pytest.raises(ExportError, match=r"input of shape \(2, 1, 5, 5\)"):
        onnx_model(torch.rand(2, 1, 5, 5))


def numeric_keys(node, prefix="") -> set[str]:
    """Dotted keys of every number in a summary."""
    if isinstance(node, dict):
        return set().union(*(numeric_keys(v, f"{prefix}{k}.") for k, v in node.items()))
    is_number = isinstance(node, int | float) and not isinstance(node, bool)
    return {prefix.rstrip(".")} if is_number else set()


def test_the_keys_a_recipe_may_expect_are_the_numbers_the_summary_holds(qat_run):
    from distill.assembly import assemble
    from distill.reproduce import summary_metric_keys

    _, summary, cfg = qat_run
    # What the run wrote, without the numbers no recipe should pin: wall times, counts of
    # encodings, channels (slim.params says it) and int8 kernels by type (int8_convs says
    # it), the optimized ONNX files' own checks, the sizes of files that are records rather
    # than deliverables (reports, checkpoints).
    records = ("artifacts.report_", "artifacts.checkpoint_", "teacher.checkpoint.")
    written = {
        key
        for key in numeric_keys(summary)
        if not key.startswith(("timing.", "seed", "data.", "quantization.", *records))
        and ".channels." not in key
        and ".encodings." not in key
        and ".int8_kernels." not in key
        and ".opt_" not in key
        and not key.endswith(".weight_bits")
    }
    assert summary_metric_keys(assemble(cfg)) == written


def test_ctrl_c_during_distill_export_exits_130_and_says_to_run_it_again(
    tmp_path, monkeypatch, caplog
):
    import distill.deploy.artifacts as artifacts

    def interrupted(run_dir, latency_repeats):
        raise RunInterrupted(signal.SIGINT)  # what Ctrl+C raises

    monkeypatch.setattr(artifacts, "export_run", interrupted)
    assert export_main([str(tmp_path)]) == 130
    assert "run the same command again" in caplog.text
