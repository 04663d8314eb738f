"""`distill-export RUN_DIR`: the deployable artifacts of a finished `distill-train` run.

    distill-export outputs/2026-11-30/01-07-30-495746
    distill-export RUN_DIR --latency-repeats 50

Writes RUN_DIR/export/ (ONNX fp32 and int8, post-training baselines, the compressed student,
report.md/json/png) and lists each artifact in RUN_DIR/summary.json under `artifacts`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger("distill")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="distill-export",
        description="Export, check and measure the deployable artifacts of a distill-train run.",
    )
    parser.add_argument("run_dir", type=Path, help="the run's directory (holds summary.json)")
    parser.add_argument(
        "--latency-repeats",
        type=int,
        default=20,
        help="latency is the median of this many runs at batch 64 (5x as many at batch 1)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # Imported here so that --help answers without loading torch.
    from distill.deploy.artifacts import describe, export_run
    from distill.errors import ConfigError, ExportError

    if args.latency_repeats < 1:
        log.error("--latency-repeats=%d is not allowed: an integer >= 1", args.latency_repeats)
        return 2
    try:
        entries = export_run(args.run_dir, latency_repeats=args.latency_repeats)
    except ConfigError as error:
        log.error("Configuration error: %s", error)
        return 2
    except ExportError as error:
        log.error("Export failed, nothing was written: %s", error)
        return 1
    log.info("%s", describe(entries))
    log.info("Report: %s", args.run_dir / "export" / "report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
