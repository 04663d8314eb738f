"""Hydra finds distill's recipes (the top-level `recipes/` folder) as the config group `recipe`.

Two plugins, discovered by Hydra in the `hydra_plugins` namespace package:

- `RecipesSearchPath` appends `distill-recipes://<repository>/recipes` to every app's config
  search path, so `distill-train recipe=mnist1d_kd` composes `recipes/mnist1d_kd.yaml`.
- `RecipesConfigSource` serves that scheme: a folder of recipe files seen as the group
  `recipe` (a plain `file://` source would need the files under `recipes/recipe/`). The same
  scheme points at any folder of one's own recipes:
  `distill-train hydra.searchpath=[distill-recipes:///my/recipes] recipe=mine`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.object_type import ObjectType
from hydra.plugins.config_source import ConfigLoadError, ConfigResult, ConfigSource
from hydra.plugins.search_path_plugin import SearchPathPlugin
from omegaconf import DictConfig, OmegaConf

GROUP = "recipe"
SCHEME = "distill-recipes"
# An editable install from a clone: this file is <repository>/hydra_plugins/distill_recipes/.
RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"


def sets_hydra(config: Any, header: Mapping[str, str | None]) -> bool:
    """Whether a recipe file would change Hydra's own config: a `hydra` key, a package under
    `hydra` (its header, or a defaults entry's `@package`), or a defaults entry of a `hydra/`
    group (`override /hydra/launcher: slurm`)."""
    packages = [header.get("package") or ""]
    groups = []
    defaults = config.get("defaults") if isinstance(config, DictConfig) else None
    for entry in defaults or []:
        for name in entry if isinstance(entry, DictConfig) else [entry]:
            words = str(name).split()  # "override /hydra/launcher@pkg": the last word
            group, _, package = words[-1].partition("@") if words else ("", "", "")
            groups.append(group)
            packages.append(package)
    return (
        (isinstance(config, DictConfig) and "hydra" in config)
        or any(group.strip("/").split("/")[0] == "hydra" for group in groups)
        or any(
            package.removeprefix("_global_").strip(".").split(".")[0] == "hydra"
            for package in packages
        )
    )


class RecipesSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append(provider="distill-recipes", path=f"{SCHEME}://{RECIPES_DIR}")


class RecipesConfigSource(ConfigSource):
    """A folder of recipe files (`NAME.yaml`, sub-folders allowed), as the group `recipe`."""

    @staticmethod
    def scheme() -> str:
        return SCHEME

    def _folder_path(self, config_path: str) -> Path | None:
        """Where a path under the group lives in the folder; None for any other path."""
        parts = Path(config_path.strip("/")).parts
        if not parts or parts[0] != GROUP:
            return None
        return Path(self.path).joinpath(*parts[1:])

    def load_config(self, config_path: str) -> ConfigResult:
        path = self._folder_path(self._normalize_file_name(config_path))
        if path is None or not path.is_file():
            raise ConfigLoadError(f"Config not found : {config_path}")
        text = path.read_text(encoding="utf-8")
        config = OmegaConf.create(text) if text.strip() else OmegaConf.create()
        header = ConfigSource._get_header_dict(text[:512])
        if sets_hydra(config, header):
            raise ConfigLoadError(
                f"{path}: a recipe may not set hydra.* (Hydra builds its callbacks, launcher, "
                "sweeper and logging itself, before distill checks any _target_, and a recipe "
                "may come from anyone): give Hydra settings on the command line"
            )
        return ConfigResult(
            config=config,
            path=f"{self.scheme()}://{self.path}",
            provider=self.provider,
            header=header,
        )

    def available(self) -> bool:
        return os.path.isdir(self.path)

    def is_group(self, config_path: str) -> bool:
        if config_path.strip("/") == "":
            return True
        path = self._folder_path(config_path)
        return path is not None and path.is_dir()

    def is_config(self, config_path: str) -> bool:
        path = self._folder_path(self._normalize_file_name(config_path))
        return path is not None and path.is_file()

    def list(self, config_path: str, results_filter: ObjectType | None) -> list[str]:
        groups = results_filter in (None, ObjectType.GROUP)
        configs = results_filter in (None, ObjectType.CONFIG)
        if config_path.strip("/") == "":
            return [GROUP] if groups else []
        folder = self._folder_path(config_path)
        if folder is None or not folder.is_dir():
            return []
        names = set()
        for entry in folder.iterdir():
            if entry.is_dir() and groups and entry.name != "__pycache__":
                names.add(entry.name)
            if entry.is_file() and entry.suffix == ".yaml" and configs:
                names.add(entry.stem)
        return sorted(names)
