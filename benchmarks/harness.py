"""Side-by-side timing: variants measured interleaved in one run, reported as ratios.

These machines are shared and noisy, so absolute times mean little; alternating the variants
round by round exposes them to the same noise, and the median of each is compared.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence


def interleaved_medians(
    variants: Mapping[str, Callable[[], object]], rounds: int = 30, warmup: int = 3
) -> dict[str, float]:
    """Median seconds per call of each variant, calling them in turn each round."""
    for _ in range(warmup):
        for run in variants.values():
            run()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            started = time.perf_counter()
            run()
            samples[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in samples.items()}


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A Markdown table, so results paste into notes and READMEs as they are."""
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(_cell(value) for value in row) + " |")


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
