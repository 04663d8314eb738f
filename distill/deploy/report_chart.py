"""`report.png`: test accuracy against latency (batch 64) and against size, one point per model.

Two scatter panels side by side, both with a log x axis and the accuracy axis zoomed to the
data (bars from 0 to 100% made every artifact look the same). Each point carries its model's
name; the baseline is a star and the recommended artifact a ringed diamond. Drawn on a private
Agg `Figure` (no pyplot, no global state, no display needed); the same rows give the same bytes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.text import Annotation
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
from matplotlib.transforms import Bbox

# 1200 x 500 px at this dpi. The PNG is saved without bbox_inches="tight", so its pixel size
# is fixed and only the axes move.
FIGSIZE = (12.0, 5.0)
DPI = 100

# (row key, x axis label, scale to display units)
PANELS = (
    ("latency_ms_bs64", "latency at batch 64 (ms, log scale)", 1.0),
    ("bytes", "size (KiB, log scale)", 1 / 1024),
)
# Accuracy axis margin: a tenth of the data's span, at least half a point either side.
_Y_MARGIN_SHARE, _Y_MARGIN_MIN_PTS = 0.1, 0.5
# Log x axis room: left of the smallest value, and right of the largest for its label.
_X_ROOM_LEFT, _X_ROOM_RIGHT = 1.6, 3.0
# Where a label may go around its point, tried in order until one overlaps no marker and no
# label placed before it and stays inside the axes: (x, y) in marker radii plus a gap of
# `_GAP` points, and the text's alignment there. The last ones are further away and get a
# leader line to their point.
_GAP = 3.0
_CLEARANCE = 4.0  # points kept free around other points' markers
_NEAR_SPOTS = (
    ((1, 0), "left", "center"),
    ((-1, 0), "right", "center"),
    ((0, 1), "center", "bottom"),
    ((0, -1), "center", "top"),
    ((1, 1), "left", "bottom"),
    ((1, -1), "left", "top"),
    ((-1, 1), "right", "bottom"),
    ((-1, -1), "right", "top"),
)
_FAR_SPOTS = tuple(
    ((x, y), "left" if x > 0 else "right", "center")
    for y in (2, -2, 3, -3, 4, -4)
    for x in (1.5, -1.5)
)
_COLORS = {"baseline": "tab:orange", "recommended": "tab:green", "other": "tab:blue"}


def tradeoff_figure(
    rows: Sequence[dict[str, Any]], baseline: str, recommended: str | None, title: str
) -> Figure:
    """The two panels over `rows` (validated report rows); rows missing a panel's value are
    left out of that panel, and a panel with none says "not measured"."""
    figure = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(PANELS))
    shown_per_panel = []
    for ax, (key, xlabel, scale) in zip(axes, PANELS, strict=True):
        shown = [row for row in rows if row[key] is not None and row["test_acc"] is not None]
        shown_per_panel.append(shown)
        ax.set_xlabel(xlabel, fontsize=9)
        ax.set_ylabel("test accuracy (%)", fontsize=9)
        ax.set_title(f"accuracy vs {xlabel.split(' (')[0]}", fontsize=10)
        if not shown:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        _scatter(ax, shown, key, scale, baseline, recommended)
    figure.suptitle(title, fontsize=11)
    base = next((row for row in rows if row["name"] == baseline), {})
    described = ", ".join(str(base[key]) for key in ("precision", "runtime") if base.get(key))
    figure.legend(
        handles=_legend_handles(
            f"{baseline} ({described})" if described else baseline, recommended
        ),
        loc="lower center",
        ncol=3,
        fontsize=9,
        frameon=False,
    )
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    # Labels are placed once the layout is final: their room is measured in pixels.
    renderer = figure.canvas.get_renderer()  # type: ignore[attr-defined]
    for ax, (key, _, scale), shown in zip(axes, PANELS, shown_per_panel, strict=True):
        _label(ax, shown, key, scale, renderer, baseline, recommended)
    return figure


def png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _style(name: str, baseline: str, recommended: str | None) -> dict[str, Any]:
    """Scatter arguments for a point; `s` is the marker's area in points squared."""
    if name == baseline:
        return {"marker": "*", "s": 260, "color": _COLORS["baseline"], "zorder": 3}
    if name == recommended:
        return {"marker": "D", "s": 70, "color": _COLORS["recommended"], "zorder": 3}
    return {"marker": "o", "s": 40, "color": _COLORS["other"], "zorder": 2}


def _scatter(
    ax: Axes,
    shown: list[dict[str, Any]],
    key: str,
    scale: float,
    baseline: str,
    recommended: str | None,
) -> None:
    xs = [row[key] * scale for row in shown]
    ys = [100 * row["test_acc"] for row in shown]
    for row, x, y in zip(shown, xs, ys, strict=True):
        ax.scatter(
            [x],
            [y],
            edgecolors="black",
            linewidths=0.6,
            **_style(row["name"], baseline, recommended),
        )
    ax.set_xscale("log")
    ax.set_xlim(min(xs) / _X_ROOM_LEFT, max(xs) * _X_ROOM_RIGHT)
    # Plain numbers at 1, 2 and 5 of each decade: a report spans a decade or two, where
    # 10^-1 and 10^0 alone say little and labels at every minor tick overlap.
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    low, high = min(ys), max(ys)
    margin = max(_Y_MARGIN_SHARE * (high - low), _Y_MARGIN_MIN_PTS)
    ax.set_ylim(low - margin, high + margin)
    ax.tick_params(labelsize=8)
    ax.grid(True, which="major", linewidth=0.4, alpha=0.5)


