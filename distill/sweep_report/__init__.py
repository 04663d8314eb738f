"""The report of a folder of distill-train runs (a Hydra sweep, or any folder of them).

`write_sweep_report(folder)` finds every run under it, reads each one's summary.json (or the
error it stopped with), and writes `report.md`, `report.csv`, `accuracy_vs_bytes.png` and
`accuracy_vs_latency.png`: one row per run, one artifact's size, accuracy and latency, and the
Pareto front of accuracy against size and against latency. `distill-report` is its command.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from distill.errors import ConfigError
from distill.files import atomic_write
from distill.sweep_report.charts import render_charts
from distill.sweep_report.labels import common_overrides
from distill.sweep_report.markdown import render_markdown
from distill.sweep_report.pareto import front_steps, pareto_front
from distill.sweep_report.rows import artifact_names, build_rows, choose_artifact, to_csv
from distill.sweep_report.runs import FAILED, FINISHED, INTERRUPTED, NO_SUMMARY, Run, find_runs

REPORT_MD = "report.md"
REPORT_CSV = "report.csv"

__all__ = [
    "FAILED",
    "FINISHED",
    "INTERRUPTED",
    "NO_SUMMARY",
    "Run",
    "SweepReport",
    "artifact_names",
    "find_runs",
    "front_steps",
    "pareto_front",
    "write_sweep_report",
]


@dataclass(frozen=True)
class SweepReport:
    """What `write_sweep_report` wrote, and about which runs."""

    files: list[Path]
    runs: list[Run]
    artifact: str | None


def write_sweep_report(
    folder: str | Path, out_dir: str | Path | None = None, artifact: str | None = None
) -> SweepReport:
    """Report every run under `folder` into `out_dir` (default: `folder`).

    `artifact` names the artifact whose size, accuracy and latency are shown (default: the
    first of onnx_int8, onnx_fp32, student that a run has). Raises ConfigError, before writing
    anything, for a folder that is not one or holds no run, an `out_dir` that is a file, or an
    artifact no run's summary lists.
    """
    folder = Path(folder)
    out = Path(out_dir) if out_dir is not None else folder
    if not folder.is_dir():
        raise ConfigError("sweep_dir", str(folder), "an existing directory of distill-train runs")
    if out.exists() and not out.is_dir():
        raise ConfigError("--out", str(out), "a directory (it is a file)")
    runs = find_runs(folder)
    if not runs:
        raise ConfigError(
            "sweep_dir",
            str(folder),
            "a directory with runs under it (a run has summary.json or .hydra/); it has none",
        )
    chosen = choose_artifact(runs, artifact)
    rows = build_rows(runs, chosen)
    common = common_overrides([run.overrides for run in runs])
    # Everything is rendered before the first file is written.
    contents = {
        REPORT_MD: render_markdown(rows, chosen, str(folder), common).encode(),
        REPORT_CSV: to_csv(rows).encode(),
        **render_charts(rows, chosen),
    }
    files = [_write(out / name, data) for name, data in contents.items()]
    return SweepReport(files=files, runs=runs, artifact=chosen)


def _write(path: Path, data: bytes) -> Path:
    return atomic_write(path, lambda handle: handle.write(data))
