"""Turning composed Hydra config nodes into objects, with errors that name the config field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig

from distill.errors import ConfigError

# Configs live at the repository's top level (conf/), next to the package of an editable install.
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def build(node: Any, field: str, **kwargs: Any) -> Any:
    """`hydra.utils.instantiate(node)`, with a failure reported against `field`.

    A ConfigError raised by a constructor names its argument only (`temperature`); here it is
    re-raised with the full config path (`loss.kd.temperature`) so the user knows what to fix.
    """
    if not isinstance(node, DictConfig) or "_target_" not in node:
        raise ConfigError(field, node, "a config node with a _target_ naming a class or function")
    try:
        return hydra.utils.instantiate(node, **kwargs)
    except InstantiationException as error:
        cause = error.__cause__
        if isinstance(cause, ConfigError):
            # Constructors that know their config path already say it (data.num_classes,
            # pruning.include); the others name their own argument, placed under `field`.
            group = field.split(".")[0]
            known = cause.field == group or cause.field.startswith(f"{group}.")
            full = cause.field if known else f"{field}.{cause.field}"
            raise ConfigError(full, cause.value, cause.allowed) from cause
        raise ConfigError(
            f"{field}._target_", node.get("_target_"), f"a target that can be built ({error})"
        ) from error


def build_named(node: DictConfig | None, field: str) -> dict[str, Any]:
    """Build every entry of a name -> config mapping (loss terms, callbacks, loggers)."""
    if node is None:
        return {}
    built: dict[str, Any] = {}
    for name, child in node.items():
        key = str(name)  # a name: nn.ModuleDict and the loggers need strings
        built[key] = build(child, f"{field}.{key}")
    return built
