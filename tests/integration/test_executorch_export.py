"""The ExecuTorch artifacts: .pte files that match the torch model they came from, a run's
export that lists them, and a run without executorch that exports everything else and says so."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from distill.assembly import check_run_settings
from distill.deploy.artifacts import export_run
from distill.deploy.pte import METHODS, PteModel, installed, quantize_for_xnnpack, save_pte
from distill.errors import ConfigError, ExportError
from distill.pipeline import train
from tests.conftest import compose_train

needs_executorch = pytest.mark.skipif(
    not installed(), reason="executorch is not installed: pip install 'distill[edge]'"
)

PTE_ARTIFACTS = ("executorch_fp32", "executorch_int8")
TINY_DIGITS = [
    "data=digits",
    "teacher=cnn2d_digits",
    "student=cnn2d_small",
    "teacher.train.max_epochs=3",
    "trainer.max_epochs=2",
    "pruning=channel_l1",
    "pruning.schedule.start=0",
    "pruning.schedule.num_updates=1",
    "export_executorch=auto",
    "export_latency_repeats=1",
    "threads=1",
    "logger=none",
    "callbacks=none",
    "trainer.enable_progress_bar=false",
]
# int8 .pte (XNNPACK's post-training int8) against the float model, on the 397 digits of the
# test split: TinyCNN trained with seeds 0-5 agreed on 0.987-1.0 (seed 0: 0.9975; the flips are
# near-ties of a ~89% model), and the .pte agreed with its quantized torch graph on 1.0 each
# time. 0.98 allows 8 flips, fewer than any seed made.
MIN_INT8_FLOAT_AGREEMENT = 0.98


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(16 * 2 * 2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    inputs = torch.tensor(data.images / 16.0, dtype=torch.float32).unsqueeze(1)
    targets = torch.tensor(data.target)
    return inputs[:1400], targets[:1400], inputs[1400:], targets[1400:]


@pytest.fixture(scope="module")
def trained_cnn(digits, one_thread) -> nn.Module:
    """The tiny CNN, trained for three seeded epochs (~89% test accuracy)."""
    train_inputs, train_targets, _, _ = digits
    torch.manual_seed(0)
    model = TinyCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        for batch in torch.randperm(len(train_inputs)).split(64):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(train_inputs[batch]), train_targets[batch])
            loss.backward()
            optimizer.step()
    return model.eval()


@pytest.fixture
def without_executorch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every `import executorch...` fails from here on, as if it were not installed (loaded
    submodules too: a cached `executorch.exir` would import without its parent)."""
    for name in [name for name in sys.modules if name.split(".")[0] == "executorch"]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "executorch", None)


@needs_executorch
def test_fp32_pte_matches_the_torch_model_in_both_methods(trained_cnn, digits, tmp_path):
    _, _, test_inputs, _ = digits
    facts = save_pte(trained_cnn, test_inputs[:1], tmp_path / "tiny.pte")
    assert facts["inputs"] == {"forward": [1, 1, 8, 8], "forward_bs64": [64, 1, 8, 8]}
    assert facts["portable_ops"] == []  # XNNPACK runs every op
    model = PteModel(tmp_path / "tiny.pte")
    assert sorted(model.methods) == sorted(METHODS)
    with torch.inference_mode():
        expected = trained_cnn(test_inputs)
    # 397 inputs: six batches of 64 and a padded seventh; then one example through `forward`.
    torch.testing.assert_close(model(test_inputs), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model(test_inputs[:1]), expected[:1], atol=1e-5, rtol=1e-5)
    assert [path.name for path in tmp_path.iterdir()] == ["tiny.pte"]  # no temporary left
    model.release()
    with pytest.raises(ExportError, match=r"tiny\.pte was released"):
        model(test_inputs[:1])


@needs_executorch
def test_int8_pte_agrees_with_the_float_model(trained_cnn, digits, tmp_path):
    train_inputs, _, test_inputs, test_targets = digits
    calibration = list(train_inputs.split(64))
    quantized = quantize_for_xnnpack(trained_cnn, train_inputs[:2], calibration)
    save_pte(quantized, test_inputs[:1], tmp_path / "tiny_int8.pte")
    int8_classes = PteModel(tmp_path / "tiny_int8.pte")(test_inputs).argmax(1)
    with torch.inference_mode():
        float_classes = trained_cnn(test_inputs).argmax(1)
        graph_classes = quantized(test_inputs).argmax(1)
    # The int8 kernels compute what the quantized torch graph says...
    assert (int8_classes == graph_classes).float().mean() >= 0.99
    # ...which stays close to the float model.
    assert (int8_classes == float_classes).float().mean() >= MIN_INT8_FLOAT_AGREEMENT
    float_acc = (float_classes == test_targets).float().mean()
    assert (int8_classes == test_targets).float().mean() >= float_acc - 0.02


