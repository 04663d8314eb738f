"""`distill-search [overrides...]`: the best compressed student under a budget (Optuna).

    distill-search                                         # conf/search/compress_under_budget
    distill-search search.budget.max=9000 search.n_trials=30
    distill-search data=digits teacher=cnn2d_digits student=mlp 'loss.kd.temperature=interval(1,8)'
    distill-search search.dir=outputs/search/2026-12-04_10-00-00-123456  # resume that search

Overrides are distill-train's (fixed in every trial), sweeps in Hydra's grammar (searched), and
`search.*` settings. Exit 0 when the search ran (whether or not a trial met the budget: see
search.md), 2 when it is refused before any trial, 128 + the signal when Ctrl+C or SIGTERM
stopped it (the same command resumes it, the stopped trial's point first).
"""

from __future__ import annotations

import argparse
import logging
import sys

log = logging.getLogger("distill")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="distill-search",
        description="Search distill-train settings with Optuna for the best student under a "
        "budget (conf/search/*.yaml).",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        help="distill-train overrides (fixed), sweeps such as 'loss.kd.weight=interval(0.1,0.9)' "
        "(searched), and search.* settings",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # Imported here so that --help answers without loading torch.
    from distill.errors import ConfigError
    from distill.interruption import RunInterrupted, signal_name
    from distill.recipe import check_recipe_overrides
    from distill.search import SEARCH_MD, run_search

    try:
        check_recipe_overrides(args.overrides)
        result = run_search(args.overrides)
    except ConfigError as error:
        log.error("distill-search: %s", error)
        return 2
    except RunInterrupted as interrupted:
        log.error(
            "distill-search: interrupted by %s; the same command resumes the search (with "
            "search.dir=<its directory> if that was not given)",
            signal_name(interrupted.signum),
        )
        return interrupted.exit_status
    log.info("%s: %s", result["verdict"], f"{result['search_dir']}/{SEARCH_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
