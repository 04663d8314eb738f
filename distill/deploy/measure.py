"""Measuring a runnable artifact itself: test accuracy, agreement, latency at batch 1 and 64;
and the facts about this machine that latency depends on."""

from __future__ import annotations

import contextlib
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

Predictor = Callable[[Tensor], "Tensor | np.ndarray"]


@dataclass
class TestSet:
    """The test inputs and labels, in memory (small here: MNIST-1D, digits, CIFAR's 10k)."""

    inputs: Tensor
    targets: Tensor

    @classmethod
    def from_loader(cls, loader) -> TestSet:
        inputs, targets = [], []
        for batch in loader:
            inputs.append(batch[0])
            targets.append(batch[1])
        return cls(torch.cat(inputs), torch.cat(targets))


def torch_predictor(model: nn.Module) -> Predictor:
    model.eval()

    def run(inputs: Tensor) -> Tensor:
        with torch.inference_mode():
            return model(inputs)

    return run


def predict(run: Predictor, inputs: Tensor, batch_size: int = 256) -> np.ndarray:
    """Predicted classes for all `inputs`."""
    classes = []
    for start in range(0, len(inputs), batch_size):
        logits = run(inputs[start : start + batch_size])
        logits = logits.numpy() if isinstance(logits, Tensor) else logits
        classes.append(np.asarray(logits).argmax(axis=1))
    return np.concatenate(classes)


# Latency is measured on one thread, torch, onnxruntime and ExecuTorch alike: the same footing
# for every row, and on a shared machine a busy neighbour stalls multi-threaded torch by 10-100x
# (OpenMP threads wait on each other), which would make every ratio meaningless.
LATENCY_THREADS = 1


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def latency_ms(run: Predictor, inputs: Tensor, repeats: int, warmup: int = 3) -> float:
    """Median wall time of one call on `inputs`, in milliseconds, on `LATENCY_THREADS`."""
    with torch_threads(LATENCY_THREADS):
        for _ in range(warmup):
            run(inputs)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            run(inputs)
            times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def measure(
    run: Predictor,
    test_set: TestSet,
    reference_classes: np.ndarray | None = None,
    repeats: int = 20,
    timed: Predictor | None = None,
) -> dict[str, float | None]:
    """test_acc and agreement on the whole test set; latency at batch 1 and at batch 64
    (of `timed` when given: the same model set up for `LATENCY_THREADS`)."""
    timed = timed or run
    classes = predict(run, test_set.inputs)
    targets = test_set.targets.numpy()
    batch64 = test_set.inputs[:64]
    if len(batch64) < 64:  # a tiny test set: repeat it up to a full batch
        batch64 = batch64.repeat(
            (64 + len(batch64) - 1) // len(batch64), *[1] * (batch64.dim() - 1)
        )
        batch64 = batch64[:64]
    return {
        "test_acc": float((classes == targets).mean()),
        "agreement": (
            None if reference_classes is None else float((classes == reference_classes).mean())
        ),
        "latency_ms_bs1": latency_ms(timed, test_set.inputs[:1], repeats * 5),
        "latency_ms_bs64": latency_ms(timed, batch64.contiguous(), repeats),
    }


# CPU flags (x86 /proc/cpuinfo `flags`, Arm `Features`) for instructions that compute int8 dot
# products. Without them onnxruntime's int8 convolutions run u8 x s8 on AVX2 (which saturates
# with 8-bit weights) and can lose to fp32; the report names what this machine has.
INT8_INSTRUCTIONS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")


def machine_facts(cpuinfo: str | Path = "/proc/cpuinfo") -> dict[str, Any]:
    """`cpu` (model name) and `int8_instructions` (those of `INT8_INSTRUCTIONS` present, in
    that order; None where `cpuinfo` cannot be read, e.g. not Linux)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return {"cpu": platform.processor() or None, "int8_instructions": None}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    flags = set((fields.get("flags") or fields.get("features") or "").split())
    return {
        "cpu": fields.get("model name") or platform.processor() or None,
        "int8_instructions": [name for name in INT8_INSTRUCTIONS if name in flags],
    }
