"""`distill-export`: the deployable artifacts of a finished run, each measured by running it.

- `onnx_fp32`: the slimmed (pruned channels removed), baked student; onnxruntime.
- `onnx_int8`: the QDQ graph with the scales learned in QAT (static post-training calibration
  when the run did not train with quantization); onnxruntime's int8 kernels.
- `onnx_int8_ptq_static`, `onnx_int8_dynamic`: post-training baselines for the report (static:
  the same observers calibrated on training batches without training; dynamic: int8 weights,
  activation scales computed at run time by onnxruntime).
- `compressed`: int8 weights, sparse encoding, lzma; restores the exact plain student.
- `report.md` / `report.json` / `report.png`: everything side by side, with ratios.

Everything is written into a staging directory that replaces `<run>/export/` only once every
artifact has been produced and checked; `summary.json` is updated last. A failed export leaves
the previous state untouched and nothing that claims to be complete.
"""

from __future__ import annotations

import copy
import logging
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from distill.checks import check_fits_data
from distill.compression.activation_sites import (
    ActivationQuantizer,
    ActivationSites,
    find_activation_sites,
    observers_of,
)
from distill.compression.masks import bake_into
from distill.compression.selection import prunable_layer_names
from distill.config import build
from distill.deploy.compressed import load_compressed, save_compressed
from distill.deploy.measure import (
    LATENCY_THREADS,
    TestSet,
    measure,
    predict,
    torch_predictor,
)
from distill.deploy.onnx_runtime import (
    ExportError,
    OrtModel,
    export_onnx,
    verify_optimization_levels,
)
from distill.deploy.qdq import build_qdq_model
from distill.deploy.report import write_report
from distill.deploy.run_dir import TrainedRun, load_trained_run
from distill.deploy.slim import remove_zero_channels
from distill.errors import ConfigError
from distill.files import atomic_write_json
from distill.run_summary import SUMMARY_FILE, read_summary
from distill.summary import count_parameters

log = logging.getLogger(__name__)

EXPORT_DIR = "export"
PTQ_WEIGHT_BITS = 8
MIN_INT8_AGREEMENT = 0.99  # with the fake-quant student it was exported from


def export_run(
    run_dir: str | Path,
    run: TrainedRun | None = None,
    latency_repeats: int = 20,
    teacher: nn.Module | None = None,
) -> dict[str, dict[str, Any]]:
    """`distill-export RUN_DIR`: produce, check and measure every artifact of a finished run,
    then merge their entries into its `summary.json` (under `artifacts`; rows under
    `deployment`), written last."""
    run_dir = Path(run_dir)
    summary = read_summary(run_dir)
    run = run or load_trained_run(run_dir)
    entries, rows = export_artifacts(run_dir, run, latency_repeats, teacher)
    summary["artifacts"] = {**summary.get("artifacts", {}), **entries}
    summary["deployment"] = rows
    atomic_write_json(run_dir / SUMMARY_FILE, summary)
    return entries


