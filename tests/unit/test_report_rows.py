"""The report's derived numbers on hand-made rows: speed-up, MACs ratio and their quotient;
int8 against fp32; the recommendation rule (tolerance edge, ties, rows it must not pick)."""

from __future__ import annotations

from typing import Any

from distill.deploy.artifacts import Produced, merge_into_summary
from distill.deploy.report_rows import (
    ACC_TOLERANCE_PTS,
    int8_slower_than_fp32,
    recommend,
    with_ratios,
)


def row(name: str, **fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": name,
        "runtime": "onnxruntime",
        "test_acc": None,
        "bytes": None,
        "macs": None,
        "latency_ms_bs1": None,
        "latency_ms_bs64": None,
    }
    out.update(fields)
    return out


def student(**fields: Any) -> dict[str, Any]:
    base = {
        "runtime": "torch eager",
        "precision": "fp32",
        "test_acc": 0.90,
        "bytes": 4000,
        "macs": 1000,
        "latency_ms_bs1": 2.0,
        "latency_ms_bs64": 64.0,
    }
    return row("student", **{**base, **fields})


def artifact(name: str, precision: str, acc: float, ms64: float, size: int = 1000, **fields):
    settings = {"precision": precision, "exported": True, "test_acc": acc, "bytes": size}
    return row(name, **{**settings, "latency_ms_bs64": ms64, **fields})


def by_name(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in rows}


# -- speed-up, MACs ratio, speed-up / MACs ratio ---------------------------------------------


def test_speedup_macs_ratio_and_their_quotient_are_exact() -> None:
    rows = with_ratios(
        [
            student(),
            # Half the MACs, 4x faster at batch 64, 1.6x at batch 1.
            artifact("slim", "fp32", 0.9, 16.0, macs=500, latency_ms_bs1=1.25),
            # A quarter of the MACs, only 2x faster: latency did not follow the arithmetic.
            artifact("quarter", "int8", 0.9, 32.0, macs=250, latency_ms_bs1=2.0),
        ],
        "student",
    )
    slim, quarter, base = by_name(rows)["slim"], by_name(rows)["quarter"], by_name(rows)["student"]
    assert slim["macs_ratio"] == 2.0  # 1000 / 500
    assert slim["speedup_bs64"] == 4.0  # 64 / 16
    assert slim["speedup_bs1"] == 1.6  # 2 / 1.25
    assert slim["speedup_per_macs_ratio_bs64"] == 2.0  # 4 / 2
    assert slim["speedup_per_macs_ratio_bs1"] == 0.8  # 1.6 / 2
    assert quarter["macs_ratio"] == 4.0
    assert quarter["speedup_bs64"] == 2.0
    assert quarter["speedup_per_macs_ratio_bs64"] == 0.5
    assert quarter["speedup_per_macs_ratio_bs1"] == 0.25  # 1.0 / 4
    # The baseline against itself: everything 1.
    assert base["macs_ratio"] == base["speedup_bs64"] == base["speedup_per_macs_ratio_bs64"] == 1.0


def test_missing_or_zero_macs_give_none_not_a_division_error() -> None:
    rows = by_name(
        with_ratios(
            [
                student(),
                artifact("no_macs", "fp32", 0.9, 16.0),
                artifact("zero_macs", "fp32", 0.9, 16.0, macs=0),
                artifact("no_latency", "fp32", 0.9, 16.0, macs=500, latency_ms_bs64=None),
            ],
            "student",
        )
    )
    for name in ("no_macs", "zero_macs"):
        assert rows[name]["macs_ratio"] is None
        assert rows[name]["speedup_bs64"] == 4.0
        assert rows[name]["speedup_per_macs_ratio_bs64"] is None
    assert rows["no_latency"]["macs_ratio"] == 2.0
    assert rows["no_latency"]["speedup_per_macs_ratio_bs64"] is None
    assert rows["no_latency"]["speedup_per_macs_ratio_bs1"] is None  # no bs1 latency either

    zero_base = by_name(
        with_ratios([student(macs=0), artifact("a", "fp32", 0.9, 1.0, macs=5)], "student")
    )
    assert zero_base["a"]["macs_ratio"] == 0.0
    assert zero_base["a"]["speedup_per_macs_ratio_bs64"] is None