def _label(
    ax: Axes,
    shown: list[dict[str, Any]],
    key: str,
    scale: float,
    renderer: Any,
    baseline: str,
    recommended: str | None,
) -> None:
    """One label per point, at the first spot that overlaps no marker and no earlier label,
    stays inside the axes and, without a leader line, is nearer its own point than any other
    (else the first spot): deterministic, and readable for the few rows a report has."""
    inside = ax.get_window_extent(renderer)
    points = [(row[key] * scale, 100 * row["test_acc"]) for row in shown]
    radii = [math.sqrt(_style(row["name"], baseline, recommended)["s"]) / 2 for row in shown]
    to_pixels = ax.figure.dpi / 72
    # Other points' markers, with room around them: a label right next to another point's
    # marker reads as that point's.
    markers: list[Bbox] = []
    centers = [tuple(ax.transData.transform(point)) for point in points]
    for (x, y), radius in zip(centers, radii, strict=True):
        half = (radius + _CLEARANCE) * to_pixels
        markers.append(Bbox.from_extents(x - half, y - half, x + half, y + half))
    labels: list[Bbox] = []
    for index, (row, point, radius) in enumerate(zip(shown, points, radii, strict=True)):
        taken = labels + markers[:index] + markers[index + 1 :]
        near = _Nearness(centers[index], centers[:index] + centers[index + 1 :])
        chosen = _free_spot(ax, row["name"], point, radius, taken, near, inside, renderer)
        (direction, ha, va), leader, box = chosen or (_NEAR_SPOTS[0], False, None)
        label = _annotate(ax, row["name"], point, direction, radius, ha, va, leader)
        labels.append(box or label.get_window_extent(renderer))


_Spot = tuple[tuple[float, float], str, str]


@dataclass(frozen=True)
class _Nearness:
    """Pixel centers of a label's own point and of the others."""

    own: tuple[float, ...]
    others: list[tuple[float, ...]]

    def nearest_to_own(self, box: Bbox) -> bool:
        """Whether `box` is nearer its own point than any other point (by a clear margin, so a
        label between two points is not read as the other's)."""
        own = _distance(box, self.own)
        return all(_distance(box, other) > 1.5 * own for other in self.others)


def _distance(box: Bbox, center: tuple[float, ...]) -> float:
    x, y = center
    dx = max(box.x0 - x, 0.0, x - box.x1)
    dy = max(box.y0 - y, 0.0, y - box.y1)
    return math.hypot(dx, dy)


def _free_spot(
    ax: Axes,
    text: str,
    point: tuple[float, float],
    radius: float,
    taken: list[Bbox],
    near: _Nearness,
    inside: Bbox,
    renderer: Any,
) -> tuple[_Spot, bool, Bbox] | None:
    """The first spot (near ones first) where the label fits: (spot, leader line, its box)."""
    spots = [(spot, False) for spot in _NEAR_SPOTS] + [(spot, True) for spot in _FAR_SPOTS]
    for (direction, ha, va), leader in spots:
        # Measured without its leader line: an annotation's extent includes the line.
        label = _annotate(ax, text, point, direction, radius, ha, va, False)
        box = label.get_window_extent(renderer)
        label.remove()
        fits = inside.contains(box.x0, box.y0) and inside.contains(box.x1, box.y1)
        clear = not any(box.overlaps(other) for other in taken)
        if fits and clear and (leader or near.nearest_to_own(box)):
            return (direction, ha, va), leader, box
    return None


def _annotate(
    ax: Axes,
    text: str,
    point: tuple[float, float],
    direction: tuple[float, float],
    radius: float,
    ha: str,
    va: str,
    leader: bool,
) -> Annotation:
    offset = (direction[0] * (radius + _GAP), direction[1] * (radius + _GAP))
    return ax.annotate(
        text,
        point,
        xytext=offset,
        textcoords="offset points",
        ha=ha,
        va=va,
        fontsize=8,
        arrowprops=(
            {"arrowstyle": "-", "color": "0.45", "linewidth": 0.6, "shrinkA": 1, "shrinkB": radius}
            if leader
            else None
        ),
    )


def _legend_handles(baseline: str, recommended: str | None) -> list[Line2D]:
    def handle(kind: str, marker: str, size: float, label: str) -> Line2D:
        return Line2D(
            [],
            [],
            linestyle="none",
            marker=marker,
            markersize=size,
            markerfacecolor=_COLORS[kind],
            markeredgecolor="black",
            label=label,
        )

    handles = [handle("baseline", "*", 14, f"baseline: {baseline}")]
    if recommended is not None:
        handles.append(handle("recommended", "D", 8, f"recommended: {recommended}"))
    handles.append(handle("other", "o", 7, "other models"))
    return handles
