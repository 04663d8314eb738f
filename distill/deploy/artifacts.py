"""`distill-export`: the deployable artifacts of a finished run, each measured by running it.

- `onnx_fp32`: the slimmed (pruned channels removed), baked student; onnxruntime (1-D convs
  written as 2-D ones of height 1, which onnxruntime runs several times faster).
- `onnx_int8`: the QDQ graph with the scales learned in QAT (static post-training calibration
  when the run did not train with quantization); onnxruntime's int8 kernels. Its entry and
  report row say how many convs run as int8 kernels and name every op kept in float
  (`kernels.py`): an op without an int8 kernel stays float instead of failing the export.
- `onnx_int8_ptq_static`, `onnx_int8_dynamic`: post-training baselines for the report (static:
  the same observers calibrated on training batches without training; dynamic: int8 weights,
  activation scales computed at run time by onnxruntime).
- `compressed`: int8 weights, sparse encoding, lzma; restores the exact plain student.
- `executorch_fp32`, `executorch_int8`: the slimmed student as ExecuTorch programs with the
  XNNPACK delegate, for phones (`pte.py`; int8: XNNPACK's pt2e post-training quantization,
  calibrated on the training batches the static ONNX baseline calibrates on). Optional
  (`export_executorch`, `pip install 'distill[edge]'`); when executorch is missing the report
  says they were skipped and why.
- `report.md` / `report.json` / `report.png`: everything side by side, with ratios, and the
  artifact to ship (`deployment_recommendation` in `summary.json`).

Each artifact has one small builder (`BUILDERS`, in the order they run) over one `ExportContext`
computed once. Everything is written into a staging directory that replaces `<run>/export/`
only once every artifact has been produced and checked (`produce_artifacts`, which leaves
`summary.json` to its caller); `export_run` (`distill-export RUN_DIR`) then updates
`summary.json` last. A failed export leaves the previous state untouched and nothing that
claims to be complete.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, cast

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from distill.checks import check_fits_data
from distill.compression.masks import bake_into
from distill.compression.qdq import QParams
from distill.compression.quantization_settings import QuantizationSettings
from distill.compression.quantizer import Quantizer
from distill.config import build
from distill.deploy.compressed import load_compressed, save_compressed
from distill.deploy.conv1d_as_2d import convs_as_2d
from distill.deploy.kernels import KernelSummary, summarize_kernels
from distill.deploy.measure import (
    LATENCY_THREADS,
    TestSet,
    machine_facts,
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
from distill.deploy.pte import skip_reason as pte_skip_reason
from distill.deploy.pte_artifacts import executorch_fp32, executorch_int8
from distill.deploy.report import build_report, save_report
from distill.deploy.run_dir import TrainedRun, load_trained_run
from distill.deploy.slim import SlimReport, remove_zero_channels
from distill.errors import ConfigError
from distill.files import atomic_write_json, exclusive_lock, new_staging_dir
from distill.run_state import read_state, write_state
from distill.run_summary import SUMMARY_FILE, read_summary
from distill.summary import count_parameters

log = logging.getLogger(__name__)

EXPORT_DIR = "export"
PTQ_WEIGHT_BITS = 8  # weights of the post-training int8 model of a run trained in float
MIN_INT8_AGREEMENT = 0.99  # with the fake-quant student it was exported from

Entries = dict[str, dict[str, Any]]
Rows = list[dict[str, Any]]


def export_run(run_dir: str | Path, latency_repeats: int = 20) -> Entries:
    """`distill-export RUN_DIR`: produce, check and measure every artifact of the finished run
    in `run_dir`, then merge their entries (under `artifacts`) and the deployment rows into its
    `summary.json`, written last; returns the entries."""
    run_dir = Path(run_dir)
    read_summary(run_dir)  # a finished run, before any work
    produced = produce_artifacts(load_trained_run(run_dir), run_dir, latency_repeats)
    summary = read_summary(run_dir)
    merge_into_summary(summary, produced)
    # A run whose export had failed or been interrupted is complete once this one is done.
    summary["status"] = "complete"
    atomic_write_json(run_dir / SUMMARY_FILE, summary)
    if read_state(run_dir) is not None:
        write_state(run_dir, "complete", "done")
    return produced.entries


class Produced(NamedTuple):
    """What an export adds to `summary.json`."""

    entries: Entries  # artifacts.<name>, paths relative to the run directory
    rows: Rows  # deployment: the report's rows, with their ratios against the dense student
    recommendation: dict[str, Any] | None  # deployment_recommendation: artifact, reason, rule


def merge_into_summary(summary: dict[str, Any], produced: Produced) -> None:
    """Add the export's artifact entries, deployment rows and recommendation to a run's summary
    (in place)."""
    summary["artifacts"] = {**summary.get("artifacts", {}), **produced.entries}
    summary["deployment"] = produced.rows
    summary["deployment_recommendation"] = produced.recommendation


def produce_artifacts(run: TrainedRun, run_dir: str | Path, latency_repeats: int = 20) -> Produced:
    """Produce, check and measure every artifact of `run` into `<run_dir>/export/` (swapped in
    whole once all are done); returns their entries (paths relative to `run_dir`), the
    deployment rows and the recommendation. `summary.json` is not touched: the caller merges
    them into it."""
    run_dir = Path(run_dir)
    if run.quantization is not None:
        run.quantization.check_exportable()
    check_fits_data(run.student, run.datamodule, "student")
    pte_skipped = pte_skip_reason(run.cfg.get("export_executorch", "auto"))
    with _export_lock(run_dir):
        for stale in remove_stale_staging(run_dir):
            log.info("Removed %s, left by an export that was killed", stale)
        staging = new_staging_dir(run_dir, prefix=STAGING_PREFIX)
        try:
            context = ExportContext.of(run, staging, latency_repeats, pte_skipped)
            for builder in BUILDERS:
                builder(context)
            _publish(staging, run_dir / EXPORT_DIR)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    for entry in context.entries.values():
        entry["path"] = f"{EXPORT_DIR}/{entry['path']}"
    return Produced(context.entries, context.rows, context.recommendation)


# Staging directories (and the previous export while it is swapped out) start with this.
STAGING_PREFIX = ".export-"
EXPORT_LOCK = ".export.lock"


@contextlib.contextmanager
def _export_lock(run_dir: Path) -> Iterator[None]:
    """One export of a run at a time: with the lock held, any staging directory is stale."""
    try:
        with exclusive_lock(run_dir / EXPORT_LOCK, wait=False):
            yield
    except BlockingIOError:
        raise ConfigError(
            "run_dir", str(run_dir), "a run no other export is working on right now"
        ) from None


def remove_stale_staging(run_dir: Path) -> list[Path]:
    """Delete what a killed export left: its staging directory, or the previous export it
    was swapping out (`.export-old`)."""
    stale = [path for path in run_dir.glob(f"{STAGING_PREFIX}*") if path.is_dir()]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


@dataclass
class ExportContext:
    """What every artifact builder reads, computed once, and what they produced so far."""

    run: TrainedRun
    test_set: TestSet
    example: Tensor  # a batch of two, to trace with a dynamic batch
    plain_classes: np.ndarray  # the plain student's test predictions: the reference
    repeats: int  # latency repeats
    out: Path  # the staging directory
    pte_skipped: str | None = None  # why no .pte is made (None: they are)
    entries: Entries = field(default_factory=dict)
    rows: Rows = field(default_factory=list)
    # The test predictions of the int8 model onnx_int8 simulates (fake-quant student, or the
    # statically calibrated one): what every int8 artifact is compared with.
    int8_classes: np.ndarray | None = None
    _calibration_batches: list[Tensor] | None = field(default=None, repr=False)
    recommendation: dict[str, Any] | None = None  # set by the report

    @classmethod
    def of(
        cls, run: TrainedRun, out: Path, repeats: int, pte_skipped: str | None = None
    ) -> ExportContext:
        test_set = TestSet.from_loader(run.datamodule.test_dataloader())
        plain_classes = predict(torch_predictor(run.plain), test_set.inputs)
        return cls(
            run,
            test_set,
            run.datamodule.example_input_batch(2),
            plain_classes,
            repeats,
            out,
            pte_skipped,
        )

    @property
    def plain(self) -> nn.Module:
        return self.run.plain

    @property
    def slim(self) -> SlimReport:
        return self.run.slim

    def add(
        self,
        name: str,
        entry: dict[str, Any],
        runtime: str,
        precision: str | None = None,
        **row: Any,
    ) -> None:
        """Record artifact `name` and its row of the report: an exported artifact, so a
        candidate for the recommendation; `precision` (fp32, int8) is what it computes in
        (None: not said, and the row is left out of the int8-against-fp32 comparison)."""
        self.entries[name] = entry
        self.rows.append(
            {
                "name": name,
                "runtime": runtime,
                "precision": precision,
                "exported": True,
                "bytes": entry.get("bytes"),
                **row,
            }
        )

    def onnx_entry(self, path: Path, reference: np.ndarray, quantized: bool) -> dict[str, Any]:
        """An ONNX file's entry: size, measurements against `reference`, opt-level checks."""
        checks = verify_optimization_levels(path, self.test_set.inputs[:256], quantized=quantized)
        entry: dict[str, Any] = {"path": path.name, "bytes": path.stat().st_size}
        timed = OrtModel(path, threads=LATENCY_THREADS)
        entry.update(measure(OrtModel(path), self.test_set, reference, self.repeats, timed=timed))
        entry.update(checks)
        return entry

    def calibrate(self, quantizer: Quantizer, float_model: nn.Module) -> dict[str, QParams]:
        """Static post-training calibration of `float_model` on training batches."""
        calibration = quantizer.prepare_static(float_model, self.example)
        quantizer.calibrate(calibration, self.calibration_batches())
        return quantizer.qparams(calibration)

    def calibration_batches(self) -> list[Tensor]:
        """The training batches every static calibration of this export observes, drawn once:
        the training loader reshuffles with one generator, so each pass would see others."""
        if self._calibration_batches is None:
            count = _static_settings(self.run).calibration_batches
            loader = self.run.datamodule.train_dataloader()
            self._calibration_batches = list(itertools.islice(_inputs(loader), count))
        return self._calibration_batches


