"""Experiment loggers that need more than their Lightning constructor."""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import WandbLogger

from distill.validate import require_choice

log = logging.getLogger(__name__)

WANDB_MODES = ("auto", "online", "offline", "disabled")


def wandb_api_key_configured() -> bool:
    """True when wandb could authenticate: WANDB_API_KEY, or a `wandb login` entry in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        hosts = netrc.netrc().hosts
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return any("wandb" in host for host in hosts)


def wandb_logger(
    project: str = "distill",
    save_dir: str = ".",
    name: str | None = None,
    mode: str = "auto",
    **kwargs: Any,
) -> WandbLogger:
    """A WandbLogger that works on a machine without network or account.

    `mode="auto"` logs online when an API key is configured and offline otherwise, so a fresh
    machine never blocks on a login prompt; offline runs can be uploaded later with `wandb sync`.
    """
    require_choice(
        "logger.wandb.mode", mode, WANDB_MODES, allowed=f"one of {', '.join(WANDB_MODES)}"
    )
    if mode == "auto":
        mode = "online" if wandb_api_key_configured() else "offline"
    # WANDB_MODE set by the user wins, as wandb itself would have it.
    mode = os.environ.get("WANDB_MODE", mode)
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    if mode == "offline":
        log.info(
            "W&B is offline (no API key configured); upload later with: "
            "wandb sync %s/wandb/offline-*",
            save_dir,
        )
    previous = earlier_wandb_run_id(save_dir)
    if previous is not None and "id" not in kwargs:
        # Only a resume or a requeued job runs in a directory that already holds a W&B run:
        # its curves continue under the same run instead of starting a second one.
        log.info("Continuing the W&B run %s of this run directory", previous)
        kwargs.update(id=previous, resume="allow")
    return WandbLogger(
        project=project,
        save_dir=save_dir,
        name=name,
        offline=mode == "offline",
        mode=mode,
        **kwargs,
    )


def earlier_wandb_run_id(save_dir: str | Path) -> str | None:
    """The id of the newest W&B run under `save_dir/wandb` (wandb names its folders
    `run-<date>_<time>-<id>` online and `offline-run-<date>_<time>-<id>` offline)."""
    folders = [path for path in Path(save_dir, "wandb").glob("*run-*-*") if path.is_dir()]
    if not folders:
        return None
    newest = max(folders, key=lambda path: (path.name.split("run-", 1)[1], path.name))
    return newest.name.rsplit("-", 1)[1] or None
