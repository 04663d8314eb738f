"""The labels-only student of a run (`baseline=true`): does distillation pay at all?

On a new data set the first question is whether the teacher helps. With `baseline=true` a run
also trains its student from the labels alone, with every other setting the same (data, seed,
student, pruning, quantization, optimizer, trainer, export), under `<run>/baseline/`, and its
summary.json gets a `baseline` section with the KD gain: the run's number minus the baseline's,
for the student's test accuracy and every exported artifact's.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from distill.errors import ConfigError
from distill.run_state import is_complete
from distill.run_summary import read_summary
from distill.validate import require_bool

BASELINE_DIR = "baseline"


def wants_baseline(cfg: DictConfig, has_teacher: bool) -> bool:
    """`baseline` checked: a run without a teacher is its own baseline already."""
    wanted = require_bool("baseline", cfg.get("baseline", False))
    if wanted and not has_teacher:
        raise ConfigError(
            "baseline", True, "false for a run whose loss needs no teacher (labels only already)"
        )
    return wanted


def baseline_config(cfg: DictConfig) -> DictConfig:
    """The run's config with cross-entropy alone (weight 1, the run's label smoothing), no
    teacher, writing under <run>/baseline."""
    baseline = copy.deepcopy(cfg)
    smoothing = (cfg.loss.get("ce") or {}).get("label_smoothing", 0.0)
    with open_dict(baseline):
        baseline.loss = {
            "ce": {
                "_target_": "distill.losses.CrossEntropy",
                "weight": 1.0,
                "label_smoothing": smoothing,
            }
        }
        baseline.baseline = False
        baseline.teacher_output_cache = "off"
        baseline.paths.output_dir = str(Path(cfg.paths.output_dir) / BASELINE_DIR)
    return baseline


def train_baseline(cfg: DictConfig, train: Callable[[DictConfig], dict[str, Any]]) -> dict:
    """Train the labels-only student of `cfg` with `train` (the pipeline); its summary. A
    resumed run reuses a baseline that finished and resumes one that did not."""
    baseline = baseline_config(cfg)
    run_dir = Path(baseline.paths.output_dir)
    resuming = cfg.get("resume") is not None and run_dir.is_dir()
    if resuming and is_complete(run_dir):
        return read_summary(run_dir)
    with open_dict(baseline):
        baseline.resume = str(run_dir) if resuming else None
    return train(baseline)


def baseline_facts(run: Mapping[str, Any], baseline: Mapping[str, Any]) -> dict[str, Any]:
    """The `baseline` section of a run's summary: the baseline's accuracies and the KD gain."""
    accuracies = {"student.test_acc": baseline["student"]["test_acc"]}
    gain = {"student.test_acc": run["student"]["test_acc"] - baseline["student"]["test_acc"]}
    for name, entry in run.get("artifacts", {}).items():
        theirs = baseline.get("artifacts", {}).get(name, {})
        if "test_acc" in entry and "test_acc" in theirs:
            accuracies[f"artifacts.{name}.test_acc"] = theirs["test_acc"]
            gain[f"artifacts.{name}.test_acc"] = entry["test_acc"] - theirs["test_acc"]
    return {"output_dir": BASELINE_DIR, "test_acc": accuracies, "kd_gain": gain}
