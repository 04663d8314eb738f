"""The `search:` config node (conf/search/*.yaml), checked once: what to optimize, under which
budget, over how many trials, and where the study lives."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from distill.errors import ConfigError
from distill.validate import is_int, require_bool, require_choice, require_int, require_real

DIRECTIONS = ("maximize", "minimize")
_KEYS = (
    "n_trials",
    "objective",
    "direction",
    "budget",
    "space",
    "sampler",
    "dir",
    "start_from_base",
    "seeds",
    "confirm_seeds",
)


@dataclass(frozen=True)
class Budget:
    """A run is within budget when its summary's `metric` is at most `max`."""

    metric: str
    max: float

    def excess(self, value: float) -> float:
        """How far `value` is over the budget (<= 0: within it); the sampler's constraint."""
        return value - self.max


@dataclass(frozen=True)
class SearchSettings:
    n_trials: int
    objective: str
    direction: str
    budget: Budget | None
    space: dict[str, str]
    sampler: DictConfig
    dir: Path
    start_from_base: bool
    # Each trial runs once per seed and is scored by the mean: on small, noisy data one seed's
    # luck would otherwise pick the winner. None: one run, with the config's `seed`.
    seeds: tuple[int, ...] | None = None
    # After the last trial the best one (or the closest to the budget) runs again on these
    # seeds, which no trial used: a winner picked among many noisy trials looks better than it
    # is, and this is its number without the luck of the pick.
    confirm_seeds: tuple[int, ...] | None = None

    @classmethod
    def from_config(cls, node: Any) -> SearchSettings:
        if not isinstance(node, DictConfig):
            raise ConfigError("search", node, "a search config: search=compress_under_budget")
        unknown = sorted(set(node) - set(_KEYS))
        if unknown:
            raise ConfigError(f"search.{unknown[0]}", node[unknown[0]], f"one of {_KEYS}")
        # `~search.space` on the command line: only the command line's sweeps are searched.
        space = node.get("space") or OmegaConf.create({})
        if not isinstance(space, DictConfig):
            raise ConfigError("search.space", space, "a mapping of override key -> sweep")
        sampler = node.get("sampler")
        if not isinstance(sampler, DictConfig) or "_target_" not in sampler:
            raise ConfigError(
                "search.sampler", sampler, "a node with a _target_, e.g. optuna.samplers.TPESampler"
            )
        return cls(
            n_trials=require_int("search.n_trials", node.get("n_trials"), minimum=1),
            objective=_metric_key("search.objective", node.get("objective")),
            direction=require_choice("search.direction", node.get("direction"), DIRECTIONS),
            budget=_budget(node.get("budget")),
            space={str(key): str(value) for key, value in space.items()},
            sampler=sampler,
            dir=Path(str(node.get("dir"))),
            start_from_base=require_bool("search.start_from_base", node.get("start_from_base")),
            seeds=_seeds("search.seeds", node.get("seeds")),
            confirm_seeds=_seeds("search.confirm_seeds", node.get("confirm_seeds")),
        )

    def definition(self) -> dict[str, Any]:
        """What a resumed search must share with the one it continues."""
        return {
            "objective": self.objective,
            "direction": self.direction,
            "budget": None if self.budget is None else vars(self.budget),
            "sampler": OmegaConf.to_container(self.sampler),
            "seeds": None if self.seeds is None else list(self.seeds),
        }


def _metric_key(field: str, value: Any) -> str:
    if not isinstance(value, str) or "." not in value:
        raise ConfigError(
            field, value, "a dotted key of summary.json, e.g. artifacts.onnx_int8.test_acc"
        )
    return value


def _seeds(field: str, node: Any) -> tuple[int, ...] | None:
    if node is None:
        return None
    seeds = list(node) if isinstance(node, ListConfig | list | tuple) else None
    if not seeds or not all(is_int(seed) for seed in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError(field, node, "null, or a list of distinct integer seeds")
    return tuple(int(seed) for seed in seeds)


def _budget(node: Any) -> Budget | None:
    if node is None:
        return None
    if not isinstance(node, DictConfig) or set(node) != {"metric", "max"}:
        raise ConfigError(
            "search.budget", node, "null or {metric: <summary.json key>, max: <number>}"
        )
    limit = require_real("search.budget.max", node.max, allowed="a finite number")
    if not math.isfinite(limit):
        raise ConfigError("search.budget.max", node.max, "a finite number")
    return Budget(metric=_metric_key("search.budget.metric", node.metric), max=limit)
