"""Checks that run before any work: a fresh run directory, models that fit the data."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.data import ClassificationDataModule
from distill.errors import ConfigError
from distill.validate import require_int


def ensure_fresh_run_dir(run_dir: Path) -> None:
    """A run never writes into another run's directory."""
    if (run_dir / "summary.json").exists() or any((run_dir / "checkpoints").glob("*.ckpt")):
        raise ConfigError(
            "hydra.run.dir",
            str(run_dir),
            "a directory that holds no earlier run (it has summary.json or checkpoints)",
        )


def check_fits_data(model: nn.Module, datamodule: ClassificationDataModule, field: str) -> None:
    """One example batch through `model`: it must take the inputs and give one logit per class."""
    inputs = datamodule.example_input_batch(2)
    was_training = model.training
    model.eval()  # so BatchNorm statistics are not touched by this probe
    try:
        with torch.no_grad():
            logits = model(inputs)
    except Exception as error:
        raise ConfigError(
            field,
            _target_name(model),
            f"a model that takes inputs of shape {tuple(inputs.shape)} ({error})",
        ) from error
    finally:
        model.train(was_training)
    if not isinstance(logits, torch.Tensor) or logits.shape != (2, datamodule.num_classes):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ConfigError(
            field,
            _target_name(model),
            f"a model whose output is (batch, {datamodule.num_classes}) logits for the "
            f"{datamodule.num_classes} classes of the data; it gives {shape}",
        )


def _target_name(model: nn.Module) -> str:
    return f"{type(model).__module__}.{type(model).__qualname__}"


@contextlib.contextmanager
def torch_threads(threads: Any) -> Iterator[None]:
    """Run with the torch CPU thread count of the run's `threads` (null keeps the process's,
    by default one per core), restored afterwards. CPU kernels split their sums by thread, so
    the same recipe on 1 and on 2 threads gives different numbers: recipes record the count
    they were measured with, and the teacher cache key includes it."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(require_int("threads", threads, minimum=1))
    try:
        yield
    finally:
        torch.set_num_threads(before)
