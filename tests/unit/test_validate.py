"""distill.validate: what each check accepts (returned converted) and the exact refusal."""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import numpy as np
import pytest

from distill.errors import ConfigError
from distill.validate import (
    is_int,
    is_real,
    require_bool,
    require_choice,
    require_fraction,
    require_int,
    require_ints,
    require_positive,
    require_real,
)

Check = Callable[[Any], Any]

# (check, value, expected return); the return must equal it and have its exact type.
ACCEPTED: list[tuple[str, Check, Any, Any]] = [
    ("int", lambda v: require_int("x", v), 3, 3),
    ("int numpy", lambda v: require_int("x", v), np.int64(-7), -7),
    ("int at minimum", lambda v: require_int("x", v, minimum=1), 1, 1),
    ("int at maximum", lambda v: require_int("x", v, minimum=0, maximum=5), 5, 5),
    ("real int", lambda v: require_real("x", v), 2, 2.0),
    ("real numpy", lambda v: require_real("x", v), np.float32(0.5), 0.5),
    ("real fraction type", lambda v: require_real("x", v), Fraction(1, 4), 0.25),
    ("real at inclusive min", lambda v: require_real("x", v, minimum=0), 0, 0.0),
    ("real at inclusive max", lambda v: require_real("x", v, maximum=1.5), 1.5, 1.5),
    (
        "real inf allowed",
        lambda v: require_real("x", v, minimum=0, finite=False),
        math.inf,
        math.inf,
    ),
    ("positive", lambda v: require_positive("x", v), 1e-12, 1e-12),
    ("positive int", lambda v: require_positive("x", v), 4, 4.0),
    ("fraction 0", lambda v: require_fraction("x", v), 0, 0.0),
    ("fraction below 1", lambda v: require_fraction("x", v), 0.999, 0.999),
    ("bool true", lambda v: require_bool("x", v), True, True),
    ("bool false", lambda v: require_bool("x", v), False, False),
    ("choice", lambda v: require_choice("x", v, ("a", "b")), "b", "b"),
    ("ints list", lambda v: require_ints("x", v), [3, 32, 32], (3, 32, 32)),
    ("ints tuple numpy", lambda v: require_ints("x", v), (np.int32(2),), (2,)),
    ("ints minimum 0", lambda v: require_ints("x", v, minimum=0), [0, 1], (0, 1)),
    ("ints length", lambda v: require_ints("x", v, lengths=(1, 2)), [4, 5], (4, 5)),
]


@pytest.mark.parametrize(
    ("check", "value", "expected"),
    [case[1:] for case in ACCEPTED],
    ids=[case[0] for case in ACCEPTED],
)
def test_accepted_values_come_back_converted(check: Check, value: Any, expected: Any) -> None:
    result = check(value)
    assert result == expected
    assert type(result) is type(expected)
    if isinstance(expected, tuple):
        assert all(type(item) is int for item in result)


