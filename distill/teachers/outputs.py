"""Teacher outputs computed once and reused every epoch.

A frozen teacher in eval mode gives the same logits and features for the same input, so when
the training inputs do not change between epochs (no random augmentation) its forward pass
need not run again: the outputs for every training sample are written once, as .npy files
under the cache directory, and read back memory-mapped, so a large set does not sit in RAM.
The key covers the teacher's weights, the data settings and the taps, so a change to any of
them computes new outputs. With random augmentation the cache cannot be right and is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence, Sized
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from distill.files import exclusive_lock, new_staging_dir, remove_abandoned_staging
from distill.taps import FeatureTaps

log = logging.getLogger(__name__)

LOGITS = "logits"


def weights_digest(model: nn.Module) -> str:
    """A hash of every tensor in the model's state, in key order."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class TeacherOutputs:
    """Memory-mapped teacher outputs for every training sample, looked up by sample index."""

    def __init__(self, directory: Path, keys: Sequence[str]) -> None:
        self.directory = directory
        self.arrays = {
            key: np.load(directory / _file_name(key), mmap_mode="r") for key in (LOGITS, *keys)
        }

    @property
    def bytes(self) -> int:
        return sum(path.stat().st_size for path in self.directory.glob("*.npy"))

    def lookup(self, indices: Tensor, device: torch.device) -> tuple[Tensor, dict[str, Tensor]]:
        """(logits, features by tap) for the samples at `indices` of the training set."""
        order = indices.cpu().numpy()
        found = {
            key: torch.from_numpy(np.ascontiguousarray(array[order])).to(device)
            for key, array in self.arrays.items()
        }
        return found.pop(LOGITS), found


def cached_teacher_outputs(
    teacher: nn.Module,
    taps: FeatureTaps,
    dataset: Dataset,
    cache_dir: str | Path,
    material: Mapping[str, Any],
    batch_size: int = 256,
) -> tuple[TeacherOutputs, dict[str, Any]]:
    """Load the outputs of `teacher` on `dataset` from the cache, or compute and store them.

    `teacher` must be frozen (eval mode). Returns the outputs and facts for summary.json.
    """
    key_material = {**material, "teacher": weights_digest(teacher), "taps": list(taps.keys)}
    key = hashlib.sha256(json.dumps(key_material, sort_keys=True, default=str).encode())
    entry = Path(cache_dir).expanduser() / key.hexdigest()[:20]
    entry.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with exclusive_lock(entry.parent / f".{entry.name}.lock"):
        remove_abandoned_staging(entry)
        if (entry / "done").is_file():
            origin = "cache"
            log.info("Reusing cached teacher outputs %s", entry)
        else:
            origin = "computed"
            log.info(
                "Computing teacher outputs for %d samples into %s", len(cast(Sized, dataset)), entry
            )
            _compute(teacher, taps, dataset, entry, batch_size)
    outputs = TeacherOutputs(entry, taps.keys)
    facts = {
        "used": True,
        "origin": origin,
        "path": str(entry),
        "bytes": outputs.bytes,
        "build_s": time.perf_counter() - started,
    }
    return outputs, facts


def _compute(
    teacher: nn.Module, taps: FeatureTaps, dataset: Dataset, entry: Path, batch_size: int
) -> None:
    # Written into a temporary directory and renamed into place: a run that dies half way
    # leaves nothing that a later run would trust.
    staging = new_staging_dir(entry.parent, prefix=f".{entry.name}.")
    try:
        arrays: dict[str, np.memmap] = {}
        size = len(cast(Sized, dataset))
        position = 0
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
        with taps, torch.no_grad():
            for inputs, *_ in loader:
                taps.clear()
                device = next(teacher.parameters()).device
                logits = teacher(inputs.to(device))
                batch = {LOGITS: logits, **taps.features}
                for name, value in batch.items():
                    if name not in arrays:
                        arrays[name] = np.lib.format.open_memmap(
                            staging / _file_name(name),
                            mode="w+",
                            dtype=np.float32,
                            shape=(size, *value.shape[1:]),
                        )
                    arrays[name][position : position + len(inputs)] = value.float().cpu().numpy()
                position += len(inputs)
        for array in arrays.values():
            array.flush()
        (staging / "done").write_text("complete\n")
        if entry.exists():
            shutil.rmtree(entry)
        os.replace(staging, entry)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _file_name(key: str) -> str:
    # Tap keys hold dots, slashes and colons; file names get a safe spelling of them.
    return key.replace("/", "__").replace(":", "--") + ".npy"
