"""Command-line overrides Hydra cannot compose, refused as our own configuration errors.

Hydra reports an unknown group option (`loss=[ce,foo]`) or an unknown key
(`trainer.max_epoch=3`) with its own text and exit status 1, the status of a crash. Composing
once before Hydra's app starts turns them into a ConfigError (exit 2) that names the field,
the value and what is allowed: the group's options, or the keys close to the misspelled one.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig

from distill.config import CONF_DIR, compose_train
from distill.errors import ConfigError

_NOT_IN_STRUCT = re.compile(r"Could not override '([^']+)'")
_MISSING_OPTION = re.compile(r"Could not (?:find|load) '([^'/]+)/([^']+)'")


def check_overrides_compose(arguments: Sequence[str]) -> None:
    """Compose conf/train.yaml with `arguments` as distill-train would; refuse what Hydra
    cannot compose. A multirun (flags such as -m, sweeps) is left to Hydra."""
    if any(argument.startswith("-") for argument in arguments):
        return
    try:
        overrides = OverridesParser.create().parse_overrides(list(arguments))
    except HydraException:
        return  # Hydra's own parse error says where the grammar broke
    if any(override.is_sweep_override() for override in overrides):
        return
    try:
        compose_train(arguments)
    except HydraException as error:
        message = str(error)
        if _MISSING_OPTION.search(message):
            raise _missing_option(message, list(arguments)) from None
        raise _unknown_key(message, list(arguments)) from None


def _missing_option(message: str, arguments: list[str]) -> ConfigError:
    match = _MISSING_OPTION.search(message)
    if match is None:
        return ConfigError("overrides", arguments, f"overrides Hydra composes ({message})")
    group, option = match.groups()
    options = sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))
    return ConfigError(group, option, f"an option of {group}: {', '.join(options)}")


def _unknown_key(message: str, arguments: list[str]) -> ConfigError:
    match = _NOT_IN_STRUCT.search(message)
    if match is None:
        return ConfigError("overrides", arguments, f"overrides Hydra composes ({message})")
    key = match.group(1)
    value = next((a.split("=", 1)[1] for a in arguments if a.split("=", 1)[0] == key), None)
    known = _known_keys()
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.75)
    hint = f"did you mean {', '.join(close)}?" if close else "there is no key of that name."
    return ConfigError(
        key, value, f"a key of the config ({hint} A new key needs a leading +: +{key}=...)"
    )


def _known_keys() -> list[str]:
    return sorted(_flatten(compose_train([])))


def _flatten(node: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for key in node:
        path = f"{prefix}{key!s}"
        keys.append(path)
        child = node._get_node(str(key))  # unresolved: interpolations need no Hydra runtime
        if isinstance(child, DictConfig):
            keys += _flatten(child, f"{path}.")
    return keys
