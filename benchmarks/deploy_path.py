"""The deploy path as training and `distill-export` take it, and the timing helpers the
deployment benchmarks share (deploy.py, deploy_latency.py, ort_settings.py, round_to.py).

`build_slim` takes a zoo student (seeded random initialisation: latency does not care which
channels go) to a channel sparsity with one-shot L1 `ChannelPruning` through `PruningCallback`,
attaches int8 QAT (BatchNorm folded) and calibrates its activation observers on random batches
(`Quantizer.calibrate`), bakes, slims (`remove_zero_channels`) and builds the QDQ graph
(`Quantizer.convert`): the same calls a run makes, without the training.
"""

from __future__ import annotations

import copy
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnxruntime as ort
import torch
from harness import interleaved_medians
from torch import Tensor, nn

from distill.compression import (
    ChannelPruning,
    L1Score,
    OneShotSchedule,
    PruningCallback,
    QuantizationCallback,
    bake_into,
)
from distill.config import build
from distill.deploy import remove_zero_channels
from distill.deploy.onnx_runtime import OrtModel
from recipes import compose_cfg

CIFAR_SHAPE = (3, 32, 32)


def load_note() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} CPUs"


def make_student(name: str, data: str = "cifar10", *overrides: str) -> nn.Module:
    """The student conf/student/<name>.yaml builds for `data` (its classes and input shape),
    with `overrides` (Hydra's, "student.width_mult=0.5"), seeded, in eval mode."""
    torch.manual_seed(0)
    cfg = compose_cfg(f"student={name}", f"data={data}", *overrides)
    return build(cfg.student, "student", expected=nn.Module).eval()


def input_shape(data: str) -> tuple[int, ...]:
    return tuple(compose_cfg(f"data={data}").data.input_shape)


def quantize(model: nn.Module, example: Tensor, **settings) -> QuantizationCallback:
    """Attach int8 QAT to `model` (after any masks) and enter its first quantized epoch."""
    quantization = QuantizationCallback(weight_bits=8, start_epoch=0, **settings)
    quantization.attach(model, example)
    quantization.enter_epoch(model, 0)
    return quantization


def calibrate(model: nn.Module, qat: QuantizationCallback, shape: tuple[int, ...]) -> None:
    """Run 8 random batches through `model` with its activation observers observing
    (`Quantizer.calibrate`: BatchNorm keeps the trained statistics, QAT folded them already),
    and leave it in eval mode."""
    qat.quantizer.calibrate(model, (torch.randn(64, *shape) for _ in range(8)))
    model.eval()


def int8_graph(plain: nn.Module, trained: nn.Module, qat: QuantizationCallback) -> nn.Module:
    """The QDQ model of `plain` (baked, maybe slimmed) with `trained`'s observed scales."""
    return qat.quantizer.convert(plain, qat.quantizer.qparams(trained))


@dataclass
class SlimBuild:
    """One student down the deploy path: the dense model, the slim fp32 model and its QDQ int8
    graph, with the numbers that say how much was removed."""

    name: str
    sparsity: float
    dense: nn.Module
    slim: nn.Module
    int8: nn.Module
    macs_dense: float
    macs_slim: float
    params_dense: int
    params_slim: int
    quantized_layers: int

    @property
    def macs_ratio(self) -> float:
        """dense MACs / slim MACs: how much less arithmetic per example."""
        return self.macs_dense / self.macs_slim


def build_slim(
    name: str,
    sparsity: float,
    data: str = "cifar10",
    round_to: int | None = None,
    overrides: tuple[str, ...] = (),
) -> SlimBuild:
    shape = input_shape(data)
    example = torch.randn(1, *shape)
    dense = make_student(name, data, *overrides)
    model = copy.deepcopy(dense)
    pruning = PruningCallback(
        ChannelPruning(L1Score()), OneShotSchedule(sparsity=sparsity, at=0), round_to=round_to
    )
    pruning.attach(model, example)
    pruning.apply(model, t=0)  # the final (and only) update
    qat = quantize(model, example)
    calibrate(model, qat, shape)
    baked = bake_into(model, make_student(name, data, *overrides)).eval()
    report = remove_zero_channels(baked, example)
    # The slim fp32 model: fp32 weights that sit on the int8 grid, BatchNorm folded to a shift;
    # the same shapes and ops, so the same time as a float-trained one.
    slim = report.model.eval()
    return SlimBuild(
        name=name,
        sparsity=sparsity,
        dense=dense,
        slim=slim,
        int8=int8_graph(slim, model, qat),
        macs_dense=report.macs_before,
        macs_slim=report.macs_after,
        params_dense=report.params_before,
        params_slim=report.params_after,
        quantized_layers=len(qat.layers),
    )


def optimized_op_counts(path: Path, out: Path) -> Counter:
    """Op types of the graph onnxruntime runs after its extended optimizations (QDQ fusion)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(out)
    options.log_severity_level = 3
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return Counter(node.op_type for node in onnx.load(str(out)).graph.node)


INT8_KERNELS = ("QLinearConv", "QLinearAdd", "QLinearMul", "QGemm", "QLinearMatMul")
FLOAT_COMPUTE = ("Conv", "Add", "Mul", "Gemm", "MatMul", "FusedConv")


# -- timing -------------------------------------------------------------------------------


def eager(model: nn.Module, inputs: Tensor) -> Callable[[], object]:
    model.eval()

    def run() -> None:
        with torch.inference_mode():
            model(inputs)

    return run


def timing_session(path: Path, threads: int) -> OrtModel:
    """`OrtModel(path, threads=threads)` whose idle pool threads sleep instead of spinning.

    onnxruntime's intra-op threads spin for a while after each run; interleaved with torch on a
    2-core machine they steal the cores from the torch variant timed next (a dense resnet20 at
    batch 64, 2 threads, measured ~50% slower right after a spinning session than right after a
    non-spinning one), which would inflate the baseline and the speed-ups. One thread has no
    pool, so nothing to switch off there. onnxruntime itself ran as fast either way.
    """
    model = OrtModel(path, threads=threads)
    if threads > 1:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        model.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return model


def in_ort(session: OrtModel, inputs: Tensor) -> Callable[[], object]:
    array = inputs.numpy()
    return lambda: session(array)


def budgeted_medians(
    variants: dict[str, Callable[[], object]], max_rounds: int, budget_s: float, min_rounds: int = 5
) -> tuple[dict[str, float], int]:
    """`interleaved_medians` with as many rounds as fit in `budget_s` (one timed round first,
    which is also the warm-up), between `min_rounds` and `max_rounds`."""
    started = time.perf_counter()
    for run in variants.values():
        run()
    per_round = time.perf_counter() - started
    rounds = max(min_rounds, min(max_rounds, int(budget_s / per_round)))
    return interleaved_medians(variants, rounds=rounds, warmup=1), rounds
