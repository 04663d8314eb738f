"""Loading a teacher's weights from a checkpoint file, with errors that say what does not fit."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from distill.checkpoint_io import describe_load_failure, state_mismatch
from distill.errors import ConfigError


def load_state_dict_file(path: str | Path, field: str) -> dict[str, Tensor]:
    """Read a checkpoint safely (`weights_only=True`) and return the model's state_dict.

    Accepts a plain state_dict, a dict with a "state_dict" entry (distill's teacher cache),
    or a Lightning checkpoint of a distill run, whose student becomes the teacher.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(field, str(path), "the path of an existing checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a corrupt file can fail in any layer of the unpickler
        raise ConfigError(
            field, str(path), f"a torch checkpoint ({describe_load_failure(path, error)})"
        ) from error
    if isinstance(payload, Mapping) and "state_dict" in payload:
        payload = payload["state_dict"]
    if not isinstance(payload, Mapping) or not all(
        isinstance(value, Tensor) for value in payload.values()
    ):
        raise ConfigError(field, str(path), "a checkpoint holding a state_dict of tensors")
    state = dict(payload)
    if state and all(key.startswith("student.") for key in state if not key.startswith("teacher.")):
        state = {
            k.removeprefix("student."): v for k, v in state.items() if k.startswith("student.")
        }
    return state


def load_weights(model: nn.Module, path: str | Path, field: str) -> nn.Module:
    """Load the checkpoint at `path` into `model`, or explain why it does not fit."""
    state = load_state_dict_file(path, field)
    problems = state_mismatch(model.state_dict(), state)
    if problems:
        raise ConfigError(
            field,
            str(path),
            f"a checkpoint of {type(model).__name__} as configured; this one has {problems}",
        )
    model.load_state_dict(state)
    return model