def _static_settings(run: TrainedRun) -> QuantizationSettings:
    """The settings of the run's static post-training int8 (its QAT settings, if any)."""
    qat = run.quantization
    return qat.settings if qat is not None else QuantizationSettings(weight_bits=PTQ_WEIGHT_BITS)


def _inputs(loader: Any) -> Iterator[Tensor]:
    for batch in loader:
        yield batch[0]


# -- the builders, in the order they run --------------------------------------------------
# Torch rows first: onnxruntime threads spin for a while after each run, and would steal the
# cores from a torch model timed right after them.


def baselines(context: ExportContext) -> None:
    """The rows the artifacts are compared with: the teacher (if any) and the dense student."""
    run, plain, slim = context.run, context.plain, context.slim
    if run.teacher is not None:
        context.rows.append(
            {
                "name": "teacher",
                "runtime": "torch eager",
                "precision": "fp32",
                "params": count_parameters(run.teacher),
                **measure(torch_predictor(run.teacher), context.test_set, None, context.repeats),
            }
        )
    measured = measure(
        torch_predictor(plain), context.test_set, context.plain_classes, context.repeats
    )
    context.rows.append(
        {
            "name": "student",
            "runtime": "torch eager",
            "precision": "fp32",
            "bytes": _state_bytes(plain),
            "params": slim.params_before,
            "macs": slim.macs_before,
            **measured,
            "note": "dense fp32 student as trained (baseline)",
        }
    )


