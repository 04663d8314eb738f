"""Sparsity schedules: frozen, validated dataclasses that say how sparse to be at step t.

Every schedule answers `sparsity_at(t)`, the target of the last update at or before t (0.0
before the first update, since nothing is pruned yet), and `is_update(t)`, whether masks are
recomputed at t. `final_sparsity` is the sparsity from `last_update` on. Whether t counts steps
or epochs is the caller's choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar, runtime_checkable

from distill.compression.selection import SPARSITY_ALLOWED
from distill.errors import ConfigError
from distill.validate import require_fraction, require_int


@runtime_checkable
class SparsitySchedule(Protocol):
    """What a pruning callback needs from a schedule."""

    @property
    def final_sparsity(self) -> float: ...

    @property
    def last_update(self) -> int: ...

    def sparsity_at(self, t: int) -> float: ...

    def is_update(self, t: int) -> bool: ...


_Ramp = TypeVar("_Ramp", bound="_RampSchedule")


@dataclass(frozen=True, kw_only=True)
class _RampSchedule:
    """Updates at `start + k * frequency` for k = 0..num_updates, from initial to final."""

    final_sparsity: float
    start: int
    frequency: int
    num_updates: int
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
        require_int("schedule.start", self.start, minimum=0)
        require_int("schedule.frequency", self.frequency, minimum=1)
        require_int("schedule.num_updates", self.num_updates, minimum=1)

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

    @property
    def last_update(self) -> int:
        return self.start + self.num_updates * self.frequency

    def sparsity_at(self, t: int) -> float:
        if t < self.start:
            return 0.0
        updates_done = min((t - self.start) // self.frequency, self.num_updates)
        # Exact endpoints, whatever the float rounding of the ramp in between.
        if updates_done == 0:
            return self.initial_sparsity
        if updates_done == self.num_updates:
            return self.final_sparsity
        return self._ramp(updates_done / self.num_updates)

    def is_update(self, t: int) -> bool:
        return self.start <= t <= self.last_update and (t - self.start) % self.frequency == 0

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
    at: int

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "sparsity",
            require_fraction("schedule.sparsity", self.sparsity, allowed=SPARSITY_ALLOWED),
        )
        require_int("schedule.at", self.at, minimum=0)

    @property
    def final_sparsity(self) -> float:
        return self.sparsity

    @property
    def last_update(self) -> int:
        return self.at

    def sparsity_at(self, t: int) -> float:
        return self.sparsity if t >= self.at else 0.0

    def is_update(self, t: int) -> bool:
        return t == self.at


@dataclass(frozen=True)
class IterativeSchedule:
    """Piecewise constant: `steps` = [(step, sparsity), ...], one update at each step.

    Steps strictly increase and sparsities never decrease. Lists of [step, sparsity] pairs from
    YAML are accepted and stored as tuples.
    """

    steps: tuple[tuple[int, float], ...]

    def __post_init__(self) -> None:
        raw = self.steps
        if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence) or not raw:
            raise ConfigError("schedule.steps", raw, "a non-empty list of [step, sparsity] pairs")
        pairs: list[tuple[int, float]] = []
        for index, pair in enumerate(raw):
            if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
                raise ConfigError(f"schedule.steps[{index}]", pair, "a [step, sparsity] pair")
            step = require_int(f"schedule.steps[{index}][0]", pair[0], minimum=0)
            sparsity = require_fraction(
                f"schedule.steps[{index}][1]", pair[1], allowed=SPARSITY_ALLOWED
            )
            if pairs and step <= pairs[-1][0]:
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

    @property
    def final_sparsity(self) -> float:
        return self.steps[-1][1]

    @property
    def last_update(self) -> int:
        return self.steps[-1][0]

    def sparsity_at(self, t: int) -> float:
        current = 0.0
        for step, sparsity in self.steps:
            if step > t:
                break
            current = sparsity
        return current

    def is_update(self, t: int) -> bool:
        return any(step == t for step, _ in self.steps)
