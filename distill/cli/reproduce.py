"""`distill-reproduce NAME [--quick] [overrides...]`: run a recipe, check its expected numbers.

    distill-reproduce default --quick        # an install check, under a minute on 2 cores
    distill-reproduce mnist1d_kd             # the full recipe, as recorded
    distill-reproduce path/to/my_recipe.yaml trainer=gpu

Prints a table (expected, obtained, tolerance, PASS/FAIL per metric), writes it as
reproduce.json and reproduce.md in the run directory, and exits 0 on PASS, 1 on any FAIL,
2 when the recipe is refused before training, 130 when Ctrl+C stopped the run (no verdict; the
run directory is left resumable).
"""

from __future__ import annotations

import argparse
import logging
import sys

log = logging.getLogger("distill")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="distill-reproduce",
        description="Run a recipe of recipes/ and check the numbers it records.",
    )
    parser.add_argument("recipe", help="a recipe name (recipes/NAME.yaml) or a path to one")
    parser.add_argument(
        "--quick", action="store_true", help="the recipe's short variant, with its own numbers"
    )
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides for the run, e.g. paths.log_dir=/tmp/x"
    )
    # Overrides may come before or after --quick.
    return parser.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # Imported here so that --help answers without loading torch.
    from distill.errors import ConfigError
    from distill.interruption import RunInterrupted
    from distill.reproduce import markdown
    from distill.reproduce_run import reproduce

    try:
        result = reproduce(args.recipe, args.quick, args.overrides)
    except ConfigError as error:
        log.error("Configuration error: %s", error)
        return 2
    except RunInterrupted as interrupted:  # Ctrl+C: said where the run stopped; no verdict
        return interrupted.exit_status
    print(markdown(result))
    return 0 if result["verdict"] == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
