"""What the deploy report derives from its rows: ratios against the baseline, how far latency
followed the arithmetic (speed-up / MACs ratio), and which artifact to ship.

Pure functions over validated row dicts (`report.py` checks them), written over whatever rows
there are: a row of a new runtime gets its ratios and competes for the recommendation as soon
as it is in the list, with no name known here. Two optional row fields steer the rule:
`exported` (true for an artifact the export produced, the candidates to ship) and `precision`
(`fp32`, `int8`, ...: int8 rows are compared with the fastest fp32 row of their runtime).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# A candidate may be this many points of test accuracy below the best exported artifact.
ACC_TOLERANCE_PTS = 1.0
RULE = (
    "ship the fastest exported artifact at batch 64 whose test accuracy is within "
    f"{ACC_TOLERANCE_PTS:g} point of the best exported artifact's; on a tie in latency the "
    "smaller file, then the earlier row"
)
# Eligible artifacts at most this share slower than the chosen one are named in the reason:
# latency medians on a shared machine move by about this much between runs.
NEAR_TIE_SHARE = 0.1
# Points are compared after rounding, so 0.95 - 0.94 (1.0000000000000009 points) is 1 point.
_POINTS_DIGITS = 9


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator; None where either is missing or the denominator is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def with_ratios(rows: Sequence[dict[str, Any]], baseline: str) -> list[dict[str, Any]]:
    """Each row plus its ratios against the `baseline` row (None where either side is missing):

    - `size_ratio`: baseline bytes / row bytes ("× smaller");
    - `speedup_bs1`, `speedup_bs64`: baseline latency / row latency at batch 1 and 64;
    - `macs_ratio`: baseline MACs / row MACs (how much less arithmetic per example);
    - `speedup_per_macs_ratio_bs1`, `..._bs64`: speed-up / MACs ratio. 1.0: latency fell
      exactly as the arithmetic did; above 1 the runtime or its kernels bought more (operator
      fusion, int8 arithmetic); below 1 per-call and per-op overhead kept latency up;
    - `acc_delta_pts`: 100 * (row accuracy - baseline accuracy).
    """
    base = next(row for row in rows if row["name"] == baseline)
    out = []
    for row in rows:
        speedup_bs1 = ratio(base["latency_ms_bs1"], row["latency_ms_bs1"])
        speedup_bs64 = ratio(base["latency_ms_bs64"], row["latency_ms_bs64"])
        macs_ratio = ratio(base["macs"], row["macs"])
        acc, base_acc = row["test_acc"], base["test_acc"]
        out.append(
            {
                **row,
                "size_ratio": ratio(base["bytes"], row["bytes"]),
                "speedup_bs1": speedup_bs1,
                "speedup_bs64": speedup_bs64,
                "macs_ratio": macs_ratio,
                "speedup_per_macs_ratio_bs1": ratio(speedup_bs1, macs_ratio),
                "speedup_per_macs_ratio_bs64": ratio(speedup_bs64, macs_ratio),
                "acc_delta_pts": (
                    None if acc is None or base_acc is None else 100.0 * (acc - base_acc)
                ),
            }
        )
    return out


def _points(fraction: float) -> float:
    return round(100.0 * fraction, _POINTS_DIGITS)


def _size_key(row: dict[str, Any]) -> float:
    return float("inf") if row["bytes"] is None else row["bytes"]


def int8_slower_than_fp32(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every `precision: int8` row slower at batch 64 than the fastest `precision: fp32` row of
    the same runtime (a runtime question, so torch eager rows are not held against
    onnxruntime's): `int8`, `fp32` (names), `runtime`, both latencies and `slowdown`
    (int8 latency / fp32 latency)."""
    found = []
    for row in rows:
        if row.get("precision") != "int8" or row["latency_ms_bs64"] is None:
            continue
        fp32 = [
            other
            for other in rows
            if other.get("precision") == "fp32"
            and other["runtime"] == row["runtime"]
            and other["latency_ms_bs64"] is not None
        ]
        if not fp32:
            continue
        fastest = min(fp32, key=lambda other: other["latency_ms_bs64"])
        if row["latency_ms_bs64"] > fastest["latency_ms_bs64"]:
            found.append(
                {
                    "int8": row["name"],
                    "fp32": fastest["name"],
                    "runtime": row["runtime"],
                    "int8_latency_ms_bs64": row["latency_ms_bs64"],
                    "fp32_latency_ms_bs64": fastest["latency_ms_bs64"],
                    "slowdown": row["latency_ms_bs64"] / fastest["latency_ms_bs64"],
                }
            )
    return found


