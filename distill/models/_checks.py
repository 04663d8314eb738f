"""Argument checks shared by the model constructors.

Each check raises `ConfigError` naming the field, so a bad config fails at construction with a
message that says what to fix, rather than as a shape mismatch inside the first forward pass.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

from distill.errors import ConfigError


def _is_int(value: Any) -> bool:
    # bool is an int subclass; `num_classes=True` is always a config mistake.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def positive_int(field: str, value: Any) -> int:
    """Return `value` as an int, or raise if it is not an integer >= 1."""
    if not _is_int(value) or value < 1:
        raise ConfigError(field, value, "an integer >= 1")
    return int(value)


def positive_ints(field: str, value: Any, lengths: Sequence[int] | None = None) -> tuple[int, ...]:
    """Return `value` as a tuple of ints >= 1, non-empty, with a length in `lengths` if given."""
    if lengths is None:
        allowed = "a non-empty sequence of integers >= 1"
    else:
        allowed = f"a sequence of {' or '.join(map(str, lengths))} integers >= 1"
    # A string is a Sequence too, but never a meaningful list of sizes.
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ConfigError(field, value, allowed)
    items = tuple(value)
    if not items or (lengths is not None and len(items) not in lengths):
        raise ConfigError(field, value, allowed)
    if not all(_is_int(item) and item >= 1 for item in items):
        raise ConfigError(field, value, allowed)
    return tuple(int(item) for item in items)


def dropout_probability(field: str, value: Any) -> float:
    """Return `value` as a float in [0, 1); p = 1 would zero every activation."""
    allowed = "a number in [0, 1)"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(field, value, allowed)
    if not 0.0 <= float(value) < 1.0:
        raise ConfigError(field, value, allowed)
    return float(value)


def flag(field: str, value: Any) -> bool:
    """Return `value` if it is a bool; a truthy string such as "false" is rejected, not guessed."""
    if not isinstance(value, bool):
        raise ConfigError(field, value, "true or false")
    return value
