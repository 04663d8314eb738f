"""Errors raised for bad user input, before any work starts."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A setting is wrong. The message names the field, the bad value and what is allowed."""

    def __init__(self, field: str, value: Any, allowed: str) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"{field}={value!r} is not allowed: {allowed}")
