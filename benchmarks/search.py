"""distill-search on the default recipe: trials per hour, and what the search found against the
default recipe's own artifact (its trial 0, the config without the search).

    python benchmarks/search.py                  # 8 trials of conf/search/compress_under_budget
    python benchmarks/search.py --trials 12 search.budget.max=2600

The teacher is trained first by distill-teacher (a search never trains it per trial), so the
rate is that of trials alone. Everything runs as a user would: one `distill-search` process.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import print_table

QUIET = ["logger=none", "~callbacks.progress_bar", "trainer.enable_progress_bar=false"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("overrides", nargs="*", help="more distill-search overrides")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        common = [
            "recipe=default",
            *QUIET,
            f"paths.cache_dir={root / 'cache'}",
            f"paths.log_dir={root / 'logs'}",  # distill-teacher's run dir, not ./outputs
        ]
        subprocess.run(
            [sys.executable, "-m", "distill.cli.teacher", *common],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        started = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "distill.cli.search",
                *common,
                f"search.dir={root / 'search'}",
                f"search.n_trials={args.trials}",
                *args.overrides,
            ],
            check=True,
        )
        hours = (time.perf_counter() - started) / 3600
        result = json.loads((root / "search" / "search.json").read_text())
        report(result, hours, root / "search")


def report(result: dict, hours: float, search_dir: Path) -> None:
    trials = result["trials"]
    print_table(
        f"distill-search, default recipe, {len(trials)} trials",
        ["trials", "hours", "trials per hour", "verdict"],
        [[len(trials), hours, len(trials) / hours, result["verdict"]]],
    )
    base, chosen = result["base"], result["best"] or result["closest"]
    if base is None or chosen is None:
        return
    rows = []
    for label, row in (("default recipe (trial 0)", base), ("search's pick", chosen)):
        summary = json.loads((search_dir / row["run_dir"] / "summary.json").read_text())
        int8 = summary["artifacts"]["onnx_int8"]
        rows.append(
            [
                f"{label}: trial {row['number']}",
                int8["test_acc"],
                summary["artifacts"]["compressed"]["bytes"],
                int8["bytes"],
                int8["latency_ms_bs64"],
                summary["artifacts"]["slim"]["params"],
            ]
        )
    ratios = [pick / default for default, pick in zip(rows[0][1:], rows[1][1:], strict=True)]
    rows.append(["ratio (pick / default)", *ratios])
    budget = result["budget"]
    print_table(
        f"the pick against the default recipe (budget: {budget['metric']} <= {budget['max']})",
        ["run", "int8 acc", "compressed B", "onnx_int8 B", "int8 bs64 ms", "slim params"],
        rows,
    )
    for row in trials:
        print(f"trial {row['number']}: {row['status']}: {' '.join(row['overrides'])}")


if __name__ == "__main__":
    main()
