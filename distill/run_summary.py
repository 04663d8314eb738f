"""`summary.json` as a typed object: built during the run, written once at its end.

The file is the contract later tools read (distill-export, reports, sweeps): its keys stay
stable. `metric(key)` reads one number from it by dotted path, which is what a Hydra sweeper
optimizes (`optimized_metric: student.test_acc`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill.errors import ConfigError
from distill.files import atomic_write_json
from distill.validate import is_real

SUMMARY_FILE = "summary.json"


@dataclass
class RunSummary:
    """One run's facts, section by section, in the order summary.json shows them."""

    seed: int
    output_dir: str
    data: dict[str, Any]
    student: dict[str, Any]
    sparsity: dict[str, Any]
    loss: dict[str, str]
    teacher: dict[str, Any] | None = None
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    timing: dict[str, Any] = field(default_factory=dict)
    quantization: dict[str, Any] | None = None
    deployment: list[dict[str, Any]] | None = None
    # The artifact to ship and why (deploy/report_rows.py: recommend); set with `deployment`.
    deployment_recommendation: dict[str, Any] | None = None
    # The labels-only student's numbers and the KD gain (`baseline=true`, distill/baseline.py).
    baseline: dict[str, Any] | None = None
    # complete, or export_failed / export_interrupted: trained and tested, export missing.
    status: str = "complete"

    def to_dict(self) -> dict[str, Any]:
        summary: dict[str, Any] = {
            "status": self.status,
            "seed": self.seed,
            "output_dir": self.output_dir,
            "data": self.data,
            "teacher": self.teacher,
            "student": self.student,
            "sparsity": self.sparsity,
            "artifacts": self.artifacts,
            "loss": self.loss,
            "timing": self.timing,
        }
        # Sections that exist only for some runs are absent rather than null, as readers of
        # earlier summaries expect.
        if self.quantization is not None:
            summary["quantization"] = self.quantization
        if self.deployment is not None:
            summary["deployment"] = self.deployment
            summary["deployment_recommendation"] = self.deployment_recommendation
        if self.baseline is not None:
            summary["baseline"] = self.baseline
        return summary

    def write(self, run_dir: Path) -> Path:
        return atomic_write_json(Path(run_dir) / SUMMARY_FILE, self.to_dict())


# Where an optimized metric may come from, and whether it needs the deployment export.
METRIC_SECTIONS = ("student", "teacher", "sparsity", "timing", "artifacts", "baseline")


def check_metric_key(key: str | None, exports: bool) -> str | None:
    """Refuse, before training, an `optimized_metric` no summary could hold."""
    if key is None:
        return None
    parts = key.split(".") if isinstance(key, str) else []
    if len(parts) < 2 or parts[0] not in METRIC_SECTIONS or not all(parts):
        raise ConfigError(
            "optimized_metric",
            key,
            "a dotted key of summary.json under one of "
            f"{METRIC_SECTIONS}, e.g. student.test_acc or artifacts.onnx_int8.test_acc "
            "(or null)",
        )
    if parts[0] == "artifacts" and parts[1] not in ("student", "student_state") and not exports:
        raise ConfigError(
            "optimized_metric", key, "a key that exists without the export (export=false)"
        )
    return key


def metric(summary: dict[str, Any], key: str) -> float:
    """The number at dotted `key` of a summary (as summary.json holds it)."""
    value: Any = summary
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise ConfigError(
                "optimized_metric",
                key,
                f"a key of this run's summary.json; {part!r} is not there "
                f"(it has {sorted(value) if isinstance(value, dict) else type(value).__name__})",
            )
        value = value[part]
    if not is_real(value):
        raise ConfigError("optimized_metric", key, f"a number; this key holds {value!r}")
    return float(value)


def read_summary(run_dir: Path) -> dict[str, Any]:
    """A finished run's summary.json."""
    path = Path(run_dir) / SUMMARY_FILE
    if not path.is_file():
        raise ConfigError("run_dir", str(run_dir), f"a finished run (it has no {SUMMARY_FILE})")
    try:
        summary = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(
            "run_dir",
            str(run_dir),
            f"a finished run with a whole {SUMMARY_FILE} (it is cut short or not JSON: {error})",
        ) from error
    if not isinstance(summary, dict):
        raise ConfigError(
            "run_dir", str(run_dir), f"a finished run ({SUMMARY_FILE} holds no JSON object)"
        )
    return summary