# -- int8 against fp32 -----------------------------------------------------------------------


def test_int8_slower_than_the_fastest_fp32_of_its_runtime_is_listed_with_its_slowdown() -> None:
    rows = [
        student(latency_ms_bs64=0.5),  # torch eager fp32 is faster still: another runtime
        artifact("onnx_fp32", "fp32", 0.9, 0.25),
        artifact("onnx_fp32_big", "fp32", 0.9, 0.4),
        artifact("onnx_int8", "int8", 0.9, 0.4),
        artifact("onnx_int8_fast", "int8", 0.9, 0.2),
        artifact("other_int8", "int8", 0.9, 9.0, runtime="executorch"),  # no fp32 to compare
    ]
    assert int8_slower_than_fp32(rows) == [
        {
            "int8": "onnx_int8",
            "fp32": "onnx_fp32",
            "runtime": "onnxruntime",
            "int8_latency_ms_bs64": 0.4,
            "fp32_latency_ms_bs64": 0.25,
            "slowdown": 1.6,
        }
    ]


# -- the recommendation ----------------------------------------------------------------------


def test_int8_slower_than_fp32_means_the_fp32_file_is_recommended_and_the_reason_says_why() -> None:
    rows = with_ratios(
        [
            student(),
            artifact("onnx_fp32", "fp32", 0.900, 16.0, size=9000),
            artifact("onnx_int8", "int8", 0.899, 32.0, size=3000),
        ],
        "student",
    )
    chosen = recommend(rows)
    assert chosen is not None
    assert chosen["artifact"] == "onnx_fp32"
    assert chosen["eligible"] == ["onnx_fp32", "onnx_int8"]
    assert chosen["int8_slower_than_fp32"][0]["slowdown"] == 2.0
    reason = chosen["reason"]
    assert reason.startswith("onnx_fp32 is the fastest at batch 64 (16 ms, 4.00x the baseline)")
    assert "int8 is slower than fp32 on this machine (onnx_int8 32 ms vs onnx_fp32 16 ms)" in reason
    assert "within 1 point" in chosen["rule"]


def test_int8_faster_and_accurate_enough_is_recommended() -> None:
    rows = [
        student(),
        artifact("onnx_fp32", "fp32", 0.900, 16.0),
        artifact("onnx_int8", "int8", 0.895, 8.0),
    ]
    chosen = recommend(rows)
    assert chosen is not None and chosen["artifact"] == "onnx_int8"
    assert chosen["int8_slower_than_fp32"] == []
    assert "int8 is slower" not in chosen["reason"]


def test_a_faster_artifact_more_than_one_point_below_the_best_is_passed_over() -> None:
    rows = [
        student(),
        artifact("onnx_fp32", "fp32", 0.950, 16.0),
        artifact("at_the_edge", "int8", 0.940, 12.0),  # exactly 1 point below: eligible
        artifact("too_lossy", "int8", 0.9399, 4.0),  # 1.01 points below: not
    ]
    chosen = recommend(rows)
    assert chosen is not None
    assert ACC_TOLERANCE_PTS == 1.0
    assert chosen["eligible"] == ["onnx_fp32", "at_the_edge"]
    assert chosen["artifact"] == "at_the_edge"
    assert "faster but too inaccurate: too_lossy (4 ms, -1.01 points)" in chosen["reason"]


