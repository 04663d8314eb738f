"""`search.png`: every finished trial's objective against its budget number, the budget drawn
as a line, trials within and over it told apart, the best one marked. The chart a user reads
first: where the budget cuts, and what it costs."""

from __future__ import annotations

import io
from typing import Any

FIGSIZE = (8.0, 5.5)
DPI = 100
_STYLES: dict[str, dict[str, Any]] = {
    "within": {"color": "tab:green", "label": "within budget", "zorder": 3},
    "over": {"color": "tab:gray", "label": "over budget", "zorder": 3},
}


def render_search_chart(result: dict[str, Any]) -> bytes | None:
    """PNG bytes, or None for a search without a budget (no second axis to draw)."""
    budget = result["budget"]
    if budget is None:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    rows = [
        row
        for row in result["trials"]
        if row["objective"] is not None and row["budget_value"] is not None
    ]
    for kind, style in _STYLES.items():
        chosen = [
            row for row in rows if (row["budget_value"] <= budget["max"]) == (kind == "within")
        ]
        if chosen:
            ax.scatter(
                [row["budget_value"] for row in chosen],
                [row["objective"] for row in chosen],
                **style,
            )
    for row in rows:
        ax.annotate(
            str(row["number"]),
            (row["budget_value"], row["objective"]),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=8,
        )
    best = result["best"] or result["closest"]
    if best is not None:
        marker = "best within budget" if result["best"] else "closest to the budget"
        ax.scatter(
            [best["budget_value"]],
            [best["objective"]],
            marker="*",
            s=250,
            color="tab:red",
            label=f"{marker} (trial {best['number']})",
            zorder=4,
        )
    ax.axvline(budget["max"], color="tab:red", linestyle="--", alpha=0.6, label="budget")
    ax.set_xlabel(budget["metric"])
    ax.set_ylabel(result["objective"])
    ax.set_title(f"{len(rows)} finished trials (numbers: trial)", fontsize=11)
    ax.grid(alpha=0.3)
    ax.margins(x=0.12, y=0.1)
    ax.legend(fontsize=8, loc="best")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()
