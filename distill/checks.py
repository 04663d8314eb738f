"""Checks that run before any work: a fresh run directory, models that fit the data."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from distill.data import ClassificationDataModule
from distill.errors import ConfigError


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
