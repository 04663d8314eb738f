"""The project's error types: bad user input (`ConfigError`, refused before any work starts;
exit 2), an artifact that could not be produced (`ExportError`; exit 1), and a training run
whose loss or weights stopped being finite (`TrainingDiverged`; exit 1)."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A setting is wrong. The message names the field, the bad value and what is allowed."""

    def __init__(self, field: str, value: Any, allowed: str) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"{field}={value!r} is not allowed: {allowed}")


class ExportError(RuntimeError):
    """An artifact could not be produced or failed its checks; nothing was kept."""


class TrainingDiverged(RuntimeError):
    """Training produced a NaN or infinite loss (or weights) and was stopped before anything
    saved them. The message names the culprits, the step and the epoch (kept as attributes)."""

    def __init__(self, message: str, step: int, epoch: int) -> None:
        self.step = step
        self.epoch = epoch
        super().__init__(message)
