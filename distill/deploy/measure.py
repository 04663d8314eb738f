"""Measuring a runnable artifact itself: test accuracy, agreement, latency at batch 1 and 64."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

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
