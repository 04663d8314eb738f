"""A search space written in Hydra's sweep grammar, as Optuna distributions.

The grammar is the one Hydra users already write for sweeps (and the Hydra Optuna sweeper
reads), one override per dimension:

    loss.kd.temperature=tag(log, interval(1, 8))     float, log-uniform
    loss.kd.weight=interval(0.1, 0.9)                float, uniform
    pruning.schedule.final_sparsity=range(0.3, 0.85, 0.05)
                                                     the values Hydra's range gives (stop
                                                     excluded), as a stepped distribution
    quantization.weight_bits=choice(7, 8)            categorical (also `7,8`)
    pruning=channel_l1,channel_taylor                a config group's options

A dimension is checked when it is read: an empty range or choice, a reversed interval and a
log scale over values <= 0 are refused, naming the key.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.errors import HydraException
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from distill.errors import ConfigError
from distill.trust import is_command_line_only

GRAMMAR = (
    "a sweep in Hydra's grammar: interval(low, high), tag(log, interval(low, high)), "
    "range(start, stop, step) or choice(a, b, ...) / a,b"
)
# Sampled floats are written into the trial's command line with this many significant digits,
# so `0.30000000000000004` becomes `0.3`; the run uses exactly what the command line says.
FLOAT_DIGITS = 10


@dataclass(frozen=True)
class Dimension:
    """One searched setting: the override key and the distribution its values come from."""

    key: str
    distribution: BaseDistribution
    # `pruning=...` picks a config group's option, `loss.kd.weight=...` sets a value.
    is_group: bool = False

    def override(self, value: Any) -> str:
        """The command-line override that sets this dimension to `value`."""
        if isinstance(value, float):
            value = float(f"{value:.{FLOAT_DIGITS}g}")
        return f"{self.key}={value}"

    def extremes(self) -> list[Any]:
        """The values at the edges of the dimension (every choice of a categorical one): the
        run must accept each, which is checked before the first trial."""
        distribution = self.distribution
        if isinstance(distribution, CategoricalDistribution):
            return list(distribution.choices)
        assert isinstance(distribution, FloatDistribution | IntDistribution)
        return [distribution.low, distribution.high]

    def contains(self, value: Any) -> bool:
        """Whether `value` (a composed config's own value) is a point of this dimension."""
        distribution = self.distribution
        if isinstance(distribution, CategoricalDistribution):
            return value in distribution.choices
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if isinstance(distribution, IntDistribution) and not float(value).is_integer():
            return False
        return bool(distribution._contains(distribution.to_internal_repr(value)))

    def describe(self) -> str:
        distribution = self.distribution
        if isinstance(distribution, CategoricalDistribution):
            return "choice(" + ", ".join(str(choice) for choice in distribution.choices) + ")"
        assert isinstance(distribution, FloatDistribution | IntDistribution)
        scale = "log " if distribution.log else ""
        step = f" step {distribution.step}" if distribution.step is not None else ""
        return f"{scale}[{distribution.low}, {distribution.high}]{step}"


def parse_space(entries: Mapping[str, str] | Iterable[str], field: str = "search.space") -> list:
    """Dimensions from `{key: sweep}` (a config's `search.space`) or `key=sweep` overrides."""
    if isinstance(entries, Mapping):
        items = [(str(key), str(sweep)) for key, sweep in entries.items()]
        overrides = [f"{key}={sweep}" for key, sweep in items]
    else:
        overrides = list(entries)
    dimensions = [dimension_of(parse_override(text, field), field) for text in overrides]
    keys = [dimension.key for dimension in dimensions]
    duplicated = sorted({key for key in keys if keys.count(key) > 1})
    if duplicated:
        raise ConfigError(field, duplicated, "each key searched once")
    return dimensions


def parse_override(text: str, field: str = "search.space") -> Override:
    try:
        (override,) = OverridesParser.create().parse_overrides([text])
    except HydraException as error:
        raise ConfigError(field, text, f"{GRAMMAR} ({error})") from error
    return override


def dimension_of(override: Override, field: str = "search.space") -> Dimension:
    """The Optuna distribution of one sweep override; a plain value is not a dimension."""
    key = override.get_key_element().lstrip("+~")
    where = f"{field}.{key}"
    value = override.value()
    if is_command_line_only(key):
        # A searched value lands on every trial's distill-train command line, where it would
        # be trusted as the user's own: a search config could trust code for itself.
        raise ConfigError(where, str(value), "a run setting other than trusted_targets or hydra.*")
    is_group = _looks_like_group(key)
    if isinstance(value, ChoiceSweep):
        choices = list(value.list)
        if len(choices) < 2:
            raise ConfigError(where, choices, "two or more choices (one value: give it plainly)")
        if not all(choice is None or isinstance(choice, str | int | float) for choice in choices):
            raise ConfigError(where, choices, "choices that are single values (str, number)")
        if len(set(map(str, choices))) != len(choices):
            raise ConfigError(where, choices, "distinct choices")
        return Dimension(key, CategoricalDistribution(cast(list[Any], choices)), is_group)
    if isinstance(value, IntervalSweep):
        low, high = float(cast(float, value.start)), float(cast(float, value.end))
        log = "log" in value.tags
        _check_bounds(where, low, high, log, f"interval({value.start}, {value.end})")
        return Dimension(key, FloatDistribution(low, high, log=log))
    if isinstance(value, RangeSweep):
        return Dimension(key, _range_distribution(where, value))
    raise ConfigError(where, str(value), GRAMMAR)


def _range_distribution(where: str, sweep: RangeSweep) -> BaseDistribution:
    start, stop, step = cast(float, sweep.start), cast(float, sweep.stop), sweep.step
    shown = f"range({start}, {stop}, {step})"
    if "log" in sweep.tags:
        raise ConfigError(where, shown, "a log scale on interval(...) only")
    if step is None or step <= 0:
        raise ConfigError(where, shown, "a positive step")
    # Hydra's range excludes `stop`, as Python's does; the last value is the highest.
    count = math.ceil((stop - start) / step - 1e-9)
    if count < 2:
        raise ConfigError(where, shown, "a range of two or more values (stop is excluded)")
    last = start + (count - 1) * step
    if all(isinstance(number, int) for number in (start, stop, step)):
        return IntDistribution(int(start), int(last), step=int(step))
    return FloatDistribution(float(start), float(f"{last:.{FLOAT_DIGITS}g}"), step=float(step))


def _check_bounds(where: str, low: float, high: float, log: bool, shown: str) -> None:
    if not low < high:
        raise ConfigError(where, shown, "an interval whose low is below its high")
    if log and low <= 0:
        raise ConfigError(where, shown, "positive bounds for a log scale")


def _looks_like_group(key: str) -> bool:
    # A top-level key without dots that names a config group: `pruning`, `student`, `loss`.
    from distill.config import CONF_DIR

    return "." not in key and (CONF_DIR / key).is_dir()