def compressed(context: ExportContext) -> None:
    """The compressed checkpoint, loaded back, checked to restore the plain student, and run."""
    run, path = context.run, context.out / "student.dcmp"
    student_config = cast(dict[str, Any], OmegaConf.to_container(run.cfg.student, resolve=True))
    entry = save_compressed(run.student, path, student_config)
    restored = load_compressed(path)
    exact = all(
        torch.equal(value, restored.state_dict()[key])
        for key, value in context.plain.state_dict().items()
    )
    if not exact:
        raise ExportError("the compressed student does not restore the trained student exactly")
    entry.update(
        measure(torch_predictor(restored), context.test_set, context.plain_classes, context.repeats)
    )
    context.add(
        "compressed",
        entry,
        "torch eager (restored)",
        "fp32",  # int8 weights on disk, restored to the fp32 student to run
        params=context.slim.params_before,
        macs=context.slim.macs_before,
        note=f"{entry['ratio']:.1f}x smaller than the dense fp32 checkpoint",
        **{k: v for k, v in entry.items() if k in _MEASURED},
    )


def onnx_fp32(context: ExportContext) -> None:
    """The slimmed student as fp32 ONNX, its 1-D convs as 2-D ones (`conv1d_as_2d.py`)."""
    slim = context.slim
    path = export_onnx(convs_as_2d(slim.model), context.example, context.out / "student_fp32.onnx")
    entry = context.onnx_entry(path, context.plain_classes, quantized=False)
    context.add(
        "onnx_fp32",
        entry,
        "onnxruntime",
        "fp32",
        params=slim.params_after,
        macs=slim.macs_after,
        **entry,
    )


