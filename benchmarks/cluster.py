"""Sweeps and data parallelism, measured side by side on this machine (ratios, not times).

    python benchmarks/cluster.py sweep     # 4-point sparsity sweep: teacher once vs per job
    python benchmarks/cluster.py ddp       # Lightning DDP, 2 CPU processes vs 1 process

`sweep` runs the same Hydra multirun twice (basic launcher, one job after another): once with a
teacher cache per job (every job trains its teacher, as a sweep without a shared cache does),
once after `distill-teacher` trained the teacher up front into one shared cache. `ddp` fits the
default recipe with one process on 2 threads and with `trainer=ddp` (2 processes on 1 thread
each, gloo), alternating, and compares training throughput (examples per second of fit).
Everything runs as `distill-train` subprocesses, as a user would run it.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import print_table

QUIET = ["logger=none", "~callbacks.progress_bar", "trainer.enable_progress_bar=false"]
SPARSITIES = "0.3,0.5,0.7,0.9"


def distill(command: str, *overrides: str) -> float:
    """Seconds of one `python -m distill.cli.<command>` process."""
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", f"distill.cli.{command}", *overrides],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def sweep(root: Path) -> None:
    base = ["recipe=default", "export=false", *QUIET, f"paths.log_dir={root / 'logs'}"]
    # Hydra takes -m before the overrides.
    sweep_overrides = [f"pruning.schedule.final_sparsity={SPARSITIES}"]
    per_job = distill(
        "train",
        "-m",
        *base,
        *sweep_overrides,
        # One teacher cache per job: each of the 4 jobs trains the teacher.
        f"paths.cache_dir={root / 'per_job'}/${{hydra:job.num}}",
    )
    shared = root / "shared"
    teacher = distill("teacher", *base, f"paths.cache_dir={shared}")
    jobs = distill("train", "-m", *base, *sweep_overrides, f"paths.cache_dir={shared}")
    print_table(
        "4-point sparsity sweep of the default recipe (export off), wall time",
        ["variant", "seconds", "ratio"],
        [
            ["a teacher per job", per_job, 1.0],
            [
                f"distill-teacher once ({teacher:.0f} s) + 4 jobs",
                teacher + jobs,
                (teacher + jobs) / per_job,
            ],
        ],
    )


def ddp(root: Path, rounds: int = 2) -> None:
    base = [
        "recipe=default",
        "export=false",
        "trainer.max_epochs=10",
        *QUIET,
        f"paths.cache_dir={root / 'cache'}",
        # distill-teacher's own run directory, which would otherwise land in ./outputs.
        f"paths.log_dir={root / 'logs'}",
    ]
    distill("teacher", *base)  # the teacher is not part of what is measured
    variants = {
        "1 process, 2 threads": ["threads=2", "trainer=default"],
        "DDP: 2 processes, 1 thread each (gloo)": ["threads=1", "trainer=ddp"],
    }
    slugs = dict(zip(variants, ("single", "ddp"), strict=True))
    throughput: dict[str, list[float]] = {name: [] for name in variants}
    for index in range(rounds):
        for name, overrides in variants.items():
            run_dir = root / f"{slugs[name]}-{index}"
            distill("train", *base, *overrides, f"hydra.run.dir={run_dir}")
            summary = json.loads((run_dir / "summary.json").read_text())
            # MNIST-1D's 10,000 examples: 8,000 for training, 10% of them held out.
            examples = 7200 * summary["timing"]["epochs"]
            throughput[name].append(examples / summary["timing"]["fit_s"])
    medians = {name: statistics.median(values) for name, values in throughput.items()}
    single = medians["1 process, 2 threads"]
    print_table(
        f"Default recipe fit (10 epochs), 2 CPU cores, median of {rounds} alternating rounds",
        ["variant", "examples/s", "ratio"],
        [[name, value, value / single] for name, value in medians.items()],
    )


def main(argv: list[str]) -> None:
    jobs = {"sweep": sweep, "ddp": ddp}
    chosen = argv or list(jobs)
    unknown = [name for name in chosen if name not in jobs]
    if unknown:
        sys.exit(f"unknown benchmark {unknown}: choose from {sorted(jobs)}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in chosen:
            jobs[name](Path(tmp) / name)


if __name__ == "__main__":
    main(sys.argv[1:])
