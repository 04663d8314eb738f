"""Sparsity schedules: frozen, validated dataclasses that say how sparse to be at step t.

Every schedule answers `sparsity_at(t)`, the target of the last update at or before t (0.0
before the first update, since nothing is pruned yet), and `is_update(t)`, whether masks are
recomputed at t. `final_sparsity` is the sparsity from `last_update` on. Whether t counts steps
or epochs is the caller's choice.

A schedule's points (start, end, `at`, the steps of an iterative one) are counts or fractions of
the run (distill.compression.run_points). `resolved(length, ...)` turns fractions into counts
and refuses a schedule that does not finish within the run: a ramp whose last update comes
after the last epoch would leave the student short of its target (and a "slim" model that is
no smaller). Only a resolved schedule answers `sparsity_at` and `is_update`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol, TypeVar, runtime_checkable

from distill.compression.run_points import check_point, resolve_point
from distill.compression.selection import SPARSITY_ALLOWED
from distill.errors import ConfigError
from distill.validate import is_int, require_fraction, require_int


@runtime_checkable
class SparsitySchedule(Protocol):
    """What a pruning callback needs from a schedule."""

    @property
    def final_sparsity(self) -> float: ...

    @property
    def last_update(self) -> int: ...

    def sparsity_at(self, t: int) -> float: ...

    def is_update(self, t: int) -> bool: ...

    def resolved(self, length: int | None, length_name: str, unit: str) -> SparsitySchedule: ...


_Schedule = TypeVar("_Schedule", bound=SparsitySchedule)


def check_finishes(
    schedule: _Schedule, field: str, value: object, length: int | None, length_name: str, unit: str
) -> _Schedule:
    """`schedule` (resolved) if its last update falls within a run of `length` units."""
    if length is not None and length > 0 and schedule.last_update >= length:
        raise ConfigError(
            field,
            value,
            f"a schedule that ends within {length_name}={length}: its last update is at {unit} "
            f"{schedule.last_update} and the run's last {unit} is {length - 1} (shorten it, or "
            "give its points as fractions of the run, e.g. start=0.1, end=0.5)",
        )
    return schedule


_Ramp = TypeVar("_Ramp", bound="_RampSchedule")


@dataclass(frozen=True, kw_only=True)
class _RampSchedule:
    """Updates at `start + k * frequency` for k = 0..num_updates, from initial to final.

    The ramp's length is `num_updates`, or else the last update at or before `end`; `start`
    and `end` may be fractions of the run. `num_updates`, when given, decides and `end` is not
    used (a recipe that counts updates keeps its schedule whatever the default `end`).
    """

    final_sparsity: float
    start: int | float
    frequency: int = 1
    num_updates: int | None = None
    end: int | float | None = None
    initial_sparsity: float = 0.0

    def __post_init__(self) -> None:
        initial = require_fraction(
            "schedule.initial_sparsity", self.initial_sparsity, allowed=SPARSITY_ALLOWED
        )
        final = require_fraction(
            "schedule.final_sparsity", self.final_sparsity, allowed=SPARSITY_ALLOWED
        )
        if final < initial:
            raise ConfigError(
                "schedule.final_sparsity", final, f">= schedule.initial_sparsity={initial}"
            )
        # Frozen dataclass: normalise ints from YAML to floats through object.__setattr__.
        object.__setattr__(self, "initial_sparsity", initial)
        object.__setattr__(self, "final_sparsity", final)
        object.__setattr__(self, "start", check_point("schedule.start", self.start))
        require_int("schedule.frequency", self.frequency, minimum=1)
        if self.num_updates is not None:
            require_int("schedule.num_updates", self.num_updates, minimum=1)
            object.__setattr__(self, "end", None)
        elif self.end is None:
            raise ConfigError(
                "schedule.end", None, "the point of the last update, or schedule.num_updates"
            )
        else:
            object.__setattr__(self, "end", check_point("schedule.end", self.end))
            if isinstance(self.start, int) and isinstance(self.end, int):
                self._updates_until(self.start, self.end)  # refused now if out of order

    @classmethod
    def between(
        cls: type[_Ramp],
        *,
        start: int,
        end: int,
        frequency: int,
        final_sparsity: float,
        initial_sparsity: float = 0.0,
    ) -> _Ramp:
        """The schedule whose last update is `end`, a multiple of `frequency` after `start`."""
        require_int("schedule.start", start, minimum=0)
        require_int("schedule.frequency", frequency, minimum=1)
        require_int("schedule.end", end, minimum=0)
        if end <= start:
            raise ConfigError("schedule.end", end, f"a step after schedule.start={start}")
        if (end - start) % frequency:
            raise ConfigError(
                "schedule.end", end, f"schedule.start={start} plus a multiple of {frequency}"
            )
        return cls(
            start=start,
            frequency=frequency,
            num_updates=(end - start) // frequency,
            final_sparsity=final_sparsity,
            initial_sparsity=initial_sparsity,
        )

    def _updates_until(self, start: int, end: int, run: str = "") -> int:
        updates = (end - start) // self.frequency
        if updates < 1:
            raise ConfigError(
                "schedule.end",
                self.end,
                f"a point at least schedule.frequency={self.frequency} after schedule.start"
                f"{run} (start {start}, end {end})",
            )
        return updates

    def resolved(self: _Ramp, length: int | None, length_name: str, unit: str) -> _Ramp:
        start = resolve_point("schedule.start", self.start, length, length_name)
        value: int | float
        if self.num_updates is not None:
            schedule = replace(self, start=start)
            field, value = "schedule.num_updates", self.num_updates
        else:
            assert self.end is not None  # checked at construction
            end = resolve_point("schedule.end", self.end, length, length_name)
            updates = self._updates_until(start, end, f" in a run of {length_name}={length}")
            schedule = replace(self, start=start, num_updates=updates)
            field, value = "schedule.end", self.end
        return check_finishes(schedule, field, value, length, length_name, unit)

    def _points(self) -> tuple[int, int]:
        if not isinstance(self.start, int) or self.num_updates is None:
            raise RuntimeError("a schedule with fractions of the run: use .resolved() first")
        return self.start, self.num_updates

    @property
    def last_update(self) -> int:
        start, num_updates = self._points()
        return start + num_updates * self.frequency

    def sparsity_at(self, t: int) -> float:
        start, num_updates = self._points()
        if t < start:
            return 0.0
        updates_done = min((t - start) // self.frequency, num_updates)
        # Exact endpoints, whatever the float rounding of the ramp in between.
        if updates_done == 0:
            return self.initial_sparsity
        if updates_done == num_updates:
            return self.final_sparsity
        return self._ramp(updates_done / num_updates)

    def is_update(self, t: int) -> bool:
        start, _ = self._points()
        return start <= t <= self.last_update and (t - start) % self.frequency == 0

    def _ramp(self, progress: float) -> float:
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class AGPSchedule(_RampSchedule):
    """Automated gradual pruning, Zhu & Gupta 2017 (arXiv:1710.01878), eq. 1.

    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt))^3 at t = t0 + k * dt, k = 0..n, held
    between updates and s_f after t0 + n * dt. Prunes fast while many redundant weights remain,
    then slowly.
    """

    def _ramp(self, progress: float) -> float:
        initial, final = self.initial_sparsity, self.final_sparsity
        return final + (initial - final) * (1.0 - progress) ** 3


@dataclass(frozen=True, kw_only=True)
class LinearSchedule(_RampSchedule):
    """The update points of `AGPSchedule`, with a linear ramp from initial to final sparsity."""

    def _ramp(self, progress: float) -> float:
        initial, final = self.initial_sparsity, self.final_sparsity
        return initial + (final - initial) * progress


@dataclass(frozen=True, kw_only=True)
class OneShotSchedule:
    """Prune once to `sparsity` at `at`, then hold (0.0 before)."""

    sparsity: float
    at: int | float

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "sparsity",
            require_fraction("schedule.sparsity", self.sparsity, allowed=SPARSITY_ALLOWED),
        )
        object.__setattr__(self, "at", check_point("schedule.at", self.at))

    def resolved(self, length: int | None, length_name: str, unit: str) -> OneShotSchedule:
        schedule = replace(self, at=resolve_point("schedule.at", self.at, length, length_name))
        return check_finishes(schedule, "schedule.at", self.at, length, length_name, unit)

    @property
    def final_sparsity(self) -> float:
        return self.sparsity

    @property
    def last_update(self) -> int:
        if not isinstance(self.at, int):
            raise RuntimeError("a schedule with fractions of the run: use .resolved() first")
        return self.at

    def sparsity_at(self, t: int) -> float:
        return self.sparsity if t >= self.last_update else 0.0

    def is_update(self, t: int) -> bool:
        return t == self.last_update


@dataclass(frozen=True)
class IterativeSchedule:
    """Piecewise constant: `steps` = [(step, sparsity), ...], one update at each step.

    Steps strictly increase and sparsities never decrease. Lists of [step, sparsity] pairs from
    YAML are accepted and stored as tuples. A step may be a fraction of the run; their order
    is checked once they are counts (`resolved`).
    """

    steps: tuple[tuple[int | float, float], ...]

    def __post_init__(self) -> None:
        raw = self.steps
        if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence) or not raw:
            raise ConfigError("schedule.steps", raw, "a non-empty list of [step, sparsity] pairs")
        pairs: list[tuple[int | float, float]] = []
        counts = all(not isinstance(pair, Sequence) or is_int(pair[0]) for pair in raw)
        for index, pair in enumerate(raw):
            if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
                raise ConfigError(f"schedule.steps[{index}]", pair, "a [step, sparsity] pair")
            step = check_point(f"schedule.steps[{index}][0]", pair[0])
            sparsity = require_fraction(
                f"schedule.steps[{index}][1]", pair[1], allowed=SPARSITY_ALLOWED
            )
            if counts and pairs and step <= pairs[-1][0]:
                raise ConfigError(
                    f"schedule.steps[{index}][0]", step, f"a step after {pairs[-1][0]} (increasing)"
                )
            if pairs and sparsity < pairs[-1][1]:
                raise ConfigError(
                    f"schedule.steps[{index}][1]",
                    sparsity,
                    f">= {pairs[-1][1]}, the sparsity before it (non-decreasing)",
                )
            pairs.append((step, sparsity))
        object.__setattr__(self, "steps", tuple(pairs))

    def resolved(self, length: int | None, length_name: str, unit: str) -> IterativeSchedule:
        last = len(self.steps) - 1
        counts = [
            (resolve_point(f"schedule.steps[{i}][0]", step, length, length_name), sparsity)
            for i, (step, sparsity) in enumerate(self.steps)
        ]
        for index in range(1, len(counts)):
            if counts[index][0] <= counts[index - 1][0]:
                raise ConfigError(
                    f"schedule.steps[{index}][0]",
                    self.steps[index][0],
                    f"a step after schedule.steps[{index - 1}][0] (both are {unit} "
                    f"{counts[index][0]} of {length_name}={length})",
                )
        schedule = IterativeSchedule(tuple(counts))
        field = f"schedule.steps[{last}][0]"
        return check_finishes(schedule, field, self.steps[last][0], length, length_name, unit)

    @property
    def final_sparsity(self) -> float:
        return self.steps[-1][1]

    @property
    def last_update(self) -> int:
        step = self.steps[-1][0]
        if not isinstance(step, int):
            raise RuntimeError("a schedule with fractions of the run: use .resolved() first")
        return step

    def sparsity_at(self, t: int) -> float:
        current = 0.0
        for step, sparsity in self.steps:
            if step > t:
                break
            current = sparsity
        return current

    def is_update(self, t: int) -> bool:
        return any(step == t for step, _ in self.steps)
