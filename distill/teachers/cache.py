"""A directory of trained teachers, keyed by what determines their weights.

Two runs that need the same teacher at the same time must not both write it, and a run that
dies mid-write must not leave a half file that a later run trusts: an exclusive file lock
serialises training of one key, and the weights appear only through an atomic rename.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from distill.errors import ConfigError
from distill.files import (
    atomic_write,
    atomic_write_json,
    exclusive_lock,
    remove_abandoned_writes,
    require_writable_dir,
)
from distill.teachers.checkpoint import load_weights
from distill.teachers.spec import TeacherSpec

if TYPE_CHECKING:
    from distill.data import ClassificationDataModule

log = logging.getLogger(__name__)

# Bump when the meaning of a cached entry changes, so old entries are not reused. 2: the
# training order of every epoch is a function of (seed, epoch) (distill/data/resumable.py), so
# teachers trained before would differ from the ones the same settings train now. 3: teachers
# are trained in train mode; an ensemble member cached before trained BatchNorm on its initial
# statistics (eval mode), under the same key as the teacher trained alone. 4: a teacher starts
# from initial weights drawn from its seed alone (not from whatever the process drew before),
# and the key records the compute it was trained on (accelerator, precision, CPU threads).
CACHE_FORMAT = 4

# Settings that change how fast data loads but not what a teacher learns from it (cache_dir:
# where an image folder's decoded pixels are kept).
DATA_KEYS_NOT_IN_CACHE_KEY = ("num_workers", "eval_batch_size", "cache_dir")


@dataclass(frozen=True)
class CachedTeacher:
    """Where a teacher came from: `origin` is "cache" or "trained"."""

    origin: str
    path: Path
    meta: dict[str, Any]


def data_fingerprint(
    data: DictConfig, datamodule: ClassificationDataModule | None = None
) -> dict[str, Any]:
    """The data settings (`cfg.data`, resolved) that decide what a teacher sees, and, given the
    set-up `datamodule` built from them, a hash of the data itself where the settings do not
    pin it down (an image folder whose files a user can change: `content_fingerprint`)."""
    settings = OmegaConf.to_container(data, resolve=True)
    assert isinstance(settings, dict)
    fingerprint = {
        str(key): value for key, value in settings.items() if key not in DATA_KEYS_NOT_IN_CACHE_KEY
    }
    content = datamodule.content_fingerprint() if datamodule is not None else None
    if content is not None:  # absent otherwise: the keys of other data stay as they were
        fingerprint["content_fingerprint"] = content
    return fingerprint


def teacher_key_material(
    spec: TeacherSpec,
    data_fingerprint: Mapping[str, Any],
    seed: int,
    compute: Mapping[str, Any],
) -> dict[str, Any]:
    """Everything that determines the weights a teacher is trained to, and nothing else: the
    one place that decides what the teacher cache key covers (`cache_key` hashes it; it is
    also written to the entry's meta.json). `compute` is `training.teacher_compute`: on CPU
    the thread count changes the order in which kernels sum, and so the weights."""
    return {
        "model": copy.deepcopy(dict(spec.model)),
        "data": copy.deepcopy(dict(data_fingerprint)),
        "train": copy.deepcopy(dict(spec.train)) if spec.train is not None else None,
        "seed": seed,
        "compute": dict(compute),
    }


def teacher_cache_key(
    spec: TeacherSpec, data_fingerprint: Mapping[str, Any], seed: int, compute: Mapping[str, Any]
) -> str:
    """The teacher cache key of `spec` trained on that data with that seed and compute."""
    return cache_key(teacher_key_material(spec, data_fingerprint, seed, compute))


def cache_key(material: Mapping[str, Any]) -> str:
    """A stable hash of the settings that determine a teacher's weights."""
    canonical = json.dumps({"format": CACHE_FORMAT, **material}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:20]


class TeacherCache:
    """Trained teachers under `directory`; `field` is the config field that names it."""

    def __init__(self, directory: str | Path, field: str = "teacher.cache_dir") -> None:
        self.directory = Path(directory).expanduser()
        self.field = field

    def entry_dir(self, key: str) -> Path:
        return self.directory / key

    def weights_path(self, key: str) -> Path:
        """Where the weights of the entry `key` are (or will be) stored."""
        return self.entry_dir(key) / "teacher.pt"

    def has(self, key: str) -> bool:
        """Whether the cache holds trained weights for `key` (without waiting on its lock: the
        weights appear only by atomic rename, so a file that exists is whole)."""
        return self.weights_path(key).is_file()

    def get_or_train(
        self,
        model: nn.Module,
        material: Mapping[str, Any],
        train: Callable[[nn.Module], Mapping[str, Any]],
    ) -> CachedTeacher:
        """Load the cached teacher for `material` into `model`, or train and store it.

        `train(model)` trains in place and returns facts worth keeping (test accuracy, time).
        """
        key = cache_key(material)
        entry = self.entry_dir(key)
        weights, meta_path = self.weights_path(key), entry / "meta.json"
        require_writable_dir(self.field, self.directory)
        entry.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(entry / ".lock"):
            # Every writer of the entry holds this lock: a temporary file found now is the half
            # write of a job killed while it held the lock, and would stay forever.
            remove_abandoned_writes(weights)
            remove_abandoned_writes(meta_path)
            if weights.is_file():
                try:
                    load_weights(model, weights, field="teacher cache entry")
                    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
                    log.info("Reusing cached teacher %s", weights)
                    return CachedTeacher("cache", weights, meta)
                except (ConfigError, json.JSONDecodeError) as error:
                    log.warning("Cached teacher %s is unusable (%s); training again", entry, error)
            log.info("No cached teacher under %s; training one", entry)
            facts = dict(train(model))
            meta = {"key": key, "material": material, "created": time.time(), **facts}
            # The weights last: they are what says the entry is whole (`has`, the check above),
            # so a job killed between the two writes leaves an entry that is trained again, not
            # weights without their meta.
            atomic_write_json(meta_path, meta)
            atomic_write(weights, lambda f: torch.save({"state_dict": model.state_dict()}, f))
            return CachedTeacher("trained", weights, meta)