def recommend(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The artifact to ship, by `RULE`, or None when no exported row has both a test accuracy
    and a latency at batch 64.

    Candidates are the rows with `exported` true. Returns `artifact` (its name), `reason` (one
    sentence with the numbers), `rule`, `eligible` (the candidates within the accuracy
    tolerance, in row order) and `int8_slower_than_fp32` (see that function), so a reader
    is told when int8 is not the faster file on this machine.
    """
    candidates = [
        row
        for row in rows
        if row.get("exported")
        and row["test_acc"] is not None
        and row["latency_ms_bs64"] is not None
    ]
    if not candidates:
        return None
    best = max(candidates, key=lambda row: row["test_acc"])  # the first of equals
    eligible = [
        row
        for row in candidates
        if _points(best["test_acc"] - row["test_acc"]) <= ACC_TOLERANCE_PTS
    ]
    # min keeps the first of equal keys: row order breaks a tie in latency and bytes.
    chosen = min(eligible, key=lambda row: (row["latency_ms_bs64"], _size_key(row)))
    slower = int8_slower_than_fp32(rows)
    return {
        "artifact": chosen["name"],
        "reason": _reason(chosen, best, candidates, eligible, slower),
        "rule": RULE,
        "eligible": [row["name"] for row in eligible],
        "int8_slower_than_fp32": slower,
    }


def _artifacts(count: int) -> str:
    return "1 exported artifact" if count == 1 else f"{count} exported artifacts"


def _ms(value: float) -> str:
    return f"{value:.3g} ms"


def _reason(
    chosen: dict[str, Any],
    best: dict[str, Any],
    candidates: list[dict[str, Any]],
    eligible: list[dict[str, Any]],
    slower: list[dict[str, Any]],
) -> str:
    latency = chosen["latency_ms_bs64"]
    speedup = chosen.get("speedup_bs64")
    versus = f", {speedup:.2f}x the baseline" if speedup is not None else ""
    parts = [
        f"{chosen['name']} is the fastest at batch 64 ({_ms(latency)}{versus}) of the "
        f"{_artifacts(len(eligible))} within {ACC_TOLERANCE_PTS:g} point of the best "
        f"exported accuracy ({100 * best['test_acc']:.2f}%, {best['name']}); its accuracy is "
        f"{100 * chosen['test_acc']:.2f}%"
    ]
    tied = [row for row in eligible if row is not chosen and row["latency_ms_bs64"] == latency]
    if tied:
        smaller = [_size_key(chosen) < _size_key(row) for row in tied]
        why = (
            "it is the smaller file"
            if all(smaller)
            else "it comes first in the table"
            if not any(smaller)
            else "it is the smaller file, or the earlier row of equal size"
        )
        parts.append(f"tied in latency with {', '.join(row['name'] for row in tied)}, {why}")
    close = [
        row
        for row in eligible
        if latency < row["latency_ms_bs64"] <= (1 + NEAR_TIE_SHARE) * latency
    ]
    if close:
        listed = ", ".join(f"{row['name']} ({_ms(row['latency_ms_bs64'])})" for row in close)
        parts.append(
            f"within {NEAR_TIE_SHARE:.0%} of it: {listed}, a margin that run-to-run noise on a "
            "busy machine can reverse"
        )
    faster = [row for row in candidates if row not in eligible and row["latency_ms_bs64"] < latency]
    if faster:
        listed = ", ".join(
            f"{row['name']} ({_ms(row['latency_ms_bs64'])}, "
            f"{_points(row['test_acc'] - best['test_acc']):+.2f} points)"
            for row in faster
        )
        parts.append(f"faster but too inaccurate: {listed}")
    losing = [item for item in slower if item["int8"] in {row["name"] for row in eligible}]
    if losing and chosen.get("precision") != "int8":
        listed = ", ".join(
            f"{item['int8']} {_ms(item['int8_latency_ms_bs64'])} vs {item['fp32']} "
            f"{_ms(item['fp32_latency_ms_bs64'])}"
            for item in losing
        )
        parts.append(
            f"int8 is slower than fp32 on this machine ({listed}), so the int8 file is not the "
            "one to ship here"
        )
    return "; ".join(parts) + "."
