"""The ExecuTorch artifacts of `distill-export`: the slim student as .pte files for phones,
each checked against the torch model it came from, then measured like every other artifact.

- `executorch_fp32` (`student_xnnpack.pte`): the slim student, fp32, XNNPACK delegate. Refused
  when either method's outputs leave `PTE_FP32_TOLERANCE` of the torch slim student's.
- `executorch_int8` (`student_xnnpack_int8.pte`): XNNPACK's post-training int8 of the slim
  student (pt2e), calibrated on the training batches of the static ONNX baseline. `agreement`
  is with the int8 model `onnx_int8` simulates (the fake-quant student after QAT), as for
  `onnx_int8`; `agreement_float` with the float student; `pt2e_agreement` with the quantized
  torch graph the file was lowered from, which must reach `MIN_INT8_AGREEMENT` (else the
  int8 kernels compute something other than that graph, and the file is refused).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from distill.deploy.measure import LATENCY_THREADS, measure, predict
from distill.deploy.pte import (
    METHODS,
    RUNTIME,
    PteModel,
    quantize_for_xnnpack,
    runtime_threads,
    save_pte,
)
from distill.errors import ExportError

if TYPE_CHECKING:
    from distill.deploy.artifacts import ExportContext

log = logging.getLogger(__name__)

FP32_FILE = "student_xnnpack.pte"
INT8_FILE = "student_xnnpack_int8.pte"
# The fp32 .pte against the torch slim student, relative to the logits' scale (at least 1):
# XNNPACK sums in another order than torch (measured ~1e-7 on the zoo's students).
PTE_FP32_TOLERANCE = 1e-4
CHECK_INPUTS = 256  # test inputs the fp32 file is checked on
MIN_INT8_AGREEMENT = 0.99


def executorch_fp32(context: ExportContext) -> None:
    """The slim student as an fp32 ExecuTorch program, checked against torch, and run."""
    if context.pte_skipped is not None:
        _skipped(context)
        return
    slim = context.slim.model.eval()
    path = context.out / FP32_FILE
    facts = save_pte(slim, context.example[:1], path)
    with loaded(path) as model:
        max_abs_diff = _check_fp32(model, slim, context.test_set.inputs[:CHECK_INPUTS], path)
        entry = _entry(path, model, context, context.plain_classes)
    entry.update(max_abs_diff=max_abs_diff, **facts)
    context.add(
        "executorch_fp32",
        entry,
        RUNTIME,
        "fp32",
        params=context.slim.params_after,
        macs=context.slim.macs_after,
        **entry,
    )


def executorch_int8(context: ExportContext) -> None:
    """XNNPACK's int8 of the slim student (pt2e, static calibration), checked against the
    quantized torch graph it was lowered from, and run."""
    if context.pte_skipped is not None:
        return  # executorch_fp32's row says why
    slim = context.slim.model.eval()
    quantized = quantize_for_xnnpack(slim, context.example, context.calibration_batches())
    path = context.out / INT8_FILE
    facts = save_pte(quantized, context.example[:1], path)
    inputs = context.test_set.inputs
    graph_classes = predict(_graph_predictor(quantized), inputs)
    reference = context.int8_classes if context.int8_classes is not None else graph_classes
    with loaded(path) as model:
        entry = _entry(path, model, context, reference)
        classes = predict(model, inputs)
    entry.update(
        method="ptq_static_xnnpack",
        agreement_float=float((classes == context.plain_classes).mean()),
        pt2e_agreement=float((classes == graph_classes).mean()),
        **facts,
    )
    if entry["pt2e_agreement"] < MIN_INT8_AGREEMENT:
        raise ExportError(
            f"{path.name}: the int8 check failed: its predictions agree with the quantized torch "
            f"graph it was lowered from on {entry['pt2e_agreement']:.4f} of the test set "
            f"(< {MIN_INT8_AGREEMENT}); XNNPACK's int8 kernels compute something else"
        )
    if entry["agreement"] is not None and entry["agreement"] < MIN_INT8_AGREEMENT:
        log.warning(
            "executorch_int8 agrees with the int8 student of onnx_int8 on %.2f%% of the test "
            "set (< %.0f%%): XNNPACK's post-training int8 quantizes other sites, with scales "
            "of its own calibration, not the run's QAT",
            100 * entry["agreement"],
            100 * MIN_INT8_AGREEMENT,
        )
    context.add(
        "executorch_int8",
        entry,
        RUNTIME,
        "int8",
        params=context.slim.params_after,
        macs=context.slim.macs_after,
        **entry,
    )


def _skipped(context: ExportContext) -> None:
    """A report row saying why there is no .pte (not when the run switched it off)."""
    reason = context.pte_skipped
    log.info("No ExecuTorch .pte: %s", reason)
    if reason is not None and reason.startswith("export_executorch="):
        return
    context.rows.append({"name": "executorch", "runtime": RUNTIME, "note": f"skipped: {reason}"})


def _entry(
    path: Path, model: PteModel, context: ExportContext, reference: np.ndarray
) -> dict[str, Any]:
    entry: dict[str, Any] = {"path": path.name, "bytes": path.stat().st_size}
    entry.update(measure(model, context.test_set, reference, context.repeats))
    return entry


@contextlib.contextmanager
def loaded(path: Path) -> Iterator[PteModel]:
    """`PteModel(path)` on ExecuTorch's threadpool at `LATENCY_THREADS` threads, the pool set
    before the program is loaded and restored only after it is released: a program that ran,
    then saw the pool replaced under it (`_unsafe_reset_threadpool`), crashed the process with
    a segfault in about one export in three here."""
    with runtime_threads(LATENCY_THREADS):
        model = PteModel(path)
        try:
            yield model
        finally:
            model.release()


def _check_fp32(model: PteModel, torch_model: nn.Module, inputs: Tensor, path: Path) -> float:
    """Max |diff| of both methods' outputs against `torch_model`'s (batch 64 on `inputs`,
    batch 1 on the first 16); ExportError beyond `PTE_FP32_TOLERANCE` of the logits' scale."""
    with torch.inference_mode():
        expected = torch_model(inputs)
    scale = max(1.0, float(expected.abs().max()))
    singles = min(16, len(inputs))
    checks = {
        METHODS[max(METHODS)]: (model(inputs), expected),
        METHODS[1]: (
            torch.cat([model(inputs[i : i + 1]) for i in range(singles)]),
            expected[:singles],
        ),
    }
    worst = 0.0
    for method, (outputs, reference) in checks.items():
        diff = float((outputs - reference).abs().max())
        if not diff <= PTE_FP32_TOLERANCE * scale:  # NaN fails too
            raise ExportError(
                f"{path.name}: the fp32 check failed: method {method} differs from the torch "
                f"slim student by max |diff| {diff:.3g} (> {PTE_FP32_TOLERANCE:g} x the logits' "
                f"scale {scale:.3g})"
            )
        worst = max(worst, diff)
    return worst


def _graph_predictor(graph: nn.Module) -> Any:
    # A pt2e graph refuses .eval() (DESIGN.md section 3); it was exported in eval mode.
    def run(inputs: Tensor) -> Tensor:
        with torch.inference_mode():
            return graph(inputs)

    return run
