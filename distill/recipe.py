"""Recipes: override-only config files in `recipes/` that carry the numbers they must reach.

A recipe is `recipes/NAME.yaml` (`# @package _global_`), run as `distill-train recipe=NAME`
(Hydra finds the folder through hydra_plugins/distill_recipes). Its `recipe:` node says what
a reproduction must obtain:

    recipe:
      description: MNIST-1D, ConvNet1D 64ch -> 16ch, KD
      measured_on: 2 CPU cores (Intel Xeon, AVX-512), torch 2.13.0+cpu, threads 2
      source: null                      # or the paper the expected numbers come from
      requires: null                    # or what a run needs: "a GPU; CIFAR-100 files"
      expected:                         # dotted summary.json key -> value and tolerance
        teacher.test_acc: {value: 0.9745, tolerance: 0.005}
        student.test_acc: {value: 0.9675, tolerance: 0.01}
      quick:                            # a short variant for checking an install
        overrides: [trainer.max_epochs=3]
        expected: {student.test_acc: {value: 0.80, tolerance: 0.05}}

`distill-reproduce NAME` runs it and checks every expected number (`distill.reproduce`).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from distill.errors import ConfigError
from distill.trust import is_command_line_only
from distill.validate import is_real, require_real

# The folder the Hydra plugin serves (kept in one place, there).
from hydra_plugins.distill_recipes.distill_recipes import RECIPES_DIR

RECIPE_KEYS = ("description", "measured_on", "source", "requires", "expected", "quick")
QUICK_KEYS = ("overrides", "expected")
EXPECTATION_KEYS = ("value", "tolerance")


@dataclass(frozen=True)
class Expectation:
    """A number a run must reach: |obtained - value| <= tolerance."""

    value: float
    tolerance: float

    def holds(self, obtained: float) -> bool:
        # A hair of slack for decimal values written from binary floats (0.9455 vs 0.94550002).
        return abs(obtained - self.value) <= self.tolerance + 1e-9


@dataclass(frozen=True)
class Recipe:
    """A recipe's promise, read from its `recipe:` node."""

    name: str
    description: str
    measured_on: str
    expected: dict[str, Expectation]
    source: str | None = None
    # What a run needs beyond this package (a GPU, data files), for recipes that say so.
    requires: str | None = None
    quick_overrides: tuple[str, ...] = ()
    quick_expected: dict[str, Expectation] = field(default_factory=dict)

    @property
    def has_quick(self) -> bool:
        return bool(self.quick_expected)

    def expectations(self, quick: bool) -> dict[str, Expectation]:
        return self.quick_expected if quick else self.expected


def recipe_names(directory: Path = RECIPES_DIR) -> list[str]:
    """Every recipe under `directory`, as `recipe=` takes them (sub/folder/name). Files whose
    name starts with `_` hold settings the recipes of their folder share: not recipes."""
    return sorted(
        path.relative_to(directory).with_suffix("").as_posix()
        for path in directory.rglob("*.yaml")
        if not path.name.startswith("_")
    )


def find_recipe(name_or_path: str) -> tuple[Path, str]:
    """(folder, name) of a recipe given by name (`mnist1d_kd`) or by a path to its file."""
    as_path = Path(name_or_path).expanduser()
    if as_path.suffix == ".yaml":
        if not as_path.is_file():
            raise ConfigError("recipe", name_or_path, "an existing recipe file")
        return as_path.resolve().parent, as_path.stem
    if (RECIPES_DIR / f"{name_or_path}.yaml").is_file():
        return RECIPES_DIR, name_or_path
    names = recipe_names()
    close = difflib.get_close_matches(name_or_path, names, n=5, cutoff=0.5)
    known = f"did you mean {', '.join(close)}?" if close else f"one of {', '.join(names)}"
    raise ConfigError(
        "recipe", name_or_path, f"a recipe of {RECIPES_DIR} ({known}) or a path to a .yaml file"
    )


def check_recipe_overrides(overrides: list[str]) -> None:
    """Refuse `recipe=NAME` (or a sweep `recipe=a,b`) naming no recipe of recipes/, with the
    close names, before Hydra composes anything. Own folders (`hydra.searchpath=...`) are
    Hydra's to check."""
    if any(override.startswith("hydra.searchpath") for override in overrides):
        return
    for override in overrides:
        if override.startswith("recipe="):
            for name in override.removeprefix("recipe=").split(","):
                if name.strip() not in ("", "null"):
                    find_recipe(name.strip())


def read_recipe(cfg: DictConfig, name: str) -> Recipe:
    """The `recipe:` node of a composed config, checked: a recipe to reproduce must say what
    to expect."""
    node = cfg.get("recipe")
    if node is None:
        raise ConfigError(
            "recipe", name, "a recipe with a `recipe:` node holding its `expected:` numbers"
        )
    container = OmegaConf.to_container(node, resolve=True)
    if not isinstance(container, dict):
        raise ConfigError("recipe", container, "a mapping with description, expected, ...")
    settings = {str(key): value for key, value in container.items()}
    _check_keys("recipe", settings, RECIPE_KEYS)
    expected = _expectations("recipe.expected", settings.get("expected"))
    quick = settings.get("quick") or {}
    if not isinstance(quick, dict):
        raise ConfigError("recipe.quick", quick, "a mapping with overrides and expected")
    _check_keys("recipe.quick", quick, QUICK_KEYS)
    overrides = quick.get("overrides") or []
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise ConfigError("recipe.quick.overrides", overrides, "a list of override strings")
    for override in overrides:
        # They go on distill-train's command line, whose trusted_targets and hydra.* the run
        # trusts as the user's own: a recipe could trust code for itself (distill.trust).
        if is_command_line_only(override.split("=", 1)[0]):
            raise ConfigError(
                "recipe.quick.overrides",
                override,
                "overrides of run settings other than trusted_targets or hydra.*",
            )
    return Recipe(
        name=name,
        description=str(settings.get("description") or ""),
        measured_on=str(settings.get("measured_on") or "not recorded"),
        expected=expected,
        source=settings.get("source"),
        requires=settings.get("requires"),
        quick_overrides=tuple(overrides),
        quick_expected=_expectations("recipe.quick.expected", quick["expected"])
        if "expected" in quick
        else {},
    )


def _expectations(field_name: str, node: Any) -> dict[str, Expectation]:
    if not isinstance(node, Mapping) or not node:
        raise ConfigError(
            field_name,
            node,
            "a non-empty mapping of summary.json key -> {value: V, tolerance: T}",
        )
    expectations = {}
    for key, spec in node.items():
        where = f"{field_name}.{key}"
        if not isinstance(spec, Mapping):
            raise ConfigError(where, spec, "{value: V, tolerance: T}")
        _check_keys(where, spec, EXPECTATION_KEYS)
        if not is_real(spec.get("value")):
            raise ConfigError(f"{where}.value", spec.get("value"), "a number")
        tolerance = require_real(f"{where}.tolerance", spec.get("tolerance"), minimum=0.0)
        expectations[str(key)] = Expectation(float(spec["value"]), float(tolerance))
    return expectations


def _check_keys(field_name: str, node: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(node) - set(allowed))
    if unknown:
        raise ConfigError(f"{field_name}.{unknown[0]}", node[unknown[0]], f"one of {allowed}")
