"""`report.md`: the runs' table rounded for reading, the charts, and every run that failed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from distill.sweep_report.charts import CHARTS
from distill.sweep_report.runs import FAILED, FINISHED, INTERRUPTED, NO_SUMMARY


def render_markdown(
    rows: Sequence[dict[str, Any]], artifact: str | None, root: str, common: Sequence[str]
) -> str:
    """The report's text; `root` is the folder searched, `common` the overrides all runs share."""
    counts = {
        status: sum(row["status"] == status for row in rows)
        for status in (FINISHED, FAILED, INTERRUPTED, NO_SUMMARY)
    }
    name = artifact or "-"
    lines = [
        f"# Sweep report: {root}",
        "",
        f"{len(rows)} run{'' if len(rows) == 1 else 's'}: {counts[FINISHED]} finished, "
        f"{counts[FAILED]} failed, "
        + (f"{counts[INTERRUPTED]} interrupted, " if counts[INTERRUPTED] else "")
        + f"{counts[NO_SUMMARY]} without a summary (running or killed).",
        "",
    ]
    if common:
        lines += [f"Every run: `{' '.join(common)}`", ""]
    lines += [
        f"Artifact: `{name}` (size, test accuracy and median latency at batch 64 of that file, "
        "as its run measured them; choose another with `--artifact`).",
        "",
    ]
    # Runs trained with baseline=true also show the labels-only student and the KD gain.
    gains = any(row["labels_only_acc"] is not None for row in rows)
    header = (
        "run",
        "status",
        "teacher acc %",
        "student acc %",
        *(("labels only %", "KD gain pts") if gains else ()),
        "sparsity %",
        f"{name} KiB",
        f"{name} acc %",
        f"{name} bs64 ms",
        "Pareto",
        "dir",
    )
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|:--|:--|" + "--:|" * (len(header) - 4) + ":--|:--|")
    for row in rows:
        cells = (
            _cell(row["label"]),
            row["status"],
            _pct(row["teacher_acc"]),
            _pct(row["student_acc"]),
            *((_pct(row["labels_only_acc"]), _points(row["kd_gain"])) if gains else ()),
            _pct(row["sparsity"], 1),
            _kib(row["artifact_bytes"]),
            _pct(row["artifact_acc"]),
            _ms(row["artifact_latency_ms_bs64"]),
            _front(row),
            f"`{_cell(row['run_dir'])}`",
        )
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Pareto: `size` / `latency` marks a run no other finished run beats on both "
        f"{name} accuracy and size (latency): as accurate or more, as small (fast) or more, "
        'better in one. "-": not measured.',
        "",
    ]
    lines += [f"![{chart}]({chart})" for chart in CHARTS] + [""]
    failed = [row for row in rows if row["status"] == FAILED]
    if failed:
        lines += ["## Failed runs", ""]
        for row in failed:
            lines += [
                f"### `{row['run_dir']}`: {_cell(row['label'])}",
                "",
                *_block(row["error"]),
                "",
            ]
    interrupted = [row for row in rows if row["status"] == INTERRUPTED]
    if interrupted:
        lines += ["## Interrupted runs", ""]
        lines += [f"- `{row['run_dir']}`: {_cell(row['error'])}" for row in interrupted]
        lines.append("")
    waiting = [row for row in rows if row["status"] == NO_SUMMARY]
    if waiting:
        lines += ["## Runs without a summary", ""]
        lines += [f"- `{row['run_dir']}`: {_cell(row['label'])}: {NO_SUMMARY}" for row in waiting]
        lines.append("")
    return "\n".join(lines)


def _front(row: dict[str, Any]) -> str:
    return ", ".join(
        name
        for name, flag in (("size", "pareto_bytes"), ("latency", "pareto_latency"))
        if row[flag]
    )


def _block(text: str | None) -> list[str]:
    """`text` in a code fence longer than any run of backticks inside it."""
    text = text or ""
    fence = "```"
    while fence in text:
        fence += "`"
    return [fence, text, fence]


def _pct(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}"


def _points(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.2f}"


def _kib(value: float | None) -> str:
    return "-" if value is None else f"{value / 1024:,.1f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _cell(text: Any) -> str:
    """Table-cell text: a pipe would split the cell, a newline the row."""
    return "-" if text is None else str(text).replace("|", "\\|").replace("\n", " ")
