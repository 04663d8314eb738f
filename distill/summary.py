"""Measuring a finished run and writing `summary.json`, the contract later tools read."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

# Re-exported: summary.json's sparsity and the logged metrics share one implementation.
from distill.compression.sparsity import weight_sparsity as weight_sparsity


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_nonzero_parameters(model: nn.Module) -> int:
    return sum(int(torch.count_nonzero(p)) for p in model.parameters())


def artifact(path: Path, run_dir: Path) -> dict[str, Any]:
    """An artifact entry: its path (relative to the run directory when inside it) and size."""
    path = Path(path)
    try:
        shown = str(path.resolve().relative_to(run_dir.resolve()))
    except ValueError:
        shown = str(path.resolve())
    return {"path": shown, "bytes": path.stat().st_size}


def print_summary(summary: Mapping[str, Any], console: Console | None = None) -> None:
    """The short table a user reads at the end of `distill-train`."""
    console = console or Console()
    teacher, student = summary.get("teacher") or {}, summary["student"]
    artifacts, timing = summary["artifacts"], summary["timing"]
    slim = artifacts.get("slim")
    table = Table(title=f"distill run: {summary['output_dir']}")
    for header in ("", "teacher", "student", *(["slim student"] if slim else [])):
        table.add_column(header, justify="right" if header else "left")

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.2f}%"

    def size(entry: Mapping[str, Any] | None) -> str:
        return "-" if not entry else f"{entry['bytes'] / 1024:.1f} KiB"

    def row(label: str, teacher_cell: str, student_cell: str, slim_cell: str = "") -> None:
        table.add_row(label, teacher_cell, student_cell, *([slim_cell] if slim else []))

    same = "same outputs" if slim else ""
    row("test accuracy", pct(teacher.get("test_acc")), pct(student["test_acc"]), same)
    baseline = summary.get("baseline")
    if baseline:  # baseline=true: does distillation pay on this data set at all?
        gain = 100 * baseline["kd_gain"]["student.test_acc"]
        labels_only = baseline["test_acc"]["student.test_acc"]
        row("labels only (no KD)", "", f"{pct(labels_only)} (KD {gain:+.2f} pts)")
    row(
        "parameters (nonzero)",
        f"{teacher.get('params_total', 0):,}",
        f"{student['params_total']:,} ({student['params_nonzero']:,})",
        f"{slim['params']:,}" if slim else "",
    )
    if slim:
        row("MACs per example", "", f"{slim['macs_dense']:,.0f}", f"{slim['macs']:,.0f}")
    row("weight sparsity", "", pct(summary["sparsity"]["global"]))
    row("weights file", size(teacher.get("checkpoint")), size(artifacts.get("student")), size(slim))
    row("agrees with teacher", "", pct(student.get("agreement")))
    row(
        "wall time",
        f"{timing.get('teacher_s', 0):.1f} s ({teacher.get('origin', '-')})",
        f"fit {timing['fit_s']:.0f} s, all {timing['total_s']:.0f} s",
    )
    console.print(table)
    if summary.get("deployment"):
        print_deployment(summary["deployment"], console)


def print_deployment(rows: list[Mapping[str, Any]], console: Console) -> None:
    """The deployed artifacts next to the dense student (details in export/report.md)."""
    table = Table(title="deployment, measured on this machine (export/report.md)")
    for header in ("", "test acc", "size", "bs1 ms", "bs64 ms", "x faster"):
        table.add_column(header, justify="right" if header else "left", no_wrap=True)
    baseline = next((row for row in rows if row["name"] == "student"), {})
    base64 = baseline.get("latency_ms_bs64")

    def number(value: float | None, text: str) -> str:
        return "-" if value is None else text.format(value)

    for row in rows:
        bs64 = row.get("latency_ms_bs64")
        table.add_row(
            row["name"],
            number(row.get("test_acc"), "{:.2%}"),
            number(row["bytes"] / 1024 if row.get("bytes") else None, "{:.1f} KiB"),
            number(row.get("latency_ms_bs1"), "{:.3g}"),
            number(bs64, "{:.3g}"),
            number(base64 / bs64 if base64 and bs64 else None, "{:.1f}x"),
        )
    console.print(table)
