"""Turning composed Hydra config nodes into objects, with errors that name the config field."""

from __future__ import annotations

import difflib
import inspect
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import InstantiationException
from omegaconf import DictConfig

from distill.errors import ConfigError
from distill.trust import check_targets

# Configs live at the repository's top level (conf/), next to the package of an editable install.
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose_train(
    overrides: Sequence[str], return_hydra_config: bool = False, placeholder: bool = True
) -> DictConfig:
    """conf/train.yaml with `overrides`, composed as distill-train would, outside its Hydra app.

    The run directory (`${hydra:runtime.output_dir}`) exists only inside the app, so
    `paths.output_dir` gets a placeholder, unless `placeholder=False` keeps the interpolation
    (to compare with a config a run saved, which holds it unresolved).
    """
    unset = ["paths.output_dir=unset"] if placeholder else []
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(
            "train", overrides=[*overrides, *unset], return_hydra_config=return_hydra_config
        )


def build(node: Any, field: str, expected: type | None = None, **kwargs: Any) -> Any:
    """`hydra.utils.instantiate(node)`, with a failure reported against `field`.

    A ConfigError raised by a constructor names its argument only (`temperature`); here it is
    re-raised with the full config path (`loss.kd.temperature`) so the user knows what to fix.
    With `expected`, a target that builds anything else (`data._target_=distill.models.MLP`
    builds happily) is refused here, not by the first attribute the run reads. Every
    `_target_` in the node, nested ones included, must pass the allowlist (distill.trust)
    before anything in it is built.
    """
    if not isinstance(node, DictConfig) or "_target_" not in node:
        raise ConfigError(field, node, "a config node with a _target_ naming a class or function")
    check_targets(node, field)
    try:
        built = hydra.utils.instantiate(node, **kwargs)
    except InstantiationException as error:
        cause = error.__cause__
        if isinstance(cause, ConfigError):
            # Constructors that know their config path already say it (data.num_classes,
            # pruning.include); the others name their own argument, placed under `field`.
            group = field.split(".")[0]
            known = cause.field == group or cause.field.startswith(f"{group}.")
            full = cause.field if known else f"{field}.{cause.field}"
            raise ConfigError(full, cause.value, cause.allowed) from cause
        raise refused_settings(node, field, cause or error) from error
    if expected is not None and not isinstance(built, expected):
        raise ConfigError(
            f"{field}._target_",
            node.get("_target_"),
            f"a target that builds a {public_name(expected)} "
            f"(this one builds a {public_name(type(built))})",
        )
    return built


def refused_settings(node: DictConfig, field: str, error: BaseException) -> ConfigError:
    """The error for a target that refused its settings (`error`, raised by the constructor),
    naming the setting it blames where it can tell: an unknown keyword (a typo such as
    `+loss.kd.temprature=4`) gets the arguments the target takes and the closest one; else the
    settings whose values the error message quotes (`trainer.precision=13`), else all of them."""
    target = str(node.get("_target_"))
    settings = {str(k): v for k, v in node.items() if not str(k).startswith("_")}
    text = str(error)
    unknown = re.search(r"unexpected keyword argument '(\w+)'", text)
    if isinstance(error, TypeError) and unknown:
        name = unknown.group(1)
        accepted = _arguments_of(target)
        close = difflib.get_close_matches(name, accepted, n=1)
        hint = f" (did you mean {field}.{close[0]}?)" if close else ""
        return ConfigError(
            f"{field}.{name}",
            settings.get(name),
            f"an argument of {target}: {', '.join(accepted) or 'none'}{hint}",
        )
    quoted = {
        key: value
        for key, value in settings.items()
        if isinstance(value, (int, float, str))
        and not isinstance(value, bool)
        and re.search(rf"(?<![\w.-]){re.escape(str(value))}(?![\w.-])", text)
    }
    reason = " ".join(text.split())[:300]
    return ConfigError(
        field, quoted or settings, f"settings {target} accepts ({type(error).__name__}: {reason})"
    )


def _arguments_of(target: str) -> list[str]:
    """The keyword arguments `target` (a class or function) takes, as its signature says."""
    try:
        signature = inspect.signature(hydra.utils.get_object(target))
    except (ValueError, TypeError, ImportError, AttributeError):
        return []
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [name for name, p in signature.parameters.items() if p.kind in kinds]


def public_name(cls: type) -> str:
    """`cls`'s dotted name from the shortest package that exports it (`torch.nn.Module`, not
    `torch.nn.modules.module.Module`)."""
    parts = cls.__module__.split(".")
    for end in range(1, len(parts) + 1):
        package = sys.modules.get(".".join(parts[:end]))
        if getattr(package, cls.__qualname__, None) is cls:
            return f"{'.'.join(parts[:end])}.{cls.__qualname__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def build_named(node: DictConfig | None, field: str) -> dict[str, Any]:
    """Build every entry of a name -> config mapping (loss terms, callbacks, loggers)."""
    if node is None:
        return {}
    built: dict[str, Any] = {}
    for name, child in node.items():
        key = str(name)  # a name: nn.ModuleDict and the loggers need strings
        built[key] = build(child, f"{field}.{key}")
    return built


def check_group_overrides(overrides: Sequence[str]) -> None:
    """Refuse a config group given as a list (`loss=[ce,kd]`) that names no option or one
    option twice. Hydra composes `loss=[ce,kd,kd]` as `[ce,kd]` and `loss=[]` as no `loss` at
    all, so only the overrides still say what was asked for."""
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        group, value = override.key_or_group, override.value()
        if not isinstance(value, list) or not (CONF_DIR / group).is_dir():
            continue
        names = [str(name) for name in value]
        options = ", ".join(sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml")))
        repeated = sorted({name for name in names if names.count(name) > 1})
        if not names:
            raise ConfigError(group, names, f"a list of one or more of {options}")
        if repeated:
            raise ConfigError(
                group,
                names,
                f"a list naming each option once ({', '.join(repeated)} twice: Hydra would "
                f"keep one); options: {options}",
            )
