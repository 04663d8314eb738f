"""Which code a config may run: the allowlist every `_target_` is checked against before
anything is built.

A config names code: `_target_: distill.models.MLP` builds that class, and Hydra would as
readily call `torch.load` on a pickle or `os.system`. A run directory handed to
`distill-export`, or a recipe from elsewhere, is a config someone else wrote, so every node is
checked whole (nested nodes, `_args_`, lists, `_partial_` nodes) before any of it is built:

- each `_target_` is a dotted name under an allowed prefix, on a module boundary
  (`distill.modelsx` is not under `distill.models`), with no private part (`_name`); this is
  checked before anything is imported, so a refused name never runs its module's code;
- it names a class or a module-level function (not a method: `X.load_from_checkpoint` is
  refused), defined under an allowed prefix: a name that merely passes through an allowed
  module (`torch.nn.functional.torch.load`, `distill.models.mlp.torch.load`) is refused. A
  prefix that names one object exactly (`pytorch_lightning.Trainer`) allows that object,
  wherever it is defined;
- no node sets `weights_only` to anything but true, even under a prefix the user trusts: a
  file loaded with weights_only=False can run any code it holds.

Extra prefixes come from the command line only: `trusted_targets=[my_pkg.models]` for the
commands that compose conf/train.yaml, `distill-export RUN_DIR --trust-targets my_pkg.models`
for a run directory. No file extends the list for itself: after Hydra composes, nothing tells
which file a value came from, and a recipe or a run directory's config.yaml that could add its
own prefix could run anything. The project's own configs and recipes need no extra prefix
(tests/unit/test_trust.py checks every one). For the same reason the keys Hydra acts on before
any of this runs (`hydra.*`: callbacks, launcher, sweeper and logging, which Hydra builds
itself) are command-line-only too: recipes (hydra_plugins/distill_recipes), a recipe's quick
overrides and a search space may not set them.
"""

from __future__ import annotations

import contextlib
import inspect
import re
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

# What `instantiate` resolves a target with (hydra.utils.get_object logs its failures).
from hydra._internal.utils import _locate
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, ListConfig, OmegaConf

from distill.errors import ConfigError

# What the project's configs build, and no more: the whole of `distill` would let a config run
# distill.search.trials.run_trial (a subprocess), the whole of pytorch_lightning
# pytorch_lightning.cli.instantiate_class (any class a string names) or its checkpoint loaders
# (a pickle). Network loggers (W&B goes through distill.loggers) are left to the user to add.
DEFAULT_PREFIXES = (
    "distill.compression",
    "distill.data",
    "distill.loggers",
    "distill.losses",
    "distill.models",
    "torch.nn",
    "torch.optim",
    "pytorch_lightning.Trainer",
    "pytorch_lightning.callbacks",
    "pytorch_lightning.loggers.CSVLogger",
    "pytorch_lightning.loggers.TensorBoardLogger",
)
# distill-search's `search.sampler` only.
SEARCH_SAMPLERS = ("optuna.samplers",)

COMMAND_LINE = "on the command line: trusted_targets=[PREFIX]"
EXPORT_COMMAND_LINE = (
    "with distill-export RUN_DIR --trust-targets PREFIX; a run directory's own "
    "trusted_targets is not read"
)
TRUSTED_TARGETS = "trusted_targets"

_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_UNSAFE_LOAD = "true (a file loaded with weights_only=false can run any code it holds)"


@dataclass(frozen=True)
class Allowlist:
    prefixes: tuple[str, ...]
    # Where the user adds a prefix, for the refusal's message.
    how_to_extend: str = COMMAND_LINE

    def allows(self, name: str) -> bool:
        return any(name == prefix or name.startswith(f"{prefix}.") for prefix in self.prefixes)

    def refusal(self, what: str = "a class or function under an allowed prefix") -> str:
        return f"{what}: {', '.join(self.prefixes)} (add one {self.how_to_extend})"


# Set by each command for what it builds (`trusting`); anything built outside one gets the
# defaults: an entry point that forgets to set it trusts less, not more.
_DEFAULT = Allowlist(DEFAULT_PREFIXES)  # frozen: safe to share
_current: ContextVar[Allowlist] = ContextVar("distill_allowlist", default=_DEFAULT)


@contextlib.contextmanager
def trusting(extra: Sequence[str], how_to_extend: str = COMMAND_LINE) -> Iterator[None]:
    """Within the block, configs may also name targets under the `extra` prefixes."""
    token = _current.set(Allowlist((*DEFAULT_PREFIXES, *extra), how_to_extend))
    try:
        yield
    finally:
        _current.reset(token)


def check_targets(node: DictConfig, field: str, also: Sequence[str] = ()) -> None:
    """Refuse `node`, a config about to be built, when any `_target_` in it is not allowed
    (see the module's docstring). Interpolations are resolved as `instantiate` resolves them.
    `also`: prefixes allowed for this node only (a search's sampler)."""
    allowlist = _current.get()
    allowlist = Allowlist((*allowlist.prefixes, *also), allowlist.how_to_extend)
    _check(OmegaConf.to_container(node, resolve=True), field, allowlist, literal=False)