class _Bessel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.special.bessel_j0(x))


@needs_executorch
def test_an_op_executorch_cannot_lower_is_named_and_no_file_is_left(tmp_path):
    with pytest.raises(ExportError, match=r"model\.pte: ExecuTorch cannot lower op .*bessel_j0"):
        save_pte(_Bessel(), torch.randn(1, 4), tmp_path / "model.pte")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", ["maybe", 1, "true", None])
def test_the_switch_takes_auto_true_or_false(value, tmp_path):
    cfg = compose_train([*TINY_DIGITS, f"export_executorch={json.dumps(value)}"], tmp_path)
    with pytest.raises(ConfigError, match=r"export_executorch=.* is not allowed: auto .*or false"):
        check_run_settings(cfg)


@pytest.fixture(scope="module")
def pte_run(tmp_path_factory, one_thread) -> tuple[Path, dict]:
    """A tiny pruned + QAT digits run whose export makes the .pte files."""
    root = tmp_path_factory.mktemp("pte")
    summary = train(compose_train(TINY_DIGITS, root))
    return root / "run", summary


@needs_executorch
def test_the_export_lists_the_pte_files_measured_like_every_artifact(pte_run):
    run_dir, summary = pte_run
    artifacts = summary["artifacts"]
    files = ("student_xnnpack.pte", "student_xnnpack_int8.pte")
    for name, file in zip(PTE_ARTIFACTS, files, strict=True):
        entry = artifacts[name]
        assert entry["path"] == f"export/{file}"
        assert (run_dir / entry["path"]).stat().st_size == entry["bytes"]
        assert 0.0 <= entry["test_acc"] <= 1.0 and entry["agreement"] is not None
        assert entry["latency_ms_bs1"] > 0 and entry["latency_ms_bs64"] > 0
    fp32, int8 = artifacts["executorch_fp32"], artifacts["executorch_int8"]
    # The slim student (pruned channels removed), checked against torch: same predictions.
    assert fp32["agreement"] == 1.0 and fp32["max_abs_diff"] < 1e-4
    assert fp32["test_acc"] == artifacts["onnx_fp32"]["test_acc"]
    assert int8["method"] == "ptq_static_xnnpack" and int8["pt2e_agreement"] >= 0.99
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert set(PTE_ARTIFACTS) <= {row["name"] for row in on_disk["deployment"]}
    markdown = (run_dir / artifacts["report_md"]["path"]).read_text()
    assert "| executorch_fp32 | ExecuTorch (XNNPACK) |" in markdown


@needs_executorch  # the run directory comes from a run that made the .pte files
def test_without_executorch_the_rest_is_exported_and_the_report_says_why(
    pte_run, tmp_path, without_executorch, caplog
):
    copy = tmp_path / "copy"
    shutil.copytree(pte_run[0], copy)
    caplog.set_level(logging.INFO, logger="distill")
    entries = export_run(copy, latency_repeats=1)
    assert not set(PTE_ARTIFACTS) & entries.keys()
    assert {"onnx_fp32", "onnx_int8", "compressed", "report_md"} <= entries.keys()
    assert not list((copy / "export").glob("*.pte"))  # the previous export's are gone too
    summary = json.loads((copy / "summary.json").read_text())
    assert summary["status"] == "complete"
    (row,) = [row for row in summary["deployment"] if row["name"] == "executorch"]
    assert row["note"].startswith("skipped: executorch is not installed")
    assert "pip install 'distill[edge]'" in (copy / "export" / "report.md").read_text()
    assert "No ExecuTorch .pte: executorch is not installed" in caplog.text


def test_asking_for_the_pte_without_executorch_is_refused_before_training(
    tmp_path, without_executorch
):
    cfg = compose_train([*TINY_DIGITS, "export_executorch=true"], tmp_path)
    with pytest.raises(ConfigError, match=r"export_executorch=True .*not installed"):
        train(cfg)
    assert not (tmp_path / "cache").exists()  # no teacher was trained
