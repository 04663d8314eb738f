"""One row per run: its label, status, accuracies, sparsity and one artifact's measurements."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from typing import Any

from distill.errors import ConfigError
from distill.sweep_report.labels import labels
from distill.sweep_report.pareto import pareto_front
from distill.sweep_report.runs import FINISHED, Run
from distill.validate import is_real

# The artifact a report shows when none is asked for: the first of these any run has.
PREFERRED_ARTIFACTS = ("onnx_int8", "onnx_fp32", "student")
LATENCY_KEY = "latency_ms_bs64"

COLUMNS = (
    "label",
    "status",
    "teacher_acc",
    "student_acc",
    # With baseline=true: the labels-only student's accuracy and the student's gain over it.
    "labels_only_acc",
    "kd_gain",
    "sparsity",
    "artifact",
    "artifact_bytes",
    "artifact_acc",
    "artifact_latency_ms_bs64",
    "pareto_bytes",
    "pareto_latency",
    "run_dir",
    "error",
)


def artifact_names(runs: Sequence[Run]) -> list[str]:
    """Every artifact name the finished runs' summaries list, sorted."""
    names = {name for run in runs if run.summary for name in run.summary.get("artifacts") or {}}
    return sorted(names)


def choose_artifact(runs: Sequence[Run], requested: str | None) -> str | None:
    """`requested` if some run has it (else ConfigError), or the preferred one runs have."""
    seen = artifact_names(runs)
    if requested is None:
        return next((name for name in PREFERRED_ARTIFACTS if name in seen), None)
    if requested not in seen:
        allowed = (
            f"an artifact the runs' summaries list: {', '.join(seen)}"
            if seen
            else "an artifact name, but no run here finished with a summary.json"
        )
        raise ConfigError("--artifact", requested, allowed)
    return requested


def build_rows(runs: Sequence[Run], artifact: str | None) -> list[dict[str, Any]]:
    """The report's rows, in the order of `runs`, with the Pareto flags of finished runs."""
    full, short = labels([run.overrides for run in runs], [run.rel for run in runs])
    rows = []
    for run, label, short_label in zip(runs, full, short, strict=True):
        summary = run.summary or {}
        measured = _artifact(summary, artifact) if artifact else {}
        rows.append(
            {
                "label": label,
                "short_label": short_label,
                "status": run.status,
                "teacher_acc": _number(summary, "teacher", "test_acc"),
                "student_acc": _number(summary, "student", "test_acc"),
                "labels_only_acc": _baseline(summary, "test_acc"),
                "kd_gain": _baseline(summary, "kd_gain"),
                "sparsity": _number(summary, "sparsity", "global"),
                "artifact": artifact if run.status == FINISHED else None,
                "artifact_bytes": _real(measured.get("bytes")),
                "artifact_acc": _real(measured.get("test_acc")),
                "artifact_latency_ms_bs64": _real(measured.get(LATENCY_KEY)),
                "run_dir": run.rel,
                "error": run.error,
            }
        )
    for cost, flag in (
        ("artifact_bytes", "pareto_bytes"),
        ("artifact_latency_ms_bs64", "pareto_latency"),
    ):
        points = [_point(row, cost) for row in rows]
        for row, on_front in zip(rows, pareto_front(points), strict=True):
            row[flag] = on_front
    return rows


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as CSV, every number at full precision, blank where not measured."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([_csv_cell(row[column]) for column in COLUMNS])
    return buffer.getvalue()


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    # repr of a float is the shortest text that reads back as the same float.
    return repr(value) if isinstance(value, float) else str(value)


def _artifact(summary: dict[str, Any], name: str) -> dict[str, Any]:
    """The artifact's entry, completed by its deployment-report row.

    `artifacts.student` holds only the file's path and size; the export measures it (accuracy,
    latency) as the report's `student` row, which `deployment` keeps.
    """
    entry = (summary.get("artifacts") or {}).get(name)
    if not isinstance(entry, dict):
        return {}
    deployment = summary.get("deployment") or []
    row = next((r for r in deployment if isinstance(r, dict) and r.get("name") == name), {})
    return {**row, **entry}


def _number(summary: dict[str, Any], section: str, key: str) -> float | None:
    part = summary.get(section)
    return _real(part.get(key)) if isinstance(part, dict) else None


def _baseline(summary: dict[str, Any], part: str) -> float | None:
    """The `baseline` section's number for the student (distill/baseline.py)."""
    section = summary.get("baseline")
    numbers = section.get(part) if isinstance(section, dict) else None
    return _real(numbers.get("student.test_acc")) if isinstance(numbers, dict) else None


def _real(value: Any) -> Any:
    # NaN and infinity are no measurement: they would sit on every Pareto front or none.
    return value if is_real(value) and math.isfinite(value) else None


def _point(row: dict[str, Any], cost: str) -> tuple[float, float] | None:
    if row["status"] != FINISHED or row["artifact_acc"] is None or row[cost] is None:
        return None
    return (row["artifact_acc"], row[cost])
