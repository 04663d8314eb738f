"""The side-by-side report of a run's deployable models: `report.md`, `report.png`, `report.json`.

The deploy step measures several models (teacher, dense student, compressed student, its ONNX
exports...) and hands one row per model to `write_report`. Every ratio is taken against one
baseline row, by default the dense fp32 student in torch eager, so "× smaller" and "× faster"
answer what compression and export bought over the model training produced.

`report.json` is the file later tools read, so it is written last: a run that failed while
writing the report leaves no `report.json` claiming it finished.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from distill.errors import ConfigError
from distill.files import atomic_write, atomic_write_json
from distill.summary import artifact
from distill.validate import is_int, require_choice, require_int, require_real

REPORT_MD = "report.md"
REPORT_JSON = "report.json"
REPORT_PNG = "report.png"

# Figure size in inches at this dpi: 1200 x 400 px, three panels side by side. The PNG is saved
# without bbox_inches="tight" so its pixel size is fixed and tight_layout only moves the axes.
FIGSIZE = (12.0, 4.0)
DPI = 100

# Numeric row fields, each with the check it must pass and what the error says is allowed.
# Sizes and latencies must be positive because they are divided by and drawn on log axes.
_FRACTION = "a number in [0, 1] or None"
_FIELDS: dict[str, tuple[str, str]] = {
    "test_acc": ("fraction", _FRACTION),
    "agreement": ("fraction", _FRACTION),
    "bytes": ("positive_int", "a positive integer or None"),
    "params": ("count", "a non-negative integer or None"),
    "macs": ("non_negative", "a non-negative number or None"),
    "latency_ms_bs1": ("positive", "a positive number or None"),
    "latency_ms_bs64": ("positive", "a positive number or None"),
}
_TEXT_FIELDS = ("runtime", "note")


def write_report(
    run_dir: str | Path,
    rows: Sequence[Mapping[str, Any]],
    baseline: str = "student",
    title: str = "",
) -> dict[str, dict[str, Any]]:
    """Write `report.png`, `report.md` and `report.json` in `run_dir`; return their artifacts.

    Each row describes one measured model: `name` (unique), `runtime`, `test_acc` and
    `agreement` (fractions), `bytes`, `params`, `macs` (per example), `latency_ms_bs1`,
    `latency_ms_bs64` and an optional `note`; any numeric field may be None (not measured).
    Other keys are kept as they are in `report.json`.

    `report.json` holds every row plus its ratios against the `baseline` row: `size_ratio`
    (baseline bytes / row bytes), `speedup_bs1`, `speedup_bs64` (baseline latency / row latency)
    and `acc_delta_pts` (100 * (row acc - baseline acc)), None where either side is missing.

    Everything is validated (ConfigError) and rendered in memory before the first file is written;
    the files are then written atomically, the JSON last. The returned dict maps `report_md`,
    `report_json` and `report_png` to {"path": relative to `run_dir`, "bytes": size}.
    """
    run_dir = Path(run_dir)
    clean = _validate(rows, baseline)
    title = str(title) if title else "Deployment report"
    report_rows = _with_ratios(clean, baseline)
    png = _render_png(report_rows, baseline, title)
    markdown = _render_markdown(report_rows, baseline, title)
    payload = {"title": title, "baseline": baseline, "rows": report_rows}

    # A report.json from an earlier call would otherwise describe the new PNG and MD as finished
    # if writing them fails, so it goes before anything is replaced.
    with contextlib.suppress(FileNotFoundError):
        (run_dir / REPORT_JSON).unlink()
    png_path = atomic_write(run_dir / REPORT_PNG, lambda handle: handle.write(png))
    md_path = atomic_write(run_dir / REPORT_MD, lambda handle: handle.write(markdown.encode()))
    json_path = atomic_write_json(run_dir / REPORT_JSON, payload)
    return {
        "report_md": artifact(md_path, run_dir),
        "report_json": artifact(json_path, run_dir),
        "report_png": artifact(png_path, run_dir),
    }


def _validate(rows: Sequence[Mapping[str, Any]], baseline: str) -> list[dict[str, Any]]:
    """Check the rows and baseline; return plain-dict copies with plain int / float numbers."""
    if isinstance(rows, (str, bytes, Mapping)) or not isinstance(rows, Sequence) or not rows:
        raise ConfigError("report.rows", rows, "a non-empty sequence of row mappings")
    clean: list[dict[str, Any]] = []
    names: list[str] = []
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ConfigError(f"rows[{index}]", type(row).__name__, "a mapping of row fields")
        name = row.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"rows[{index}].name", name, "a non-empty string")
        if name in names:
            raise ConfigError(f"rows[{index}].name", name, "a name no other row uses")
        names.append(name)
        out = dict(row)
        for field, (kind, allowed) in _FIELDS.items():
            out[field] = _number(row.get(field), kind, f"rows[{name}].{field}", allowed)
        for field in _TEXT_FIELDS:
            value = row.get(field)
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"rows[{name}].{field}", value, "a string or None")
        out["runtime"] = row.get("runtime")
        clean.append(out)
    require_choice("report.baseline", baseline, names, allowed=f"one of {', '.join(names)}")
    return clean


def _number(value: Any, kind: str, field: str, allowed: str) -> int | float | None:
    """`value` as a plain int or float (numpy scalars included), or ConfigError."""
    if value is None:
        return None
    if kind == "positive_int":
        return require_int(field, value, minimum=1, allowed=allowed)
    if kind == "count":
        return require_int(field, value, minimum=0, allowed=allowed)
    minimum, maximum, min_inclusive = {
        "fraction": (0.0, 1.0, True),
        "non_negative": (0.0, None, True),
        "positive": (0.0, None, False),
    }[kind]
    number = require_real(
        field, value, minimum, maximum, min_inclusive=min_inclusive, allowed=allowed
    )
    # An integral measurement (macs=1200) stays an int in report.json.
    return int(value) if is_int(value) else number


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None:
        return None
    return numerator / denominator


def _with_ratios(rows: list[dict[str, Any]], baseline: str) -> list[dict[str, Any]]:
    """Each row plus its ratios against the baseline row (None where either side is missing)."""
    base = next(row for row in rows if row["name"] == baseline)
    out = []
    for row in rows:
        acc, base_acc = row["test_acc"], base["test_acc"]
        out.append(
            {
                **row,
                "size_ratio": _ratio(base["bytes"], row["bytes"]),
                "speedup_bs1": _ratio(base["latency_ms_bs1"], row["latency_ms_bs1"]),
                "speedup_bs64": _ratio(base["latency_ms_bs64"], row["latency_ms_bs64"]),
                "acc_delta_pts": (
                    None if acc is None or base_acc is None else 100.0 * (acc - base_acc)
                ),
            }
        )
    return out


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _kib(value: int | None) -> str:
    return "-" if value is None else f"{value / 1024:,.1f}"


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _count(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _ms(value: float | None) -> str:
    # Sub-millisecond latencies (a tiny model at batch 1) need the third decimal.
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 1 else f"{value:.2f}"


def _cell(text: Any) -> str:
    """A value as table-cell text: a pipe would split the cell, a newline the row."""
    return "-" if text is None else str(text).replace("|", "\\|").replace("\n", " ")


_COLUMNS = (
    ("model", ":--"),
    ("runtime", ":--"),
    ("test acc %", "--:"),
    ("agreement %", "--:"),
    ("size (KiB)", "--:"),
    ("× smaller", "--:"),
    ("params", "--:"),
    ("MACs", "--:"),
    ("latency bs1 (ms)", "--:"),
    ("latency bs64 (ms)", "--:"),
    ("× faster bs64", "--:"),
)


def _render_markdown(rows: list[dict[str, Any]], baseline: str, title: str) -> str:
    lines = [f"# {title}", ""]
    lines.append("| " + " | ".join(header for header, _ in _COLUMNS) + " |")
    lines.append("|" + "|".join(align for _, align in _COLUMNS) + "|")
    for row in rows:
        cells = (
            _cell(row["name"]),
            _cell(row["runtime"]),
            _pct(row["test_acc"]),
            _pct(row["agreement"]),
            _kib(row["bytes"]),
            _times(row["size_ratio"]),
            _count(row["params"]),
            _count(row["macs"]),
            _ms(row["latency_ms_bs1"]),
            _ms(row["latency_ms_bs64"]),
            _times(row["speedup_bs64"]),
        )
        lines.append("| " + " | ".join(cells) + " |")
    notes = [row for row in rows if row.get("note")]
    if notes:
        lines += ["", "Notes:", ""]
        lines += [f"- **{_cell(row['name'])}**: {_cell(row['note'])}" for row in notes]
    lines += [
        "",
        "How it was measured: test accuracy is on the test split; agreement is the share of test "
        "examples whose top class matches the reference model that row was compared to. Size is "
        "the saved file in KiB (1024 bytes); MACs are per example. Latency is the median wall "
        "time of one call at batch size 1 and 64, repeated, on one thread (torch, onnxruntime "
        "and ExecuTorch alike) on this machine, so it compares these rows "
        "with each other, not with numbers from another machine. Ratios are against "
        f"`{_cell(baseline)}`: × smaller = its size / the model's size, × faster = its latency "
        '/ the model\'s latency; "-" means not measured.',
        "",
        f"![accuracy, size and latency per model]({REPORT_PNG})",
        "",
    ]
    return "\n".join(lines)


# (row key, panel title, scale to display units, log axis, label format)
_PANELS = (
    ("test_acc", "test accuracy (%)", 100.0, False, "{:.2f}"),
    ("bytes", "size (KiB, log)", 1 / 1024, True, "{:,.1f}"),
    ("latency_ms_bs64", "latency at batch 64 (ms, log)", 1.0, True, "{:.3g}"),
)


def _render_png(rows: list[dict[str, Any]], baseline: str, title: str) -> bytes:
    """The three bar panels as PNG bytes; drawn on a private Figure so no global state changes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    figure = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(_PANELS))
    for ax, (key, panel_title, scale, log, fmt) in zip(axes, _PANELS, strict=True):
        shown = [row for row in rows if row[key] is not None]
        ax.set_title(panel_title, fontsize=10)
        if not shown:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        values = [row[key] * scale for row in shown]
        # The baseline stands out, so the bars read as "compared with this one".
        colors = ["tab:orange" if row["name"] == baseline else "tab:blue" for row in shown]
        positions = range(len(shown))
        bars = ax.barh(positions, values, color=colors)
        ax.set_yticks(list(positions), [row["name"] for row in shown], fontsize=9)
        ax.invert_yaxis()  # first row on top, as in the table
        ax.bar_label(bars, labels=[fmt.format(v) for v in values], padding=3, fontsize=8)
        ax.tick_params(axis="x", labelsize=8)
        # Room to the right of the longest bar for its label.
        if log:
            ax.set_xscale("log")
            ax.set_xlim(min(values) / 2, max(values) * 4)
            # A narrow log range gets a label at every minor tick; they overlap.
            ax.xaxis.set_minor_formatter(NullFormatter())
        else:
            ax.set_xlim(0, max(values) * 1.2 or 1.0)  # all-zero values
    figure.suptitle(f"{title}  (orange: the baseline, {baseline})", fontsize=11)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()
