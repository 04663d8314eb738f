"""What a run says about each teacher, read once from config, typed and checked.

A teacher comes from a file of conf/teacher/ composed into `teacher` (one teacher) or into
`teachers.<name>` (several; a recipe composes them with `/teacher@teachers.<name>: <file>`).
`TeacherSpec.from_node` resolves its interpolations, so everything after it (building,
training, the cache key) works from plain values and never needs the whole run config.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from distill.config import build
from distill.errors import ConfigError
from distill.validate import require_int, require_positive

BUILDABLE = "a config node with a _target_ naming a class or function"
DEFAULT_RULE = "mean"


def _is_buildable(node: Any) -> bool:
    return isinstance(node, Mapping) and isinstance(node.get("_target_"), str)


def _container(node: Any) -> Any:
    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True)
    return copy.deepcopy(node)


@dataclass(frozen=True)
class TeacherSpec:
    """One teacher's settings. `field` is its config path ("teacher", "teachers.wide"), and
    every error names a field under it.

    `model` is the model's config (resolved, with `_target_`); `checkpoint` the weights file to
    load, or None to train it with `train` (`max_epochs`, `optimizer` and optional
    `lr_scheduler` as partial configs) and keep it under `cache_dir`; `weight` its share of an
    ensemble's soft targets. The resolved `model` and `train` mappings are also what the
    teacher cache key hashes (`distill.teachers.cache.teacher_key_material`).
    """

    field: str
    model: Mapping[str, Any]
    checkpoint: str | None = None
    train: Mapping[str, Any] | None = None
    weight: float = 1.0
    cache_dir: str | None = None
    cache_dir_field: str = "teacher.cache_dir"

    def __post_init__(self) -> None:
        if not _is_buildable(self.model):
            raise ConfigError(f"{self.field}.model", self.model, BUILDABLE)
        # Own copies: a spec must not change when the config it came from does.
        object.__setattr__(self, "model", _container(self.model))
        object.__setattr__(self, "train", _container(self.train))
        checkpoint = self.checkpoint
        if isinstance(checkpoint, Path):
            checkpoint = str(checkpoint)
        if checkpoint is not None and (not isinstance(checkpoint, str) or not checkpoint):
            raise ConfigError(
                f"{self.field}.checkpoint", checkpoint, "the path of a checkpoint file, or null"
            )
        object.__setattr__(self, "checkpoint", checkpoint)
        object.__setattr__(self, "weight", require_positive(f"{self.field}.weight", self.weight))
        if self.must_train:
            self._check_training()

    def _check_training(self) -> None:
        train = self.train
        if not isinstance(train, Mapping):
            raise ConfigError(
                f"{self.field}.train",
                train,
                "the teacher's training settings (max_epochs, optimizer, lr_scheduler), "
                f"or a {self.field}.checkpoint",
            )
        require_int(f"{self.field}.train.max_epochs", train.get("max_epochs"), minimum=1)
        if not _is_buildable(train.get("optimizer")):
            raise ConfigError(f"{self.field}.train.optimizer", train.get("optimizer"), BUILDABLE)
        scheduler = train.get("lr_scheduler")
        if scheduler is not None and not _is_buildable(scheduler):
            raise ConfigError(
                f"{self.field}.train.lr_scheduler", scheduler, f"{BUILDABLE}, or null"
            )
        if not isinstance(self.cache_dir, str) or not self.cache_dir:
            raise ConfigError(
                self.cache_dir_field, self.cache_dir, "a directory to keep trained teachers in"
            )

    @classmethod
    def from_node(
        cls, node: DictConfig, field: str, default_cache_dir: str | None = None
    ) -> TeacherSpec:
        """The spec of a `conf/teacher/*` node at config path `field`; its interpolations
        resolve against the run config it belongs to."""
        own_cache_dir = node.get("cache_dir")
        return cls(
            field=field,
            model=_container(node.get("model")),
            checkpoint=node.get("checkpoint") or None,
            train=_container(node.get("train")),
            weight=node.get("weight", 1.0),
            cache_dir=own_cache_dir or default_cache_dir,
            cache_dir_field=f"{field}.cache_dir" if own_cache_dir else "teacher.cache_dir",
        )

    @property
    def must_train(self) -> bool:
        """No checkpoint: the run trains this teacher (or finds it in the cache)."""
        return self.checkpoint is None

    @property
    def target(self) -> str:
        return str(self.model["_target_"])

    @property
    def max_epochs(self) -> int:
        return int(self._train_settings()["max_epochs"])

    def build_model(self) -> nn.Module:
        node = OmegaConf.create(dict(self.model))
        model: nn.Module = build(node, f"{self.field}.model", nn.Module)
        return model

    def build_optimizer(self) -> Any:
        """The optimizer factory (a partial taking the parameters)."""
        node = self._train_settings()["optimizer"]
        return build(OmegaConf.create(node), f"{self.field}.train.optimizer")

    def build_lr_scheduler(self) -> Any | None:
        """The scheduler factory (a partial taking the optimizer), or None."""
        node = self._train_settings().get("lr_scheduler")
        if node is None:
            return None
        return build(OmegaConf.create(node), f"{self.field}.train.lr_scheduler")

    def _train_settings(self) -> Mapping[str, Any]:
        if not isinstance(self.train, Mapping):
            raise ConfigError(f"{self.field}.train", self.train, "training settings")
        return self.train


def teacher_specs(cfg: DictConfig) -> dict[str, TeacherSpec]:
    """name -> spec of every teacher of the run: `teachers.<name>` when `teachers` is set,
    else the one `teacher` (named "teacher"). Members without their own `cache_dir` use
    `teacher.cache_dir`."""
    teacher = cfg.get("teacher") or {}
    default_cache_dir = teacher.get("cache_dir")
    if cfg.get("teachers"):
        return {
            str(name): TeacherSpec.from_node(node, f"teachers.{name}", default_cache_dir)
            for name, node in cfg.teachers.items()
        }
    return {"teacher": TeacherSpec.from_node(cfg.teacher, "teacher", default_cache_dir)}


def ensemble_rule(cfg: DictConfig) -> Any:
    """How several teachers' soft targets combine (`teacher_ensemble.rule`; the ensemble
    checks it)."""
    return (cfg.get("teacher_ensemble") or {}).get("rule", DEFAULT_RULE)
