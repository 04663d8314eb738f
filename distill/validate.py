"""The one set of checks for user settings: each returns the value, or raises a `ConfigError`
that names the field, the bad value and what is allowed.

Every constructor that takes a setting from a config calls these instead of writing its own
`isinstance` guard, so the same mistake gets the same message everywhere. `bool` is refused
wherever a number is asked for: it is an `int` subclass in Python, and `batch_size=true` is
always a typo, never a batch of one.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection, Sequence
from typing import Any, TypeVar

from distill.errors import ConfigError

T = TypeVar("T")


def is_int(value: Any) -> bool:
    """An integer that is not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """A real number (int or float) that is not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _bounds(
    minimum: float | None,
    maximum: float | None,
    min_inclusive: bool = True,
    max_inclusive: bool = True,
) -> str:
    if minimum is not None and maximum is not None:
        left, right = "[" if min_inclusive else "(", "]" if max_inclusive else ")"
        return f" in {left}{minimum}, {maximum}{right}"
    if minimum is not None:
        return f" {'>=' if min_inclusive else '>'} {minimum}"
    if maximum is not None:
        return f" {'<=' if max_inclusive else '<'} {maximum}"
    return ""


def _within(
    value: float,
    minimum: float | None,
    maximum: float | None,
    min_inclusive: bool,
    max_inclusive: bool,
) -> bool:
    if minimum is not None and (value < minimum or (value == minimum and not min_inclusive)):
        return False
    return maximum is None or not (value > maximum or (value == maximum and not max_inclusive))


def require_int(
    field: str,
    value: Any,
    minimum: int | None = None,
    maximum: int | None = None,
    allowed: str | None = None,
) -> int:
    """`value` as an int, within [minimum, maximum] where given."""
    if not is_int(value) or not _within(value, minimum, maximum, True, True):
        raise ConfigError(field, value, allowed or f"an integer{_bounds(minimum, maximum)}")
    return int(value)


def require_real(
    field: str,
    value: Any,
    minimum: float | None = None,
    maximum: float | None = None,
    min_inclusive: bool = True,
    max_inclusive: bool = True,
    allowed: str | None = None,
    finite: bool = True,
) -> float:
    """`value` as a float, within the bounds where given (inclusive unless told).

    Infinities are refused unless `finite` is false (a tolerance of inf means "do not check");
    NaN is always refused, since no bound can be checked against it.
    """
    valid = (
        is_real(value)
        and not math.isnan(value)
        and (math.isfinite(value) or not finite)
        and _within(value, minimum, maximum, min_inclusive, max_inclusive)
    )
    if not valid:
        bounds = _bounds(minimum, maximum, min_inclusive, max_inclusive)
        kind = "a finite number" if finite else "a number"
        raise ConfigError(field, value, allowed or f"{kind}{bounds}")
    return float(value)


def require_positive(field: str, value: Any, allowed: str | None = None) -> float:
    """A finite number > 0 (temperatures, margins, scales)."""
    return require_real(field, value, minimum=0, min_inclusive=False, allowed=allowed)


# The wording every fraction setting (sparsity, dropout, label smoothing, val_fraction) used
# before this module existed; tests and users match on it.
FRACTION = "a number in [0, 1)"


def require_fraction(field: str, value: Any, allowed: str | None = None) -> float:
    """A finite number in [0, 1): a sparsity, a dropout probability, a held-out fraction."""
    return require_real(field, value, 0.0, 1.0, max_inclusive=False, allowed=allowed or FRACTION)


def require_bool(field: str, value: Any) -> bool:
    """True or false; a truthy string such as "false" is refused, not guessed."""
    if not isinstance(value, bool):
        raise ConfigError(field, value, "true or false")
    return value


def require_choice(field: str, value: T, choices: Collection[T], allowed: str | None = None) -> T:
    """One of `choices`."""
    if value not in choices:
        raise ConfigError(field, value, allowed or f"one of {tuple(choices)}")
    return value


def require_ints(
    field: str,
    value: Any,
    minimum: int = 1,
    lengths: Sequence[int] | None = None,
    allowed: str | None = None,
) -> tuple[int, ...]:
    """A non-empty sequence of integers >= `minimum`, of a length in `lengths` where given."""
    if allowed is None:
        count = (
            "a non-empty sequence of"
            if lengths is None
            else (f"a sequence of {' or '.join(map(str, lengths))}")
        )
        allowed = f"{count} integers >= {minimum}"
    # A string is a Sequence too, but never a meaningful list of sizes.
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ConfigError(field, value, allowed)
    items = tuple(value)
    if not items or (lengths is not None and len(items) not in lengths):
        raise ConfigError(field, value, allowed)
    if not all(is_int(item) and item >= minimum for item in items):
        raise ConfigError(field, value, allowed)
    return tuple(int(item) for item in items)