def test_a_tie_in_latency_goes_to_the_smaller_file_then_to_the_earlier_row() -> None:
    rows = [
        artifact("big", "fp32", 0.9, 10.0, size=5000),
        artifact("small", "int8", 0.9, 10.0, size=2000),
        artifact("small_too", "int8", 0.9, 10.0, size=2000),
        artifact("slower", "int8", 0.9, 10.5, size=100),
    ]
    chosen = recommend(rows)
    assert chosen is not None and chosen["artifact"] == "small"
    assert "tied in latency with big, small_too" in chosen["reason"]
    assert "the smaller file, or the earlier row of equal size" in chosen["reason"]

    same_size = recommend([rows[1], rows[2]])
    assert same_size is not None and same_size["artifact"] == "small"
    assert "it comes first in the table" in same_size["reason"]

    by_size = recommend([rows[0], rows[1]])
    assert by_size is not None and by_size["artifact"] == "small"
    assert "tied in latency with big, it is the smaller file" in by_size["reason"]


def test_a_runner_up_within_ten_percent_is_named_as_inside_the_noise() -> None:
    rows = [
        artifact("a", "fp32", 0.9, 1.00),
        artifact("b", "int8", 0.9, 1.10),  # exactly 10% slower: named
        artifact("c", "int8", 0.9, 1.11),  # 11%: not
    ]
    chosen = recommend(rows)
    assert chosen is not None and chosen["artifact"] == "a"
    assert "; within 10% of it: b (1.1 ms), a margin that run-to-run noise" in chosen["reason"]
    assert "c (" not in chosen["reason"]


def test_an_unmeasured_size_loses_a_tie() -> None:
    rows = [artifact("no_size", "fp32", 0.9, 1.0, size=None), artifact("sized", "fp32", 0.9, 1.0)]
    chosen = recommend(rows)
    assert chosen is not None and chosen["artifact"] == "sized"


def test_only_exported_rows_with_accuracy_and_batch64_latency_are_candidates() -> None:
    rows = [
        # Fast and accurate, but not exported: the baseline and the teacher are never picked.
        student(latency_ms_bs64=0.1),
        row("teacher", runtime="torch eager", precision="fp32", test_acc=0.99, latency_ms_bs64=0.1),
        artifact("unmeasured", "fp32", 0.99, 0.1, latency_ms_bs64=None),
        artifact("no_accuracy", "fp32", None, 0.1),
        artifact("onnx_fp32", "fp32", 0.90, 5.0),
    ]
    chosen = recommend(rows)
    assert chosen is not None
    assert chosen["artifact"] == "onnx_fp32"
    assert chosen["eligible"] == ["onnx_fp32"]
    assert recommend(rows[:2]) is None
    assert recommend([]) is None


def test_a_row_of_any_new_runtime_competes_by_the_same_rule() -> None:
    rows = [
        student(),
        artifact("onnx_fp32", "fp32", 0.90, 16.0),
        artifact("onnx_int8", "int8", 0.90, 20.0),
        artifact("executorch_xnnpack", "fp32", 0.901, 8.0, runtime="executorch"),
    ]
    chosen = recommend(with_ratios(rows, "student"))
    assert chosen is not None and chosen["artifact"] == "executorch_xnnpack"
    assert chosen["reason"].startswith("executorch_xnnpack is the fastest at batch 64 (8 ms, 8.00x")
    # int8 lost to fp32 in onnxruntime: recorded, though neither is the file to ship.
    assert [item["int8"] for item in chosen["int8_slower_than_fp32"]] == ["onnx_int8"]


def test_the_recommendation_lands_in_summary_json_next_to_the_rows() -> None:
    rows = with_ratios([student(), artifact("onnx_fp32", "fp32", 0.9, 16.0)], "student")
    summary: dict[str, Any] = {"artifacts": {"student": {"path": "student.pt", "bytes": 1}}}
    produced = Produced({"onnx_fp32": {"path": "export/x.onnx", "bytes": 1}}, rows, recommend(rows))
    merge_into_summary(summary, produced)
    assert summary["deployment_recommendation"]["artifact"] == "onnx_fp32"
    assert summary["deployment"][1]["speedup_per_macs_ratio_bs64"] is None  # no MACs given
    assert summary["deployment"][1]["speedup_bs64"] == 4.0
    assert set(summary["artifacts"]) == {"student", "onnx_fp32"}