def check_config_targets(cfg: DictConfig) -> None:
    """Refuse a whole run config naming a target that is not allowed anywhere, before its
    first node is built (nodes a run builds only sometimes included). Interpolated values are
    left to `check_targets`, when the node holding them is built: resolving them here would
    need Hydra's runtime."""
    _check(OmegaConf.to_container(cfg, resolve=False), "", _current.get(), literal=True)


def _check(container: Any, field: str, allowlist: Allowlist, literal: bool) -> None:
    def left_for_later(value: Any) -> bool:
        return literal and _is_unresolved(value)

    for path, mapping in _mappings(container, field):
        if "_target_" in mapping and not left_for_later(mapping["_target_"]):
            _check_target(mapping["_target_"], _join(path, "_target_"), allowlist)
        weights_only = mapping.get("weights_only", True)
        if weights_only is not True and not left_for_later(weights_only):
            raise ConfigError(_join(path, "weights_only"), weights_only, _UNSAFE_LOAD)


def _mappings(value: Any, field: str) -> Iterator[tuple[str, dict[Any, Any]]]:
    """Every mapping in `value`, at any depth, with its config path."""
    if isinstance(value, dict):
        yield field, value
        for key, child in value.items():
            yield from _mappings(child, _join(field, str(key)))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _mappings(child, f"{field}[{index}]")


def _join(field: str, key: str) -> str:
    return f"{field}.{key}" if field else key


def _is_unresolved(value: Any) -> bool:
    """An interpolation or a missing value (`???`), in an unresolved config."""
    return isinstance(value, str) and ("${" in value or value == "???")


def _check_target(target: Any, field: str, allowlist: Allowlist) -> None:
    if not isinstance(target, str) or not _DOTTED.fullmatch(target):
        raise ConfigError(field, target, "a dotted name of a class or function: distill.models.MLP")
    if not allowlist.allows(target):
        raise ConfigError(field, target, allowlist.refusal())
    if any(part.startswith("_") for part in target.split(".")):
        raise ConfigError(
            field,
            target,
            allowlist.refusal("a public name (no part starting with _) under an allowed prefix"),
        )
    try:
        found = _locate(target)
    except Exception:
        return  # nothing there to run; building it says the target cannot be found
    module, name = getattr(found, "__module__", None), getattr(found, "__qualname__", "")
    routine = inspect.isclass(found) or inspect.isfunction(found) or inspect.isbuiltin(found)
    if not routine or not _DOTTED.fullmatch(name) or "." in name:
        kind = "a method" if "." in name else f"a {type(found).__name__}"
        what = f"a class or module-level function (this is {kind}) under an allowed prefix"
        raise ConfigError(field, target, allowlist.refusal(what))
    exact = target in allowlist.prefixes
    if not exact and not (isinstance(module, str) and allowlist.allows(module)):
        what = f"a class or function defined (this is {module}.{name}) under an allowed prefix"
        raise ConfigError(field, target, allowlist.refusal(what))


def check_prefixes(field: str, value: Any) -> tuple[str, ...]:
    """Extra prefixes as the user gave them: a list of dotted module names."""
    if isinstance(value, ListConfig):
        value = list(value)
    if not isinstance(value, list | tuple) or not all(
        isinstance(prefix, str) and _DOTTED.fullmatch(prefix) for prefix in value
    ):
        raise ConfigError(field, value, "a list of module prefixes, e.g. [my_pkg.models]")
    return tuple(value)


def trusted_targets(cfg: DictConfig, overrides: Sequence[str]) -> tuple[str, ...]:
    """The extra prefixes of a run composed from conf/train.yaml: its `trusted_targets`,
    refused when a file set it rather than the command line (`overrides`)."""
    value = cfg.get(TRUSTED_TARGETS)
    if value and not _on_command_line(TRUSTED_TARGETS, overrides):
        raise ConfigError(
            TRUSTED_TARGETS,
            OmegaConf.to_container(value) if isinstance(value, ListConfig) else value,
            "set on the command line only (trusted_targets=[PREFIX]): a recipe or config file "
            "cannot trust code for itself",
        )
    return check_prefixes(TRUSTED_TARGETS, [] if value is None else value)


def _on_command_line(key: str, overrides: Sequence[str]) -> bool:
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException:
        return False
    return any(override.key_or_group == key for override in parsed)


def is_command_line_only(key: str) -> bool:
    """A key only the command line may set: `trusted_targets`, and Hydra's own (`hydra.*`,
    `hydra/launcher`), whose callbacks, launcher, sweeper and logging Hydra builds itself."""
    key = key.strip().lstrip("+~")
    return key == TRUSTED_TARGETS or key == "hydra" or key.startswith(("hydra.", "hydra/"))
