"""Forward hooks that capture intermediate features by module name.

A tap key is a name from `named_modules()` (the module's output) or that name with an `:in`
suffix (its first input). Loss terms declare the keys they read; the DistillationModule installs
one set of hooks per model at fit start, clears the captured tensors every step, and removes the
hooks at fit end: whoever registers a hook owns its handle.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from distill.errors import ConfigError

INPUT_SUFFIX = ":in"


def split_tap(key: str) -> tuple[str, bool]:
    """(module name, whether the module's input rather than its output is tapped)."""
    if key.endswith(INPUT_SUFFIX):
        return key[: -len(INPUT_SUFFIX)], True
    return key, False


class FeatureTaps:
    """Captures the features named by `keys` from `model`; `features[key]` after a forward."""

    def __init__(
        self,
        model: nn.Module,
        keys: Iterable[str],
        field: str,
        prefixes: Mapping[str, str] | None = None,
    ) -> None:
        """`prefixes` route `<member>/<module>` keys into a container of models (a teacher
        ensemble): member name -> module-name prefix, with "" for keys without a member."""
        self.model = model
        self.keys = list(dict.fromkeys(keys))  # unique, in order
        self.prefixes = dict(prefixes or {"": ""})
        names = [name for name, _ in model.named_modules() if name]
        for key in self.keys:
            name, _ = self.resolve(key)
            if name not in names:
                closest = difflib.get_close_matches(name, names, n=5, cutoff=0.4) or names[:10]
                raise ConfigError(
                    field,
                    key,
                    f"the name of a module of {type(model).__name__} (optionally with "
                    f"'{INPUT_SUFFIX}'); closest: {', '.join(closest)}",
                )
        self.features: dict[str, Tensor] = {}
        self._handles: list[RemovableHandle] = []

    def resolve(self, key: str) -> tuple[str, bool]:
        """The full module name a key taps, and whether it taps the module's input."""
        name, tap_input = split_tap(key)
        member, _, rest = name.partition("/")
        if rest and member in self.prefixes:
            return self.prefixes[member] + rest, tap_input
        return self.prefixes.get("", "") + name, tap_input

    @property
    def installed(self) -> bool:
        return bool(self._handles)

    def install(self) -> None:
        if self.installed or not self.keys:
            return
        for key in self.keys:
            name, tap_input = self.resolve(key)
            module = self.model.get_submodule(name)
            self._handles.append(module.register_forward_hook(self._capture(key, tap_input)))

    def _capture(self, key: str, tap_input: bool):
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            self.features[key] = inputs[0] if tap_input else output

        return hook

    def clear(self) -> None:
        self.features = {}

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.clear()

    def __enter__(self) -> FeatureTaps:
        self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
