"""The `ort` section of benchmarks/deploy.py: which onnxruntime settings pay for a slim student.

The slim students of the `latency` section at 75% of channels removed (ResNet-20 and
MobileNetV2 on 3x32x32, and the 1-D MobileNetV2 the MobileNet recipe trains on MNIST-1D),
their fp32 and int8 ONNX files in onnxruntime under one setting changed at a time against what
`distill-export` uses (`OrtModel`: ORT_ENABLE_ALL, the file's dynamic batch, our per-channel
QDQ; 2 intra-op threads as the report's latency is measured):

- graph optimization level: disabled, basic, extended, all (all adds the NCHWc layout
  transform for fp32 convolutions), and all with the NchwcTransformer switched off;
- threads: 1 and 2 intra-op threads;
- batch: the dynamic-batch file against files exported at a fixed batch of 64 and of 1;
- int8 weights: our QDQ graph (the QAT scales, per-channel weights) against onnxruntime's own
  `quantize_static` of the slim fp32 file with per-channel and with per-tensor weights (the
  same calibration batches; activations are per-tensor in every int8 file);
- spinning: intra-op threads that spin between runs (onnxruntime's default) against threads
  that sleep, timed in blocks of consecutive calls (spinning only helps a call that follows
  another of the same session).

Each group is timed interleaved round by round at batch 64 and 1; a cell is the median ms and
the time against the default setting (< 1: faster). No goal is judged: the tables decide what
`OrtModel` uses.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from deploy_path import budgeted_medians, build_slim, input_shape, load_note
from harness import print_table
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
)

from distill.deploy.onnx_runtime import INPUT_NAME, OUTPUT_NAME, export_onnx

STUDIES = (("resnet20", "cifar10"), ("mobilenetv2", "cifar10"), ("mobilenetv2_1d", "mnist1d"))
SPARSITY = 0.75
THREADS = 2
BATCHES = ((64, 20, 10.0), (1, 100, 4.0))
LEVELS = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def session(
    path: Path,
    level: str = "all",
    threads: int = THREADS,
    spinning: bool = False,
    disabled: tuple[str, ...] = (),
) -> Callable[[np.ndarray], object]:
    options = ort.SessionOptions()
    options.graph_optimization_level = LEVELS[level]
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    # Sleeping idle threads unless spinning is what is studied: a spinning pool steals the
    # cores from the variant timed next (see deploy_path.timing_session).
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    runner = ort.InferenceSession(
        str(path),
        options,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=list(disabled),
    )
    return lambda inputs: runner.run([OUTPUT_NAME], {INPUT_NAME: inputs})


class RandomBatches(CalibrationDataReader):
    def __init__(self, shape: tuple[int, ...], batches: int = 8) -> None:
        generator = torch.Generator().manual_seed(1)
        self.batches: Iterator[dict[str, np.ndarray]] = iter(
            [
                {INPUT_NAME: torch.randn(64, *shape, generator=generator).numpy()}
                for _ in range(batches)
            ]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


def ort_quantized(fp32: Path, out: Path, shape: tuple[int, ...], per_channel: bool) -> Path:
    # quantize_static warns through the root logger that pre-processing may help; it is the
    # file as the export writes it that is compared.
    root_logger = logging.getLogger()
    level = root_logger.level
    root_logger.setLevel(logging.ERROR)
    try:
        quantize_static(
            str(fp32),
            str(out),
            RandomBatches(shape),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
        )
    finally:
        root_logger.setLevel(level)
    return out


def ort_section() -> None:
    torch.set_num_threads(1)
    for name, data in STUDIES:
        study(name, data)


def study(name: str, data: str) -> None:
    print(f"\n_onnxruntime settings, {name}, {SPARSITY:.0%} of channels removed: {load_note()}_")
    shape = input_shape(data)
    built = build_slim(name, SPARSITY, data)
    with tempfile.TemporaryDirectory(prefix="bench-ort-") as tmp:
        root = Path(tmp)
        files: dict[str, Path] = {}
        for precision, model in (("fp32", built.slim), ("int8", built.int8)):
            files[precision] = export_onnx(
                model, torch.randn(2, *shape), root / f"{precision}.onnx"
            )
            for batch, _, _ in BATCHES:
                files[f"{precision} b{batch}"] = export_onnx(
                    model,
                    torch.randn(batch, *shape),
                    root / f"{precision}_b{batch}.onnx",
                    dynamic_batch=False,
                )
        files["ort per-channel"] = ort_quantized(
            files["fp32"], root / "ort_pc.onnx", shape, per_channel=True
        )
        files["ort per-tensor"] = ort_quantized(
            files["fp32"], root / "ort_pt.onnx", shape, per_channel=False
        )
        for precision in ("fp32", "int8"):
            path = files[precision]
            groups = {
                "optimization level": {
                    **{level: session(path, level) for level in LEVELS},
                    "all without NCHWc": session(path, disabled=("NchwcTransformer",)),
                },
                "threads": {"2 threads": session(path), "1 thread": session(path, threads=1)},
            }
            for group, variants in groups.items():
                reference = "all" if "all" in variants else "2 threads"
                time_group(name, shape, f"{precision}, {group}", variants, reference)
            time_static_batch(name, shape, precision, files)
            time_spinning(name, shape, precision, path)
        time_group(
            name,
            shape,
            "int8 weights",
            {
                "ours (QAT scales, per-channel)": session(files["int8"]),
                "onnxruntime quantize_static, per-channel": session(files["ort per-channel"]),
                "onnxruntime quantize_static, per-tensor": session(files["ort per-tensor"]),
            },
            "ours (QAT scales, per-channel)",
        )


def time_group(
    name: str,
    shape: tuple[int, ...],
    group: str,
    variants: dict[str, Callable[[np.ndarray], object]],
    reference: str,
) -> None:
    rows: dict[str, list[object]] = {label: [label] for label in variants}
    for batch, max_rounds, budget_s in BATCHES:
        inputs = torch.randn(batch, *shape).numpy()
        medians, _ = budgeted_medians(
            {label: bind(run, inputs) for label, run in variants.items()}, max_rounds, budget_s
        )
        for label in variants:
            rows[label] += [
                f"{1e3 * medians[label]:.3g}",
                f"{medians[label] / medians[reference]:.3f}",
            ]
    print_table(
        f"{name} {group} (default: {reference}; {THREADS} threads unless named)",
        ["setting", "b64 ms", "b64 vs default", "b1 ms", "b1 vs default"],
        list(rows.values()),
    )


def time_static_batch(
    name: str, shape: tuple[int, ...], precision: str, files: dict[str, Path]
) -> None:
    rows = []
    for batch, max_rounds, budget_s in BATCHES:
        inputs = torch.randn(batch, *shape).numpy()
        variants = {
            "dynamic": bind(session(files[precision]), inputs),
            "static": bind(session(files[f"{precision} b{batch}"]), inputs),
        }
        medians, _ = budgeted_medians(variants, max_rounds, budget_s)
        rows.append(
            [
                batch,
                f"{1e3 * medians['dynamic']:.3g}",
                f"{1e3 * medians['static']:.3g}",
                f"{medians['static'] / medians['dynamic']:.3f}",
            ]
        )
    print_table(
        f"{name} {precision}, batch in the file: dynamic vs fixed at the batch run",
        ["batch", "dynamic ms", "static ms", "static vs dynamic"],
        rows,
    )


def time_spinning(name: str, shape: tuple[int, ...], precision: str, path: Path) -> None:
    """Blocks of consecutive calls, alternating spinning and sleeping pools."""
    rows = []
    for batch, max_rounds, _ in BATCHES:
        inputs = torch.randn(batch, *shape).numpy()
        runs = {"sleeping": session(path), "spinning": session(path, spinning=True)}
        calls = max(5, max_rounds // 2)
        samples: dict[str, list[float]] = {label: [] for label in runs}
        for _ in range(6):
            for label, run in runs.items():
                run(inputs)  # a first call after the other pool ran
                started = time.perf_counter()
                for _ in range(calls):
                    run(inputs)
                samples[label].append((time.perf_counter() - started) / calls)
        medians = {label: statistics.median(values) for label, values in samples.items()}
        rows.append(
            [
                batch,
                f"{1e3 * medians['sleeping']:.3g}",
                f"{1e3 * medians['spinning']:.3g}",
                f"{medians['spinning'] / medians['sleeping']:.3f}",
            ]
        )
    print_table(
        f"{name} {precision}, idle intra-op threads: sleeping vs spinning "
        f"({THREADS} threads, blocks of consecutive calls)",
        ["batch", "sleeping ms", "spinning ms", "spinning vs sleeping"],
        rows,
    )


def bind(run: Callable[[np.ndarray], object], inputs: np.ndarray) -> Callable[[], object]:
    return lambda: run(inputs)
