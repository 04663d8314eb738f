"""A finished run, read back from its directory: config, data and the student as trained."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from distill.assembly import attach_compression
from distill.checkpoint_io import describe_load_failure
from distill.compression.masks import bake_into
from distill.compression.quantization_callback import QuantizationCallback
from distill.config import build
from distill.data import ClassificationDataModule
from distill.deploy.slim import SlimReport, remove_zero_channels
from distill.errors import ConfigError
from distill.files import atomic_write
from distill.run_summary import read_summary
from distill.teachers import TeacherSpec, load_weights
from distill.trust import check_config_targets

STUDENT_STATE_FILE = "student_state.pt"
# The run's resolved config, written by the pipeline; Hydra's own copy is the fallback.
CONFIG_FILE = "config.yaml"
HYDRA_CONFIG_FILE = ".hydra/config.yaml"
LAST_CHECKPOINT = "checkpoints/last.ckpt"


@dataclass
class TrainedRun:
    """What an export needs from a run: its config, data, the student with its hooks, and the
    student baked (`plain`, by `from_student`) and slimmed (`slim`, on first use), each computed
    once for every user (the slim file, the export)."""

    cfg: DictConfig
    datamodule: ClassificationDataModule
    student: nn.Module  # masks, fake-quant and observers attached and loaded
    quantization: QuantizationCallback | None
    plain: nn.Module  # effective weights in a freshly built student, eval mode
    teacher: nn.Module | None = None  # for the report's teacher row, when its weights exist

    @functools.cached_property
    def slim(self) -> SlimReport:
        """`plain` with its all-zero channels removed. Computed when first asked for: a run
        that neither prunes channels nor exports never needs it (nor a student Torch-Pruning
        can trace)."""
        return remove_zero_channels(self.plain, self.datamodule.example_input_batch(2)[:1])

    @classmethod
    def from_student(
        cls,
        cfg: DictConfig,
        datamodule: ClassificationDataModule,
        student: nn.Module,
        quantization: QuantizationCallback | None,
        teacher: nn.Module | None = None,
    ) -> TrainedRun:
        """The run of a trained `student`, baked once into a fresh model of its config."""
        plain = bake_into(student, build(cfg.student, "student")).eval()
        return cls(cfg, datamodule, student.eval(), quantization, plain, teacher)


def save_run_config(cfg: DictConfig, run_dir: Path) -> Path:
    """The composed config, resolved, so the run can be rebuilt without Hydra."""
    text = OmegaConf.to_yaml(cfg, resolve=True)
    return atomic_write(run_dir / CONFIG_FILE, lambda handle: handle.write(text.encode()))


def load_run_config(run_dir: Path) -> DictConfig:
    """The run's config, every `_target_` in it checked against the allowlist before anything
    is built: the directory may come from someone else (distill.trust). Its own
    `trusted_targets` is never read."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        path = run_dir / HYDRA_CONFIG_FILE
    if not path.is_file():
        raise ConfigError(
            "run_dir", str(run_dir), f"a distill-train run directory (no {CONFIG_FILE} there)"
        )
    try:
        cfg = OmegaConf.load(path)
    except Exception as error:  # YAML's parser and OmegaConf's raise many kinds
        reason = " ".join(str(error).split())[:200]
        raise ConfigError(
            "run_dir",
            str(run_dir),
            f"a run whose {path.relative_to(run_dir)} is whole YAML ({reason})",
        ) from error
    if not isinstance(cfg, DictConfig) or "student" not in cfg or "paths" not in cfg:
        raise ConfigError(
            "run_dir",
            str(run_dir),
            f"a run whose {path.relative_to(run_dir)} is a distill-train config (it has no "
            "student or paths)",
        )
    check_config_targets(cfg)
    # Hydra's own resolvers are gone outside `distill-train`; the run directory is this one.
    cfg.paths.output_dir = str(run_dir)
    return cfg


def load_student_state(run_dir: Path) -> dict[str, Tensor]:
    """The student's full state (masks, fake-quant, observers): student_state.pt, or the last
    Lightning checkpoint of the run."""
    state_path = run_dir / STUDENT_STATE_FILE
    if state_path.is_file():
        state = _load(state_path, run_dir)
        if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
            raise ConfigError(
                "run_dir", str(run_dir), f"a run whose {STUDENT_STATE_FILE} holds a state_dict"
            )
        return state
    checkpoint_path = run_dir / LAST_CHECKPOINT
    if checkpoint_path.is_file():
        checkpoint = _load(checkpoint_path, run_dir)
        prefix = "student."
        return {
            key[len(prefix) :]: value
            for key, value in checkpoint["state_dict"].items()
            if key.startswith(prefix)
        }
    raise ConfigError(
        "run_dir",
        str(run_dir),
        f"a run directory holding a trained student ({STUDENT_STATE_FILE} or {LAST_CHECKPOINT}); "
        "this one has neither: did the run finish?",
    )


def _load(path: Path, run_dir: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a corrupt file can fail in any layer of the unpickler
        raise ConfigError(
            "run_dir",
            str(run_dir),
            f"a run whose {path.relative_to(run_dir)} loads ({describe_load_failure(path, error)})",
        ) from error


def load_trained_run(run_dir: Path) -> TrainedRun:
    """Rebuild a finished run's student (masks, fake-quant, observers) and load its state."""
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    state = load_student_state(run_dir)
    datamodule: ClassificationDataModule = build(cfg.data, "data")
    datamodule.setup("fit")
    datamodule.setup("test")
    student: nn.Module = build(cfg.student, "student")
    example = datamodule.example_input_batch(2)
    compression = attach_compression(cfg, student, example, cfg.trainer.get("max_epochs"))
    missing, unexpected = student.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(
            "run_dir",
            str(run_dir),
            f"a student state matching the run's config (missing keys {missing[:5]}, "
            f"unexpected keys {unexpected[:5]})",
        )
    teacher = load_teacher(cfg, run_dir)
    return TrainedRun.from_student(cfg, datamodule, student, compression.quantization, teacher)


def load_teacher(cfg: DictConfig, run_dir: Path) -> nn.Module | None:
    """The run's single teacher from the weights file its summary names (cache or checkpoint),
    or None (several teachers, or the file is gone): the report then has no teacher row."""
    teacher = read_summary(run_dir).get("teacher") or {}
    weights = (teacher.get("checkpoint") or {}).get("path")
    if cfg.get("teachers") or not weights:
        return None
    path = Path(weights) if Path(weights).is_absolute() else run_dir / weights
    if not path.is_file():
        return None
    spec = TeacherSpec(field="teacher", model=cfg.teacher.model, checkpoint=str(path))
    return load_weights(spec.build_model(), path, "teacher.checkpoint").eval()