def onnx_int8(context: ExportContext) -> None:
    """The int8 QDQ ONNX of the slimmed student: the scales learned in QAT, or, for a run
    without activation QAT, static calibration; checked against the model it simulates."""
    run, plain, slim = context.run, context.plain, context.slim
    qat = run.quantization
    if qat is not None and qat.activations:
        quantizer = qat.quantizer
        qparams = quantizer.qparams(run.student)
        reference = predict(torch_predictor(run.student), context.test_set.inputs)  # fake-quant
        method = "qat"
    else:
        quantizer = Quantizer(_static_settings(run))
        qparams = context.calibrate(quantizer, plain)
        reference = predict(
            torch_predictor(quantizer.convert(plain, qparams)), context.test_set.inputs
        )
        method = "ptq_static"
    context.int8_classes = reference
    int8_model = quantizer.convert(slim.model, qparams)
    path = export_onnx(int8_model, context.example, context.out / "student_int8.onnx")
    entry = context.onnx_entry(path, reference, quantized=True)
    entry["method"] = method
    entry["weight_bits"] = sorted(set(quantizer.layers.values()))
    kernels = _int8_kernels(path, entry)
    if entry["agreement"] < MIN_INT8_AGREEMENT:
        log.warning(
            "onnx_int8 agrees with the fake-quant torch student on %.2f%% of the test set "
            "(< %.0f%%): onnxruntime's int8 kernels compute differently here; on CPUs without "
            "VNNI try 7-bit weights (quantization=qat_int7)",
            100 * entry["agreement"],
            100 * MIN_INT8_AGREEMENT,
        )
    context.add(
        "onnx_int8",
        entry,
        "onnxruntime",
        "int8",
        params=slim.params_after,
        macs=slim.macs_after,
        note=kernels.note(),
        **entry,
    )


def onnx_int8_ptq_static(context: ExportContext) -> None:
    """For a QAT run, the post-training baseline: its float weights (masked, shared) calibrated
    statically with the same layers and sites."""
    run, qat = context.run, context.run.quantization
    if qat is None or not qat.activations:
        return  # onnx_int8 is this baseline already
    with qat.quantizer.float_weights(run.student):
        float_plain = bake_into(run.student, build(run.cfg.student, "student")).eval()
    quantizer = Quantizer(qat.settings)
    qparams = context.calibrate(quantizer, float_plain)
    slim = remove_zero_channels(float_plain, context.example[:1])
    reference = predict(
        torch_predictor(quantizer.convert(float_plain, qparams)), context.test_set.inputs
    )
    path = export_onnx(
        quantizer.convert(slim.model, qparams),
        context.example,
        context.out / "student_int8_ptq_static.onnx",
    )
    entry = context.onnx_entry(path, reference, quantized=True)
    entry["method"] = "ptq_static"
    kernels = _int8_kernels(path, entry)
    context.add(
        "onnx_int8_ptq_static",
        entry,
        "onnxruntime",
        "int8",
        params=context.slim.params_after,
        macs=slim.macs_after,
        note=kernels.note(),
        **entry,
    )


def onnx_int8_dynamic(context: ExportContext) -> None:
    """onnxruntime's dynamic quantization of the fp32 ONNX: int8 weights, activation scales
    computed at run time."""
    fp32_path = context.out / context.entries["onnx_fp32"]["path"]
    path = _quantize_dynamic(fp32_path, context.out / "student_int8_dynamic.onnx")
    entry = context.onnx_entry(path, context.plain_classes, quantized=True)
    entry["method"] = "ptq_dynamic"
    context.add(
        "onnx_int8_dynamic",
        entry,
        "onnxruntime",
        "int8",
        params=context.slim.params_after,
        macs=context.slim.macs_after,  # the fp32 ONNX graph, its weights quantized
        **entry,
    )


def report(context: ExportContext) -> None:
    """report.md / report.json / report.png over every row; the rows, now with their ratios,
    and the recommendation go to `summary.json` as they are in `report.json`."""
    built = build_report(
        context.rows,
        baseline="student",
        title="distill deployment report",
        machine=machine_facts(),
    )
    context.entries.update(save_report(context.out, built))
    context.rows = built.rows
    context.recommendation = built.recommendation


BUILDERS: tuple[Callable[[ExportContext], None], ...] = (
    baselines,
    compressed,
    onnx_fp32,
    onnx_int8,
    onnx_int8_ptq_static,
    onnx_int8_dynamic,
    executorch_fp32,
    executorch_int8,
    report,
)


_MEASURED = ("test_acc", "agreement", "latency_ms_bs1", "latency_ms_bs64")


def _int8_kernels(path: Path, entry: dict[str, Any]) -> KernelSummary:
    """Add to `entry` how many convs onnxruntime runs as int8 kernels and which ops it keeps in
    float (an op it has no int8 kernel for, or one whose inputs are not quantized); say so in
    the log when a conv stays float."""
    kernels = summarize_kernels(path)
    entry.update(kernels.entry())
    if kernels.int8_convs < kernels.convs:
        log.warning(
            "%s: onnxruntime runs %d of %d convs as int8 kernels; %s. A conv stays float when "
            "its input or output is not quantized, e.g. after a functional op (F.relu, "
            "torch.cat) that is not a module's output",
            path.name,
            kernels.int8_convs,
            kernels.convs,
            kernels.note(),
        )
    return kernels


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
