"""`distill-report SWEEP_DIR`: one report of every distill-train run under a folder.

    distill-report outputs/multirun/2026-12-02_21-28-23-743244
    distill-report outputs --artifact onnx_fp32 --out /tmp/report

Writes report.md, report.csv, accuracy_vs_bytes.png and accuracy_vs_latency.png into SWEEP_DIR
(or --out): a row per run with its overrides, accuracies, sparsity and one artifact's size,
accuracy and latency, the Pareto front, and each failed run with its error.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger("distill")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="distill-report",
        description="Tabulate and chart every distill-train run under a folder (a Hydra sweep).",
    )
    parser.add_argument("sweep_dir", type=Path, help="a folder with runs under it")
    parser.add_argument(
        "--out", type=Path, default=None, help="where to write the report (default: SWEEP_DIR)"
    )
    parser.add_argument(
        "--artifact",
        default=None,
        help="the artifact whose size, accuracy and latency are shown "
        "(default: onnx_int8, else onnx_fp32, else student)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from distill.errors import ConfigError
    from distill.sweep_report import FAILED, FINISHED, write_sweep_report

    try:
        report = write_sweep_report(args.sweep_dir, args.out, args.artifact)
    except ConfigError as error:
        log.error("distill-report: %s", error)
        return 2
    statuses = [run.status for run in report.runs]
    log.info(
        "%d runs (%d finished, %d failed), artifact %s: %s",
        len(statuses),
        statuses.count(FINISHED),
        statuses.count(FAILED),
        report.artifact or "none (no run finished)",
        ", ".join(str(path) for path in report.files),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