# (check, value, allowed): the error must read exactly `x=<repr> is not allowed: <allowed>`.
REFUSED: list[tuple[str, Check, Any, str]] = [
    ("int bool", lambda v: require_int("x", v), True, "an integer"),
    ("int float", lambda v: require_int("x", v), 2.0, "an integer"),
    ("int string", lambda v: require_int("x", v), "3", "an integer"),
    ("int below minimum", lambda v: require_int("x", v, minimum=1), 0, "an integer >= 1"),
    ("int above maximum", lambda v: require_int("x", v, maximum=5), 6, "an integer <= 5"),
    ("int outside range", lambda v: require_int("x", v, 0, 5), -1, "an integer in [0, 5]"),
    ("int allowed text", lambda v: require_int("x", v, 20, allowed="20 or more"), 5, "20 or more"),
    ("real bool", lambda v: require_real("x", v), False, "a finite number"),
    ("real string", lambda v: require_real("x", v), "0.5", "a finite number"),
    ("real None", lambda v: require_real("x", v), None, "a finite number"),
    ("real complex", lambda v: require_real("x", v), 1j, "a finite number"),
    ("real nan", lambda v: require_real("x", v), math.nan, "a finite number"),
    ("real inf", lambda v: require_real("x", v), math.inf, "a finite number"),
    ("real -inf", lambda v: require_real("x", v), -math.inf, "a finite number"),
    ("real nan not finite", lambda v: require_real("x", v, finite=False), math.nan, "a number"),
    (
        "real -inf below min",
        lambda v: require_real("x", v, minimum=0, finite=False),
        -math.inf,
        "a number >= 0",
    ),
    ("real below min", lambda v: require_real("x", v, minimum=1), 0.5, "a finite number >= 1"),
    (
        "real at exclusive min",
        lambda v: require_real("x", v, minimum=0, min_inclusive=False),
        0,
        "a finite number > 0",
    ),
    (
        "real at exclusive max",
        lambda v: require_real("x", v, maximum=1, max_inclusive=False),
        1,
        "a finite number < 1",
    ),
    ("real above max", lambda v: require_real("x", v, maximum=1), 1.5, "a finite number <= 1"),
    (
        "real open interval",
        lambda v: require_real("x", v, 0, 1, min_inclusive=False, max_inclusive=False),
        0.0,
        "a finite number in (0, 1)",
    ),
    ("positive zero", lambda v: require_positive("x", v), 0.0, "a finite number > 0"),
    ("positive negative", lambda v: require_positive("x", v), -1, "a finite number > 0"),
    ("positive bool", lambda v: require_positive("x", v), True, "a finite number > 0"),
    ("positive inf", lambda v: require_positive("x", v), math.inf, "a finite number > 0"),
    ("positive allowed", lambda v: require_positive("x", v, allowed="> 0"), 0, "> 0"),
    ("fraction 1", lambda v: require_fraction("x", v), 1.0, "a number in [0, 1)"),
    ("fraction negative", lambda v: require_fraction("x", v), -0.1, "a number in [0, 1)"),
    ("fraction nan", lambda v: require_fraction("x", v), math.nan, "a number in [0, 1)"),
    ("fraction bool", lambda v: require_fraction("x", v), False, "a number in [0, 1)"),
    ("fraction allowed", lambda v: require_fraction("x", v, allowed="p < 1"), 2, "p < 1"),
    ("bool string", lambda v: require_bool("x", v), "false", "true or false"),
    ("bool int", lambda v: require_bool("x", v), 1, "true or false"),
    ("choice", lambda v: require_choice("x", v, ("a", "b")), "c", "one of ('a', 'b')"),
    (
        "choice allowed",
        lambda v: require_choice("x", v, ["a", "b"], allowed="one of a, b"),
        "A",
        "one of a, b",
    ),
    ("ints string", lambda v: require_ints("x", v), "32", "a non-empty sequence of integers >= 1"),
    (
        "ints bytes",
        lambda v: require_ints("x", v),
        b"\x01",
        "a non-empty sequence of integers >= 1",
    ),
    ("ints scalar", lambda v: require_ints("x", v), 3, "a non-empty sequence of integers >= 1"),
    ("ints empty", lambda v: require_ints("x", v), [], "a non-empty sequence of integers >= 1"),
    ("ints zero", lambda v: require_ints("x", v), [1, 0], "a non-empty sequence of integers >= 1"),
    ("ints bool", lambda v: require_ints("x", v), [True], "a non-empty sequence of integers >= 1"),
    ("ints float", lambda v: require_ints("x", v), [2.0], "a non-empty sequence of integers >= 1"),
    (
        "ints length",
        lambda v: require_ints("x", v, lengths=(1, 2)),
        [1, 2, 3],
        "a sequence of 1 or 2 integers >= 1",
    ),
    (
        "ints minimum",
        lambda v: require_ints("x", v, minimum=0),
        [-1],
        "a non-empty sequence of integers >= 0",
    ),
    ("ints allowed", lambda v: require_ints("x", v, allowed="sizes"), (), "sizes"),
]


@pytest.mark.parametrize(
    ("check", "value", "allowed"),
    [case[1:] for case in REFUSED],
    ids=[case[0] for case in REFUSED],
)
def test_refused_values_name_field_value_and_allowed(
    check: Check, value: Any, allowed: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        check(value)
    error = raised.value
    assert (error.field, error.allowed) == ("x", allowed)
    assert error.value is value
    assert str(error) == f"x={value!r} is not allowed: {allowed}"


@pytest.mark.parametrize(
    ("value", "integer", "real"),
    [
        (3, True, True),
        (np.int8(3), True, True),
        (3.0, False, True),
        (np.float64(0.5), False, True),
        (math.nan, False, True),  # a real number; finiteness is require_real's business
        (True, False, False),
        (False, False, False),
        ("3", False, False),
        (None, False, False),
        (1j, False, False),
    ],
)
def test_is_int_and_is_real(value: Any, integer: bool, real: bool) -> None:
    assert (is_int(value), is_real(value)) == (integer, real)
