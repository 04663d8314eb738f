"""The deploy report: exact ratios, None propagation, the tables, the figure, and validation.

The rows' derived numbers (speed-up / MACs ratio, the recommendation) are in
test_report_rows.py; the figure's shape in test_report_chart.py."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib import image as mpl_image

from distill.deploy import report as report_module
from distill.deploy.report import DPI, FIGSIZE, write_report
from distill.errors import ConfigError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_row(name: str, **fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "name": name,
        "runtime": "torch eager",
        "test_acc": None,
        "agreement": None,
        "bytes": None,
        "params": None,
        "macs": None,
        "latency_ms_bs1": None,
        "latency_ms_bs64": None,
    }
    row.update(fields)
    return row


def sample_rows() -> list[dict[str, Any]]:
    return [
        make_row(
            "teacher",
            test_acc=0.95,
            bytes=40_000,
            params=10_000,
            macs=2_000_000,
            latency_ms_bs1=20.0,
            latency_ms_bs64=40.0,
        ),
        make_row(
            "student",
            precision="fp32",
            test_acc=0.9,
            agreement=0.97,
            bytes=4000,
            params=1000,
            macs=250_000,
            latency_ms_bs1=10.0,
            latency_ms_bs64=10.0,
        ),
        make_row(
            "onnx_int8",
            runtime="onnxruntime",
            precision="int8",
            exported=True,
            test_acc=0.895,
            agreement=0.99,
            bytes=400,
            params=1000,
            macs=250_000,
            latency_ms_bs1=2.0,
            latency_ms_bs64=2.5,
            note="static PTQ, 256 calibration examples",
        ),
        # Measured only as a file: everything else is missing.
        make_row("compressed", runtime="file", exported=True, bytes=1024),
    ]


def by_name(run_dir: Path) -> dict[str, dict[str, Any]]:
    payload = json.loads((run_dir / "report.json").read_text())
    return {row["name"]: row for row in payload["rows"]}


def test_ratios_are_exact_against_the_baseline(tmp_path: Path) -> None:
    write_report(tmp_path, sample_rows())
    rows = by_name(tmp_path)

    int8 = rows["onnx_int8"]
    assert int8["size_ratio"] == 10.0  # 4000 / 400
    assert int8["speedup_bs1"] == 5.0  # 10 / 2
    assert int8["speedup_bs64"] == 4.0  # 10 / 2.5
    assert int8["acc_delta_pts"] == pytest.approx(-0.5)  # 100 * (0.895 - 0.9)

    teacher = rows["teacher"]
    assert teacher["size_ratio"] == 0.1  # the teacher is 10x larger
    assert teacher["speedup_bs1"] == 0.5
    assert teacher["speedup_bs64"] == 0.25
    assert teacher["acc_delta_pts"] == pytest.approx(5.0)

    student = rows["student"]
    assert student["size_ratio"] == 1.0
    assert student["speedup_bs1"] == student["speedup_bs64"] == 1.0
    assert student["acc_delta_pts"] == 0.0


def test_missing_values_give_none_ratios(tmp_path: Path) -> None:
    write_report(tmp_path, sample_rows())
    compressed = by_name(tmp_path)["compressed"]
    assert compressed["size_ratio"] == 4000 / 1024
    assert compressed["speedup_bs1"] is None
    assert compressed["speedup_bs64"] is None
    assert compressed["acc_delta_pts"] is None
    assert compressed["test_acc"] is None


def test_a_baseline_without_a_value_gives_none_for_every_row(tmp_path: Path) -> None:
    rows = sample_rows()
    rows[1]["latency_ms_bs64"] = None
    rows[1]["test_acc"] = None
    write_report(tmp_path, rows)
    for row in by_name(tmp_path).values():
        assert row["speedup_bs64"] is None
        assert row["acc_delta_pts"] is None
        assert row["speedup_bs1"] is not None or row["latency_ms_bs1"] is None


def test_another_baseline(tmp_path: Path) -> None:
    write_report(tmp_path, sample_rows(), baseline="teacher")
    rows = by_name(tmp_path)
    assert rows["student"]["size_ratio"] == 10.0
    assert rows["onnx_int8"]["size_ratio"] == 100.0
    assert rows["onnx_int8"]["speedup_bs64"] == 16.0  # 40 / 2.5
    assert rows["teacher"]["size_ratio"] == 1.0


def test_json_keeps_the_rows_in_order_with_extra_keys(tmp_path: Path) -> None:
    rows = sample_rows()
    rows[2]["opset"] = 17
    write_report(tmp_path, rows, title="cifar10 resnet20")
    payload = json.loads((tmp_path / "report.json").read_text())
    assert payload["title"] == "cifar10 resnet20"
    assert payload["baseline"] == "student"
    assert [row["name"] for row in payload["rows"]] == [
        "teacher",
        "student",
        "onnx_int8",
        "compressed",
    ]
    int8 = payload["rows"][2]
    assert int8["opset"] == 17
    assert int8["note"] == "static PTQ, 256 calibration examples"
    assert int8["bytes"] == 400
    assert int8["runtime"] == "onnxruntime"


def test_numpy_scalars_become_plain_json_numbers(tmp_path: Path) -> None:
    rows = sample_rows()
    rows[1]["bytes"] = np.int64(4000)
    rows[1]["test_acc"] = np.float32(0.5)
    rows[1]["latency_ms_bs64"] = np.float64(10.0)
    write_report(tmp_path, rows)
    student = by_name(tmp_path)["student"]
    assert student["bytes"] == 4000
    assert student["test_acc"] == 0.5
    assert by_name(tmp_path)["onnx_int8"]["speedup_bs64"] == 4.0


def test_return_value_names_the_three_files(tmp_path: Path) -> None:
    written = write_report(tmp_path / "run", sample_rows())
    assert list(written) == ["report_md", "report_json", "report_png"]
    for key, filename in (
        ("report_md", "report.md"),
        ("report_json", "report.json"),
        ("report_png", "report.png"),
    ):
        assert written[key]["path"] == filename
        assert written[key]["bytes"] == (tmp_path / "run" / filename).stat().st_size > 0
    # Atomic writes leave no temporary files behind.
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "report.json",
        "report.md",
        "report.png",
    ]


def tables(run_dir: Path) -> list[list[str]]:
    """Each Markdown table of report.md as its lines (header, separator, body)."""
    found: list[list[str]] = []
    previous = ""
    for line in (run_dir / "report.md").read_text().splitlines():
        if line[:1] == "|":
            if previous[:1] != "|":
                found.append([])
            found[-1].append(line)
        previous = line
    return found


def table_lines(run_dir: Path) -> list[str]:
    """The main table: one row per model."""
    return tables(run_dir)[0]


def cells_by_name(lines: list[str]) -> dict[str, list[str]]:
    split = [[cell.strip() for cell in line.split("|")[1:-1]] for line in lines[2:]]
    return {name: rest for name, *rest in split}


def test_markdown_table_has_one_line_per_row_and_the_numbers(tmp_path: Path) -> None:
    write_report(tmp_path, sample_rows(), title="cifar10 resnet20")
    text = (tmp_path / "report.md").read_text()
    assert text.startswith("# cifar10 resnet20\n")
    header, separator, *body = table_lines(tmp_path)
    for column in (
        "model",
        "runtime",
        "test acc %",
        "agreement %",
        "size (KiB)",
        "× smaller",
        "params",
        "MACs",
        "latency bs1 (ms)",
        "latency bs64 (ms)",
        "× faster bs64",
    ):
        assert column in header
    assert separator.count("|") == header.count("|") == 12
    assert len(body) == 4

    cells = cells_by_name(table_lines(tmp_path))
    assert cells["student"] == [
        "torch eager",
        "90.00",
        "97.00",
        "3.9",  # 4000 / 1024
        "1.00",
        "1,000",
        "250,000",
        "10.00",
        "10.00",
        "1.00",
    ]
    assert cells["onnx_int8"] == [
        "onnxruntime",
        "89.50",
        "99.00",
        "0.4",
        "10.00",
        "1,000",
        "250,000",
        "2.00",
        "2.50",
        "4.00",
    ]
    assert cells["teacher"][3:5] == ["39.1", "0.10"]
    assert cells["teacher"][-1] == "0.25"
    assert cells["compressed"] == ["file", "-", "-", "1.0", "3.91", "-", "-", "-", "-", "-"]


def test_markdown_says_how_it_was_measured_and_links_the_figure(tmp_path: Path) -> None:
    write_report(tmp_path, sample_rows(), baseline="teacher")
    text = (tmp_path / "report.md").read_text()
    assert "median" in text
    assert "`teacher`" in text
    assert "](report.png)" in text
    assert "- **onnx_int8**: static PTQ, 256 calibration examples" in text
    assert text.startswith("# Deployment report\n")


def test_latency_toward_the_macs_bound_table(tmp_path: Path) -> None:
    rows = sample_rows()
    rows[2]["macs"] = 125_000  # onnx_int8: half the student's MACs, 4x faster at batch 64
    write_report(tmp_path, rows)
    main, bound = tables(tmp_path)
    assert len(main) == len(bound) == 2 + 4
    header = bound[0]
    for column in (
        "MACs ratio (baseline / this)",
        "× faster bs1",
        "speed-up / MACs ratio bs1",
        "× faster bs64",
        "speed-up / MACs ratio bs64",
    ):
        assert column in header
    cells = cells_by_name(bound)
    assert cells["onnx_int8"] == ["onnxruntime", "2.00", "5.00", "2.50", "4.00", "2.00"]
    assert cells["student"] == ["torch eager", "1.00", "1.00", "1.00", "1.00", "1.00"]
    assert cells["teacher"] == ["torch eager", "0.12", "0.50", "4.00", "0.25", "2.00"]
    assert cells["compressed"] == ["file", "-", "-", "-", "-", "-"]
    text = (tmp_path / "report.md").read_text()
    assert "speed-up / MACs ratio = × faster / MACs ratio: 1.00 means latency fell exactly" in text
    int8 = by_name(tmp_path)["onnx_int8"]
    assert int8["macs_ratio"] == 2.0
    assert int8["speedup_per_macs_ratio_bs1"] == 2.5
    assert int8["speedup_per_macs_ratio_bs64"] == 2.0


def int8_loses_rows() -> list[dict[str, Any]]:
    """A tiny CNN as the default recipe exports it: int8 slower than fp32 in onnxruntime."""
    common = {"runtime": "onnxruntime", "exported": True, "macs": 11_330}
    return [
        make_row("student", precision="fp32", test_acc=0.9455, bytes=20_992, macs=23_290,
                 latency_ms_bs1=0.0703, latency_ms_bs64=0.264),
        make_row("onnx_fp32", precision="fp32", test_acc=0.9455, bytes=10_035,
                 latency_ms_bs1=0.0112, latency_ms_bs64=0.114, path="student_fp32.onnx", **common),
        make_row("onnx_int8", precision="int8", test_acc=0.9440, bytes=10_035,
                 latency_ms_bs1=0.0141, latency_ms_bs64=0.228, path="student_int8.onnx", **common),
    ]  # fmt: skip


def test_the_recommendation_says_int8_loses_and_ships_the_fp32_file(tmp_path: Path) -> None:
    machine = {"cpu": "AMD EPYC", "int8_instructions": []}
    write_report(tmp_path, int8_loses_rows(), machine=machine)
    text = (tmp_path / "report.md").read_text()
    assert "## Recommendation\n\nShip **onnx_fp32** (`student_fp32.onnx`, onnxruntime).\n" in text
    assert (
        "Rule: ship the fastest exported artifact at batch 64 whose test accuracy is within 1 "
        in text
    )
    assert "Why: onnx_fp32 is the fastest at batch 64 (0.114 ms, 2.32x the baseline)" in text
    assert (
        "- **onnx_int8** 0.228 ms against **onnx_fp32** 0.114 ms in onnxruntime (2.00x slower)"
        in text
    )
    assert "Machine: AMD EPYC; int8 dot-product instructions: none (no VNNI" in text
    payload = json.loads((tmp_path / "report.json").read_text())
    assert payload["recommendation"]["artifact"] == "onnx_fp32"
    assert payload["recommendation"]["int8_slower_than_fp32"][0]["slowdown"] == 2.0
    assert payload["machine"] == machine


def test_the_recommendation_when_int8_wins_and_when_nothing_qualifies(tmp_path: Path) -> None:
    rows = int8_loses_rows()
    rows[2]["latency_ms_bs64"] = 0.0671
    write_report(tmp_path, rows, machine={"cpu": "AMD EPYC", "int8_instructions": ["avx512_vnni"]})
    text = (tmp_path / "report.md").read_text()
    assert "Ship **onnx_int8** (`student_int8.onnx`, onnxruntime)." in text
    assert "Every int8 artifact is faster at batch 64 than the fastest fp32 artifact" in text
    assert "int8 dot-product instructions: avx512_vnni." in text

    write_report(tmp_path, rows[:1])  # only the baseline: nothing exported
    text = (tmp_path / "report.md").read_text()
    assert "## Recommendation\n\nNone: no exported artifact" in text
    assert "Machine:" not in text
    assert json.loads((tmp_path / "report.json").read_text())["recommendation"] is None


def test_markdown_escapes_pipes_and_formats_sub_millisecond_latency(tmp_path: Path) -> None:
    rows = [make_row("student", latency_ms_bs1=0.0421), make_row("a|b", runtime="x|y")]
    write_report(tmp_path, rows)
    body = table_lines(tmp_path)[2:]
    assert len(body) == 2
    assert "0.042" in body[0]
    assert body[1].startswith("| a\\|b | x\\|y |")


def test_png_has_the_signature_and_the_pixel_size(tmp_path: Path) -> None:
    write_report(tmp_path, sample_rows())
    path = tmp_path / "report.png"
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = mpl_image.imread(path)
    width, height = round(FIGSIZE[0] * DPI), round(FIGSIZE[1] * DPI)
    assert pixels.shape[:2] == (height, width) == (500, 1200)
    # Something was drawn: not a blank white canvas.
    assert float(pixels[..., :3].std()) > 0.01


def test_png_with_an_unmeasured_panel(tmp_path: Path) -> None:
    rows = [make_row("student", test_acc=0.0, bytes=100), make_row("onnx_fp32", bytes=90)]
    write_report(tmp_path, rows)
    assert mpl_image.imread(tmp_path / "report.png").shape[:2] == (500, 1200)


def test_writing_again_replaces_the_report(tmp_path: Path) -> None:
    write_report(tmp_path, sample_rows())
    write_report(tmp_path, sample_rows()[:2])
    assert len(by_name(tmp_path)) == 2
    assert len(table_lines(tmp_path)) == 2 + 2


@pytest.mark.parametrize(
    ("rows", "baseline", "field"),
    [
        ([], "student", "report.rows"),
        ([make_row("student")], "teacher", "report.baseline"),
        ([make_row("student"), make_row("student")], "student", "rows[1].name"),
        ([make_row("")], "student", "rows[0].name"),
        (["student"], "student", "rows[0]"),
        ([make_row("student", bytes="4000")], "student", "rows[student].bytes"),
        ([make_row("student", latency_ms_bs64="fast")], "student", "rows[student].latency_ms_bs64"),
        ([make_row("student", params=True)], "student", "rows[student].params"),
        ([make_row("student", test_acc=90.0)], "student", "rows[student].test_acc"),
        ([make_row("student", agreement=math.nan)], "student", "rows[student].agreement"),
        ([make_row("student", latency_ms_bs1=0.0)], "student", "rows[student].latency_ms_bs1"),
        ([make_row("student", bytes=10.5)], "student", "rows[student].bytes"),
        ([make_row("student", macs=-1)], "student", "rows[student].macs"),
        ([make_row("student", runtime=3)], "student", "rows[student].runtime"),
        ([make_row("student", precision=8)], "student", "rows[student].precision"),
        ([make_row("student", exported="yes")], "student", "rows[student].exported"),
    ],
)
def test_bad_input_raises_and_writes_nothing(
    tmp_path: Path, rows: list[Any], baseline: str, field: str
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with pytest.raises(ConfigError) as raised:
        write_report(run_dir, rows, baseline=baseline)
    assert raised.value.field == field
    assert list(run_dir.iterdir()) == []


def test_bad_baseline_message_lists_the_names(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="one of teacher, student") as raised:
        write_report(tmp_path, sample_rows()[:2], baseline="onnx_int8")
    assert raised.value.value == "onnx_int8"
    assert list(tmp_path.iterdir()) == []


def test_a_failure_while_writing_leaves_no_report_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_report(tmp_path, sample_rows())  # an earlier, complete report

    def failing_json(path: Path, payload: Any) -> Path:
        raise OSError("disk full")

    monkeypatch.setattr(report_module, "atomic_write_json", failing_json)
    with pytest.raises(OSError, match="disk full"):
        write_report(tmp_path, sample_rows()[:2])
    # The stale JSON must not vouch for the new PNG and MD.
    assert not (tmp_path / "report.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md", "report.png"]


def test_a_failing_png_write_leaves_no_json_and_no_temp_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = report_module.atomic_write

    def fail_on_png(path: Path, write: Any) -> Path:
        if Path(path).name == "report.png":
            return real_write(path, lambda handle: (_ for _ in ()).throw(OSError("no space")))
        return real_write(path, write)

    monkeypatch.setattr(report_module, "atomic_write", fail_on_png)
    with pytest.raises(OSError, match="no space"):
        write_report(tmp_path, sample_rows())
    assert list(tmp_path.iterdir()) == []