def export_artifacts(
    run_dir: Path,
    run: TrainedRun,
    latency_repeats: int = 20,
    teacher: nn.Module | None = None,
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Produce, check and measure every artifact into `run_dir/export/` (swapped in whole once
    all passed); returns their summary entries and the report's rows. Writes no summary."""
    teacher = teacher if teacher is not None else run.teacher
    if run.quantization is not None:
        run.quantization.check_exportable()
    example = run.datamodule.example_input_batch(2)
    check_fits_data(run.student, run.datamodule, "student")
    test_set = TestSet.from_loader(run.datamodule.test_dataloader())

    staging = Path(tempfile.mkdtemp(dir=run_dir, prefix=".export-"))
    try:
        entries, rows = _produce(run, test_set, example, staging, latency_repeats, teacher)
        _publish(staging, run_dir / EXPORT_DIR)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for entry in entries.values():
        entry["path"] = f"{EXPORT_DIR}/{entry['path']}"
    return entries, rows


def _produce(
    run: TrainedRun,
    test_set: TestSet,
    example: Tensor,
    out: Path,
    repeats: int,
    teacher: nn.Module | None,
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    student, qat = run.student, run.quantization
    plain = bake_into(student, build(run.cfg.student, "student")).eval()
    plain_classes = predict(torch_predictor(plain), test_set.inputs)
    slim = remove_zero_channels(plain, example[:1])
    entries: dict[str, dict[str, Any]] = {}
    rows: list[dict[str, Any]] = []

    def add(name: str, entry: dict[str, Any], runtime: str, **row: Any) -> None:
        entries[name] = entry
        rows.append({"name": name, "runtime": runtime, "bytes": entry.get("bytes"), **row})

    if teacher is not None:
        rows.append(
            {
                "name": "teacher",
                "runtime": "torch eager",
                "params": count_parameters(teacher),
                **measure(torch_predictor(teacher), test_set, None, repeats),
            }
        )
    rows.append(
        {
            "name": "student",
            "runtime": "torch eager",
            "bytes": _state_bytes(plain),
            "params": slim.params_before,
            "macs": slim.macs_before,
            **measure(torch_predictor(plain), test_set, plain_classes, repeats),
            "note": "dense fp32 student as trained (baseline)",
        }
    )

    # Torch rows first: onnxruntime threads spin for a while after each run, and would steal
    # the cores from a torch model timed right after them.
    # 1. compressed checkpoint, loaded back and run
    student_config = OmegaConf.to_container(run.cfg.student, resolve=True)
    compressed = save_compressed(student, out / "student.dcmp", student_config)
    restored = load_compressed(out / "student.dcmp")
    exact = all(
        torch.equal(value, restored.state_dict()[key]) for key, value in plain.state_dict().items()
    )
    if not exact:
        raise ExportError("the compressed student does not restore the trained student exactly")
    compressed.update(measure(torch_predictor(restored), test_set, plain_classes, repeats))
    add(
        "compressed",
        compressed,
        "torch eager (restored)",
        params=slim.params_before,
        note=f"{compressed['ratio']:.1f}x smaller than the dense fp32 checkpoint",
        **{k: v for k, v in compressed.items() if k in _MEASURED},
    )

    # 2. fp32 ONNX of the slimmed student
    fp32_path = export_onnx(slim.model, example, out / "student_fp32.onnx")
    fp32 = _onnx_entry(fp32_path, test_set, plain_classes, repeats, quantized=False)
    add("onnx_fp32", fp32, "onnxruntime", params=slim.params_after, macs=slim.macs_after, **fp32)

    # 3. int8 ONNX: scales learned in QAT, or static calibration
    if qat is not None and qat.activations:
        sites = qat.sites
        qparams = _observed_qparams(student)
        layer_bits = dict(qat.layers)
        reference = predict(torch_predictor(student), test_set.inputs)  # fake-quant student
        method = "qat"
    else:
        bits = dict(qat.layers) if qat is not None else _all_layers(plain, PTQ_WEIGHT_BITS)
        sites, qparams = _calibrate(plain, run, example)
        layer_bits = bits
        reference = predict(
            torch_predictor(build_qdq_model(plain, sites.names, qparams, bits, sites.folds)),
            test_set.inputs,
        )
        method = "ptq_static"
    int8_model = build_qdq_model(slim.model, sites.names, qparams, layer_bits, sites.folds)
    int8_path = export_onnx(int8_model, example, out / "student_int8.onnx")
    int8 = _onnx_entry(int8_path, test_set, reference, repeats, quantized=True)
    int8["method"] = method
    int8["weight_bits"] = sorted(set(layer_bits.values()))
    if int8["agreement"] < MIN_INT8_AGREEMENT:
        log.warning(
            "onnx_int8 agrees with the fake-quant torch student on %.2f%% of the test set "
            "(< %.0f%%): onnxruntime's int8 kernels compute differently here; on CPUs without "
            "VNNI try 7-bit weights (quantization=qat_int7)",
            100 * int8["agreement"],
            100 * MIN_INT8_AGREEMENT,
        )
    add("onnx_int8", int8, "onnxruntime", params=slim.params_after, macs=slim.macs_after, **int8)

    # 4. post-training baselines
    if method == "qat":
        float_plain = _without_weight_fake_quant(student, run)
        ptq_sites, ptq_qparams = _calibrate(float_plain, run, example)
        ptq_model = build_qdq_model(
            remove_zero_channels(float_plain, example[:1]).model,
            ptq_sites.names,
            ptq_qparams,
            layer_bits,
            ptq_sites.folds,
        )
        ptq_reference = predict(
            torch_predictor(
                build_qdq_model(
                    float_plain, ptq_sites.names, ptq_qparams, layer_bits, ptq_sites.folds
                )
            ),
            test_set.inputs,
        )
        ptq_path = export_onnx(ptq_model, example, out / "student_int8_ptq_static.onnx")
        ptq = _onnx_entry(ptq_path, test_set, ptq_reference, repeats, quantized=True)
        ptq["method"] = "ptq_static"
        add("onnx_int8_ptq_static", ptq, "onnxruntime", params=slim.params_after, **ptq)
    dynamic_path = _quantize_dynamic(fp32_path, out / "student_int8_dynamic.onnx")
    dynamic = _onnx_entry(dynamic_path, test_set, plain_classes, repeats, quantized=True)
    dynamic["method"] = "ptq_dynamic"
    add("onnx_int8_dynamic", dynamic, "onnxruntime", params=slim.params_after, **dynamic)

    # 5. the report
    entries.update(write_report(out, rows, baseline="student", title="distill deployment report"))
    return entries, rows


_MEASURED = ("test_acc", "agreement", "latency_ms_bs1", "latency_ms_bs64")


def _onnx_entry(
    path: Path, test_set: TestSet, reference, repeats: int, quantized: bool
) -> dict[str, Any]:
    checks = verify_optimization_levels(path, test_set.inputs[:256], quantized=quantized)
    entry = {"path": path.name, "bytes": path.stat().st_size}
    timed = OrtModel(path, threads=LATENCY_THREADS)
    entry.update(measure(OrtModel(path), test_set, reference, repeats, timed=timed))
    entry.update(checks)
    return entry


def _observed_qparams(student: nn.Module) -> dict[str, tuple[float, int]]:
    qparams = {}
    for site, observer in observers_of(student).items():
        if not bool(observer.initialized):
            raise ConfigError(
                "quantization.start_epoch",
                "after the last epoch",
                f"a QAT phase that saw data: the observer at {site!r} never ran (start QAT "
                "before the final epoch)",
            )
        scale, zero_point = observer.qparams()
        qparams[site] = (float(scale), int(zero_point))
    return qparams


def _calibrate(
    plain: nn.Module, run: TrainedRun, example: Tensor, momentum: float = 0.1
) -> tuple[ActivationSites, dict[str, tuple[float, int]]]:
    """Static post-training calibration: observers at the same sites, fed training batches."""
    model = copy.deepcopy(plain).eval()
    sites = find_activation_sites(model, example)
    quantizer = ActivationQuantizer(sites, momentum)
    observers = quantizer.attach(model)
    for observer in observers.values():
        observer.observing.fill_(True)
        observer.train()
    batches = run.quantization.calibration_batches if run.quantization else 32
    with torch.no_grad():
        for index, batch in enumerate(run.datamodule.train_dataloader()):
            if index >= batches:
                break
            model(batch[0])
    quantizer.detach()
    return sites, _observed_qparams(model)


def _all_layers(model: nn.Module, bits: int) -> dict[str, int]:
    return dict.fromkeys(prunable_layer_names(model), bits)


def _without_weight_fake_quant(student: nn.Module, run: TrainedRun) -> nn.Module:
    """The run's float weights (masked, shared) without weight fake-quant: the PTQ baseline."""
    with run.quantization.float_weights(student):
        return bake_into(student, build(run.cfg.student, "student")).eval()


def _quantize_dynamic(fp32_path: Path, path: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # onnxruntime's quantization tool logs advice on the root logger at INFO and WARNING.
    logging.disable(logging.WARNING)
    try:
        quantize_dynamic(str(fp32_path), str(path), weight_type=QuantType.QInt8)
    except Exception as error:
        raise ExportError(f"dynamic quantization of {fp32_path.name} failed: {error}") from error
    finally:
        logging.disable(logging.NOTSET)
    return path


def _state_bytes(model: nn.Module) -> int:
    import io

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def _publish(staging: Path, target: Path) -> None:
    """Swap the staging directory in for `target` (the previous export is replaced whole)."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}-old")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
    staging.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def describe(entries: Mapping[str, Mapping[str, Any]]) -> str:
    """One line per artifact for the log."""
    lines = []
    for name, entry in entries.items():
        acc = entry.get("test_acc")
        shown = f"  acc {100 * acc:.2f}%" if acc is not None else ""
        lines.append(f"{name:22s} {entry['bytes'] / 1024:9.1f} KiB  {entry['path']}{shown}")
    return "\n".join(lines)
