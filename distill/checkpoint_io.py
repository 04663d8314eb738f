"""Checkpoints that are whole or absent, and the newest one a resume can trust.

Lightning writes a checkpoint straight to its final path: a kill in the middle of the write
leaves a truncated `last.ckpt` where the previous good one was. Here every checkpoint goes to a
temporary file in the same directory, is fsynced, then renamed over the target, so a reader
sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from torch import Tensor

from distill.cluster.requeue import hpc_checkpoints
from distill.files import atomic_write

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"


def write_checkpoint_bytes(checkpoint: dict[str, Any], handle: IO[bytes]) -> None:
    """Serialize `checkpoint` into an open file (a seam where tests kill the process)."""
    torch.save(checkpoint, handle)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO, with the write made atomic (temp file, fsync, rename)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        if "://" in str(path):  # a remote path: fsspec's own write, as Lightning would
            super().save_checkpoint(checkpoint, path)
            return
        atomic_write(Path(path), lambda handle: write_checkpoint_bytes(checkpoint, handle))


def checkpoint_step(path: Path) -> tuple[int, int] | None:
    """(global step, epoch) of a readable Lightning checkpoint; None for anything else (a
    truncated file, random bytes, a bare state_dict). Read with `weights_only=True`."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a damaged file can fail in any layer of the unpickler
        return None
    if not isinstance(checkpoint, dict) or not {"state_dict", "optimizer_states"} <= set(
        checkpoint
    ):
        return None
    return int(checkpoint.get("global_step", 0)), int(checkpoint.get("epoch", 0))


def newest_valid_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint of `run_dir` furthest into training that loads; unreadable ones (a write
    killed before atomic checkpoints, a disk that filled) are skipped with a warning. Ties go to
    the newest file."""
    run_dir = Path(run_dir)
    candidates = [*sorted((run_dir / CHECKPOINT_DIR).glob("*.ckpt")), *hpc_checkpoints(run_dir)]
    ranked = []
    for path in candidates:
        step = checkpoint_step(path)
        if step is None:
            log.warning("Skipping %s: not a readable Lightning checkpoint", path)
            continue
        ranked.append(((*step, path.stat().st_mtime_ns), path))
    return max(ranked)[1] if ranked else None


def remove_partial_writes(run_dir: Path) -> list[Path]:
    """Delete the temporary files of checkpoint writes that were killed (`.NAME.ckpt.*.tmp`)."""
    found = [*Path(run_dir).glob(".*.tmp"), *(Path(run_dir) / CHECKPOINT_DIR).glob(".*.tmp")]
    for path in found:
        path.unlink(missing_ok=True)
    return found


def describe_load_failure(path: str | Path, error: Exception) -> str:
    """Why `torch.load` could not read `path`, in one line. The weights-only unpickler's message
    leads with advice to load with `weights_only=False`, which a file of unknown origin must
    never get; its reason comes after "WeightsUnpickler error:". An empty file's error
    (EOFError) has no text at all."""
    if Path(path).is_file() and Path(path).stat().st_size == 0:
        return "the file is empty"
    text = str(error).partition("WeightsUnpickler error:")[2] or str(error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    reason = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return f"torch cannot read it: {reason}"


def state_mismatch(expected: Mapping[str, Tensor], state: Mapping[str, Tensor]) -> str | None:
    """What keeps `state` from loading where `expected` is (missing and unexpected keys, other
    shapes), in one line; None when it fits."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{key}: checkpoint {tuple(state[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in sorted(set(expected) & set(state))
        if state[key].shape != expected[key].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {_first(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_first(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches {_first(mismatched)}")
    return "; ".join(problems) or None


def _first(items: list[str], count: int = 5) -> str:
    shown = ", ".join(items[:count])
    return f"[{shown}{', ...' if len(items) > count else ''}] ({len(items)} in all)"
