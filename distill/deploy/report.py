"""The side-by-side report of a run's deployable models: `report.md`, `report.png`, `report.json`.

The deploy step measures several models (teacher, dense student, compressed student, its ONNX
exports...) and hands one row per model to `write_report`. Every ratio is taken against one
baseline row, by default the dense fp32 student in torch eager, so "× smaller" and "× faster"
answer what compression and export bought over the model training produced, and
"speed-up / MACs ratio" says how much of the arithmetic removed showed up as latency.
The report ends with the artifact to ship, picked by a stated rule (`report_rows.RULE`).

`report.json` is the file later tools read, so it is written last: a run that failed while
writing the report leaves no `report.json` claiming it finished.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.deploy.report_chart import DPI, FIGSIZE, png_bytes, tradeoff_figure
from distill.deploy.report_rows import RULE, recommend, with_ratios
from distill.errors import ConfigError
from distill.files import atomic_write, atomic_write_json
from distill.summary import artifact
from distill.validate import is_int, require_choice, require_int, require_real

REPORT_MD = "report.md"
REPORT_JSON = "report.json"
REPORT_PNG = "report.png"

__all__ = ["DPI", "FIGSIZE", "Report", "build_report", "save_report", "write_report"]

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
_TEXT_FIELDS = ("runtime", "note", "precision")


@dataclass(frozen=True)
class Report:
    """The validated rows with their ratios, and the recommendation: what the three files say."""

    title: str
    baseline: str
    rows: list[dict[str, Any]]
    recommendation: dict[str, Any] | None
    machine: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "baseline": self.baseline,
            "machine": self.machine,
            "rows": self.rows,
            "recommendation": self.recommendation,
        }


def build_report(
    rows: Sequence[Mapping[str, Any]],
    baseline: str = "student",
    title: str = "",
    machine: Mapping[str, Any] | None = None,
) -> Report:
    """Validate `rows` (ConfigError) and derive what the report shows.

    Each row describes one measured model: `name` (unique), `runtime`, `test_acc` and
    `agreement` (fractions), `bytes`, `params`, `macs` (per example), `latency_ms_bs1`,
    `latency_ms_bs64`, and optionally `note`, `precision` (`fp32`, `int8`, ...) and
    `exported` (true for an artifact the export produced: the candidates to ship); any numeric
    field may be None (not measured). Other keys are kept as they are.

    Each row gets its ratios against the `baseline` row (`report_rows.with_ratios`: size,
    speed-up at batch 1 and 64, MACs ratio, speed-up / MACs ratio, accuracy delta), and the
    report the artifact to ship (`report_rows.recommend`). `machine` (the CPU and its int8
    instructions, `measure.machine_facts`) is shown as given.
    """
    clean = _validate(rows, baseline)
    if machine is not None and not isinstance(machine, Mapping):
        raise ConfigError("report.machine", machine, "a mapping of machine facts or None")
    report_rows = with_ratios(clean, baseline)
    return Report(
        title=str(title) if title else "Deployment report",
        baseline=baseline,
        rows=report_rows,
        recommendation=recommend(report_rows),
        machine=dict(machine) if machine is not None else None,
    )


def write_report(
    run_dir: str | Path,
    rows: Sequence[Mapping[str, Any]],
    baseline: str = "student",
    title: str = "",
    machine: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """`save_report(run_dir, build_report(rows, baseline, title, machine))`."""
    return save_report(run_dir, build_report(rows, baseline, title, machine))


def save_report(run_dir: str | Path, report: Report) -> dict[str, dict[str, Any]]:
    """Write `report.png`, `report.md` and `report.json` in `run_dir`; return their artifacts.

    Everything is rendered in memory before the first file is written; the files are then
    written atomically, the JSON last. The returned dict maps `report_md`, `report_json` and
    `report_png` to {"path": relative to `run_dir`, "bytes": size}.
    """
    run_dir = Path(run_dir)
    recommended = report.recommendation["artifact"] if report.recommendation else None
    png = png_bytes(tradeoff_figure(report.rows, report.baseline, recommended, report.title))
    markdown = _render_markdown(report)

    # A report.json from an earlier call would otherwise describe the new PNG and MD as finished
    # if writing them fails, so it goes before anything is replaced.
    with contextlib.suppress(FileNotFoundError):
        (run_dir / REPORT_JSON).unlink()
    png_path = atomic_write(run_dir / REPORT_PNG, lambda handle: handle.write(png))
    md_path = atomic_write(run_dir / REPORT_MD, lambda handle: handle.write(markdown.encode()))
    json_path = atomic_write_json(run_dir / REPORT_JSON, report.to_json())
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
        exported = row.get("exported")
        if exported is not None and not isinstance(exported, bool):
            raise ConfigError(f"rows[{name}].exported", exported, "true, false or None")
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


def _table(columns: Sequence[tuple[str, str]], body: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header for header, _ in columns) + " |"]
    lines.append("|" + "|".join(align for _, align in columns) + "|")
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return lines


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

# Latency toward the bound the arithmetic sets: speed-up next to the MACs ratio, per batch size.
_BOUND_COLUMNS = (
    ("model", ":--"),
    ("runtime", ":--"),
    ("MACs ratio (baseline / this)", "--:"),
    ("× faster bs1", "--:"),
    ("speed-up / MACs ratio bs1", "--:"),
    ("× faster bs64", "--:"),
    ("speed-up / MACs ratio bs64", "--:"),
)


def _render_markdown(report: Report) -> str:
    rows, baseline = report.rows, _cell(report.baseline)
    lines = [f"# {report.title}", ""]
    lines += _table(
        _COLUMNS,
        [
            (
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
            for row in rows
        ],
    )
    notes = [row for row in rows if row.get("note")]
    if notes:
        lines += ["", "Notes:", ""]
        lines += [f"- **{_cell(row['name'])}**: {_cell(row['note'])}" for row in notes]
    lines += ["", "## Latency toward the MACs bound", ""]
    lines += _table(
        _BOUND_COLUMNS,
        [
            (
                _cell(row["name"]),
                _cell(row["runtime"]),
                _times(row["macs_ratio"]),
                _times(row["speedup_bs1"]),
                _times(row["speedup_per_macs_ratio_bs1"]),
                _times(row["speedup_bs64"]),
                _times(row["speedup_per_macs_ratio_bs64"]),
            )
            for row in rows
        ],
    )
    lines += [
        "",
        f"MACs ratio = MACs per example of `{baseline}` / this model's (how much less "
        "arithmetic; precision does not change it, so an int8 file has the MACs of the graph it "
        f"was converted from). × faster bsN = latency of `{baseline}` / this model's, at batch "
        "N. speed-up / MACs ratio = × faster / MACs ratio: 1.00 means latency fell exactly as "
        "the arithmetic did; above 1, the runtime bought more than the arithmetic removed "
        "(onnxruntime's fused kernels over torch eager, int8 arithmetic); below 1, fixed "
        "per-call and per-operator costs kept latency from following the MACs.",
        "",
    ]
    lines += _render_recommendation(report)
    lines += [
        "",
        "## How it was measured",
        "",
        "Test accuracy is on the test split; agreement is the share of test "
        "examples whose top class matches the reference model that row was compared to. Size is "
        "the saved file in KiB (1024 bytes); MACs are per example. Latency is the median wall "
        "time of one call at batch size 1 and 64, repeated, on one thread (torch, onnxruntime "
        "and ExecuTorch alike) on this machine, so it compares these rows "
        "with each other, not with numbers from another machine. Ratios are against "
        f"`{baseline}`: × smaller = its size / the model's size, × faster = its latency "
        '/ the model\'s latency; "-" means not measured.',
        "",
        "The figure plots test accuracy against latency at batch 64 and against size, both on "
        f"log axes, the accuracy axis zoomed to the data; the star is `{baseline}`, the "
        "diamond the recommended artifact.",
        "",
        f"![test accuracy against latency at batch 64 and against size]({REPORT_PNG})",
        "",
    ]
    return "\n".join(lines)


def _render_recommendation(report: Report) -> list[str]:
    lines = ["## Recommendation", ""]
    recommendation = report.recommendation
    if recommendation is None:
        lines += [
            "None: no exported artifact has both a measured test accuracy and a latency at "
            "batch 64.",
            "",
        ]
    else:
        chosen = next(row for row in report.rows if row["name"] == recommendation["artifact"])
        where = f"`{_cell(chosen['path'])}`, " if chosen.get("path") else ""
        lines += [
            f"Ship **{_cell(chosen['name'])}** ({where}{_cell(chosen['runtime'])}).",
            "",
            f"Rule: {RULE}. A point is one percentage point of test accuracy; the candidates "
            "are the artifacts the export produced, not the baseline or the teacher.",
            "",
            f"Why: {_cell(recommendation['reason'])}",
            "",
        ]
    slower = recommendation["int8_slower_than_fp32"] if recommendation else []
    compared = _int8_rows_with_an_fp32_peer(report.rows)
    if slower:
        lines.append("int8 is slower than fp32 at batch 64 on this machine:")
        lines.append("")
        lines += [
            f"- **{_cell(item['int8'])}** {_ms(item['int8_latency_ms_bs64'])} ms against "
            f"**{_cell(item['fp32'])}** {_ms(item['fp32_latency_ms_bs64'])} ms in "
            f"{_cell(item['runtime'])} ({item['slowdown']:.2f}x slower)"
            for item in slower
        ]
        lines.append("")
    elif compared:
        lines += [
            "Every int8 artifact is faster at batch 64 than the fastest fp32 artifact of its "
            "runtime on this machine.",
            "",
        ]
    if report.machine is not None:
        lines.append(_machine_line(report.machine))
    return lines


def _int8_rows_with_an_fp32_peer(rows: Sequence[Mapping[str, Any]]) -> bool:
    runtimes = {row["runtime"] for row in rows if row.get("precision") == "fp32"}
    return any(row.get("precision") == "int8" and row["runtime"] in runtimes for row in rows)


def _machine_line(machine: Mapping[str, Any]) -> str:
    found = machine.get("int8_instructions")
    if found is None:
        instructions = "unknown (no /proc/cpuinfo)"
    elif found:
        instructions = ", ".join(str(flag) for flag in found)
    else:
        instructions = "none (no VNNI: int8 convolutions run on slower u8 x s8 paths)"
    cpu = _cell(machine.get("cpu") or "unknown CPU")
    return f"Machine: {cpu}; int8 dot-product instructions: {instructions}."
