"""Everything a search needs, checked before its first trial: the settings, the space, the
fixed overrides every trial shares, and proof that the objective and the budget are numbers
every trial's summary.json will hold and that the run accepts each edge of the space.

The command line mixes three kinds of override, told apart here:
    search=NAME / search.n_trials=30           the search's own settings (conf/search/)
    loss.kd.temperature='interval(1,4)'        a sweep: adds or replaces a dimension
    data=digits, loss.kd.temperature=2         a plain value: fixed in every trial (a key of
                                               the space given a plain value leaves the space)
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from distill.assembly import assemble, check_run_settings
from distill.checks import torch_threads
from distill.config import compose_train
from distill.errors import ConfigError
from distill.reproduce import missing_metric_hint, summary_metric_keys
from distill.search.settings import SearchSettings
from distill.search.space import Dimension, dimension_of, parse_override, parse_space
from distill.trust import trusted_targets, trusting

DEFAULT_SEARCH = "compress_under_budget"


@dataclass(frozen=True)
class SearchPlan:
    settings: SearchSettings
    dimensions: list[Dimension]
    # The distill-train overrides every trial starts from (recipe, data, fixed values).
    fixed: list[str]
    # Each dimension's value in the config the fixed overrides compose (None where that
    # value is not a point of the space): the first trial when search.start_from_base.
    base_point: dict[str, Any]
    # Extra `_target_` prefixes the command line trusts (`trusted_targets=[...]`).
    trusted: tuple[str, ...] = ()


def plan_search(overrides: Sequence[str]) -> SearchPlan:
    """Read the command line, compose, and check everything; trains nothing."""
    search_overrides, sweeps, fixed = split_overrides(overrides)
    cfg = compose_run([*fixed, *search_overrides], return_hydra_config=True)
    # Which option of each config group the fixed overrides chose: only Hydra's node says.
    choices = dict(cfg.hydra.runtime.choices)
    settings = SearchSettings.from_config(cfg.get("search"))
    dimensions = {dimension.key: dimension for dimension in parse_space(settings.space)}
    fixed_keys = {_key(text) for text in fixed}
    for key in fixed_keys & set(dimensions):
        del dimensions[key]  # given one value on the command line: fixed, not searched
    for text in sweeps:
        dimension = dimension_of(parse_override(text), field="search.space")
        dimensions[dimension.key] = dimension
    if not dimensions:
        raise ConfigError("search.space", {}, "at least one dimension to search")
    if settings.seeds and ("seed" in fixed_keys or "seed" in dimensions):
        raise ConfigError(
            "seed",
            [t for t in [*fixed, *sweeps] if _key(t) == "seed"],
            "no seed override when search.seeds is set (each trial runs every seed of it)",
        )
    searched_seeds = set(settings.seeds or [cfg.get("seed")])
    if settings.confirm_seeds and searched_seeds & set(settings.confirm_seeds):
        raise ConfigError(
            "search.confirm_seeds",
            list(settings.confirm_seeds),
            f"seeds no trial uses (the trials run with {sorted(searched_seeds)})",
        )
    plan = SearchPlan(
        settings=settings,
        dimensions=list(dimensions.values()),
        fixed=fixed,
        base_point=_base_point(cfg, choices, list(dimensions.values())),
        trusted=trusted_targets(cfg, fixed),
    )
    check_plan(plan)
    return plan


def split_overrides(overrides: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    """(the search group's overrides, sweeps, fixed distill-train overrides)."""
    search, sweeps, fixed = [], [], []
    for text in overrides:
        key = _key(text)
        if key == "search" or key.startswith("search."):
            # The group is not in conf/train.yaml's defaults: distill-train never sees it.
            search.append(f"+{text.lstrip('+')}" if key == "search" else text)
        elif parse_override(text, field=key).is_sweep_override():
            sweeps.append(text)
        else:
            fixed.append(text)
    if not any(_key(text) == "search" for text in search):
        search.insert(0, f"+search={DEFAULT_SEARCH}")
    return search, sweeps, fixed


def compose_run(overrides: Sequence[str], return_hydra_config: bool = False) -> DictConfig:
    """conf/train.yaml with `overrides`, as distill-train would compose it (output dir unset)."""
    try:
        return compose_train(overrides, return_hydra_config)
    except HydraException as error:
        raise ConfigError(
            "overrides", list(overrides), f"overrides Hydra accepts ({error})"
        ) from None


def check_plan(plan: SearchPlan) -> None:
    """Refuse, before any trial: an objective or budget no summary holds, and a space edge the
    run itself refuses (a sparsity of 1, a temperature of 0)."""
    with quiet_lightning():
        base = _assemble(plan.fixed)
        known = summary_metric_keys(base)
        settings = plan.settings
        _check_known("search.objective", settings.objective, known, base.exports)
        if settings.budget is not None:
            _check_known("search.budget.metric", settings.budget.metric, known, base.exports)
        for corner in _corners(plan.dimensions):
            try:
                _assemble([*plan.fixed, *corner.values()])
            except ConfigError as error:
                raise _blame(plan, corner, error) from None


def _corners(dimensions: list[Dimension]) -> list[dict[str, str]]:
    """A few configs that hold every dimension's every edge (each choice, each bound): the k-th
    takes each dimension's k-th edge, cycling. Assembling each is a few seconds, not one per
    edge."""
    edges = {dimension.key: dimension.extremes() for dimension in dimensions}
    count = max(len(values) for values in edges.values())
    by_key = {dimension.key: dimension for dimension in dimensions}
    return [
        {key: by_key[key].override(values[k % len(values)]) for key, values in edges.items()}
        for k in range(count)
    ]


def _blame(plan: SearchPlan, corner: dict[str, str], error: ConfigError) -> ConfigError:
    """The dimension whose edge alone the run refuses; else the combination."""
    for key, override in corner.items():
        try:
            _assemble([*plan.fixed, override])
        except ConfigError as alone:
            return ConfigError(
                f"search.space.{key}", override, f"values every run accepts ({alone})"
            )
    return ConfigError(
        "search.space", list(corner.values()), f"combinations every run accepts ({error})"
    )


def _assemble(overrides: list[str]) -> Any:
    cfg = compose_run(overrides)
    check_run_settings(cfg, overrides)  # what distill-train refuses first, the trials would too
    with trusting(trusted_targets(cfg, overrides)), torch_threads(cfg.get("threads")):
        return assemble(cfg)


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Assembling builds Trainers, each of which logs its devices; a plan builds several."""
    loggers = [logging.getLogger(name) for name in ("pytorch_lightning", "lightning.pytorch")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _check_known(field: str, key: str, known: set[str], exports: bool) -> None:
    if key in known:
        return
    hint = missing_metric_hint(key, known, exports)
    hint = f"; {hint}" if hint else ""
    raise ConfigError(field, key, f"a number every trial's summary.json holds{hint}")


def _base_point(
    cfg: DictConfig, choices: dict[str, Any], dimensions: list[Dimension]
) -> dict[str, Any]:
    point: dict[str, Any] = {}
    for dimension in dimensions:
        if dimension.is_group:
            value = choices.get(dimension.key)
        else:
            value = OmegaConf.select(cfg, dimension.key, default=None)
        point[dimension.key] = value if dimension.contains(value) else None
    return point


def _key(text: str) -> str:
    return text.split("=", 1)[0].lstrip("+~")
