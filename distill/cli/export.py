"""`distill-export RUN_DIR`: the deployable artifacts of a finished `distill-train` run.

    distill-export outputs/2026-11-30/01-07-30-495746
    distill-export RUN_DIR --latency-repeats 50
    distill-export RUN_DIR --trust-targets my_pkg.models

Writes RUN_DIR/export/ (ONNX fp32 and int8, post-training baselines, the compressed student,
the ExecuTorch .pte files when executorch is installed and the run's export_executorch allows,
report.md/json/png) and lists each artifact in RUN_DIR/summary.json under `artifacts`.

A run directory may come from someone else: its config.yaml builds only targets under the
allowlist (distill.trust) plus the prefixes given here with --trust-targets; the run's own
`trusted_targets` is not read, or a run directory could trust code for itself.
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
    parser.add_argument(
        "--trust-targets",
        nargs="+",
        action="extend",
        default=[],
        metavar="PREFIX",
        help="module prefixes (my_pkg.models) whose classes and functions the run's config may "
        "build, beyond distill's own, torch.nn, torch.optim and Lightning's trainer, callbacks "
        "and file loggers; only for a run directory you trust",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # Imported here so that --help answers without loading torch.
    from distill.deploy.artifacts import describe, export_run
    from distill.errors import ConfigError, ExportError
    from distill.interruption import Interruption, RunInterrupted
    from distill.trust import EXPORT_COMMAND_LINE, check_prefixes, trusting

    if args.latency_repeats < 1:
        log.error("--latency-repeats=%d is not allowed: an integer >= 1", args.latency_repeats)
        return 2
    try:
        trusted = check_prefixes("--trust-targets", args.trust_targets)
        with (
            trusting(trusted, how_to_extend=EXPORT_COMMAND_LINE),
            Interruption().installed(slurm_requeue=False),
        ):
            entries = export_run(args.run_dir, latency_repeats=args.latency_repeats)
    except ConfigError as error:
        log.error("Configuration error: %s", error)
        return 2
    except ExportError as error:
        log.error("Export failed, nothing was written: %s", error)
        return 1
    except RunInterrupted as interrupted:
        # The files are made in a staging folder (removed on the way out) and summary.json is
        # written last: the same command redoes the export whole.
        log.error("Interrupted: the export is not done; run the same command again")
        return interrupted.exit_status
    log.info("%s", describe(entries))
    log.info("Report: %s", args.run_dir / "export" / "report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
