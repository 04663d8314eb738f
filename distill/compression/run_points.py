"""Points of a run (when QAT starts, when a pruning ramp begins and ends): a count of epochs or
steps, or a fraction of the run, so one config serves a 5-epoch smoke run and a 240-epoch one.

Fractions are turned into counts once the run's length is known (`trainer.max_epochs`, or the
optimizer steps of the fit), rounded down: 0.5 of 5 epochs is epoch 2.
"""

from __future__ import annotations

from typing import Any

from distill.errors import ConfigError
from distill.validate import is_int


def point_allowed(unit: str, length_name: str) -> str:
    return f"an {unit} number >= 0, or a fraction of {length_name} in (0, 1)"


def check_point(
    field: str, value: Any, unit: str = "epoch", length_name: str = "the run"
) -> int | float:
    """`value` as given in a config: an integer >= 0, or a fraction in (0, 1)."""
    if is_int(value) and value >= 0:
        return int(value)
    if isinstance(value, float) and 0.0 < value < 1.0:
        return value
    raise ConfigError(field, value, point_allowed(unit, length_name))


def resolve_point(field: str, value: int | float, length: int | None, length_name: str) -> int:
    """`value` as a count: integers as they are, fractions of `length` rounded down."""
    if isinstance(value, int):
        return value
    if length is None or length <= 0:
        raise ConfigError(field, value, f"a number: a fraction needs {length_name} to be set")
    return int(value * length)
