"""The sweep's charts: an artifact's accuracy against its size and against its latency, with
the Pareto front drawn as a step line."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from distill.sweep_report.pareto import front_steps

FIGSIZE = (8.0, 5.5)
DPI = 100
# A cost axis spanning more than this ratio is drawn on a log scale.
LOG_RATIO = 20.0
# A point whose label (its differing overrides) is longer is labeled by its run directory
# instead: report.md pairs the two. Longer labels run off the chart and over each other.
MAX_LABEL = 40
# (row cost key, Pareto flag, axis title, scale to display units)
CHARTS = {
    "accuracy_vs_bytes.png": ("artifact_bytes", "pareto_bytes", "size (KiB)", 1 / 1024),
    "accuracy_vs_latency.png": (
        "artifact_latency_ms_bs64",
        "pareto_latency",
        "latency at batch 64 (ms, median)",
        1.0,
    ),
}

_DOMINATED: dict[str, Any] = {"color": "tab:blue", "label": "dominated", "zorder": 3}
_FRONT: dict[str, Any] = {"color": "tab:red", "s": 60, "label": "Pareto front", "zorder": 4}


def render_charts(rows: Sequence[dict[str, Any]], artifact: str | None) -> dict[str, bytes]:
    """Each chart's file name and PNG bytes."""
    return {
        name: _render(rows, artifact, cost, flag, axis, scale)
        for name, (cost, flag, axis, scale) in CHARTS.items()
    }


def _render(
    rows: Sequence[dict[str, Any]],
    artifact: str | None,
    cost: str,
    flag: str,
    axis: str,
    scale: float,
) -> bytes:
    # A private Figure on the Agg canvas: no pyplot, no display, no global state changed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    shown = [row for row in rows if row["artifact_acc"] is not None and row[cost] is not None]
    name = artifact or "no artifact"
    ax.set_title(f"{name}: test accuracy against {axis.split(' (')[0]}", fontsize=11)
    if not shown:
        ax.text(
            0.5,
            0.5,
            f"no finished run has {name} {axis.split(' (')[0]} and accuracy",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
        ax.set_xticks([])
        ax.set_yticks([])
    else:
        points = [(row["artifact_acc"] * 100, row[cost] * scale) for row in shown]
        flags = [bool(row[flag]) for row in shown]
        for on_front, style in ((False, _DOMINATED), (True, _FRONT)):
            chosen = [point for point, f in zip(points, flags, strict=True) if f == on_front]
            if chosen:  # an empty scatter would still put its label in the legend
                ax.scatter([c for _, c in chosen], [a for a, _ in chosen], **style)
        costs, accuracies = front_steps(points, flags)
        ax.step(costs, accuracies, where="post", color="tab:red", alpha=0.6, zorder=2)
        for (accuracy, x), row in zip(points, shown, strict=True):
            label = row["short_label"]
            ax.annotate(
                label if len(label) <= MAX_LABEL else row["run_dir"],
                (x, accuracy),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
            )
        values = [c for _, c in points]
        if min(values) > 0 and max(values) / min(values) > LOG_RATIO:
            ax.set_xscale("log")
        # Room at the edges for the labels of the outermost points.
        ax.margins(x=0.15, y=0.08)
        ax.set_xlabel(axis + (", log" if ax.get_xscale() == "log" else ""))
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()
