"""report.png: two scatter panels, accuracy against latency and against size, log x axes,
accuracy zoomed to the data, every point named, the baseline a star; headless and
deterministic."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib
import pytest
from matplotlib import image as mpl_image
from matplotlib.collections import PathCollection
from matplotlib.text import Annotation, Text

from distill.deploy.report import build_report, write_report
from distill.deploy.report_chart import DPI, FIGSIZE, png_bytes, tradeoff_figure


def rows() -> list[dict[str, Any]]:
    def row(name: str, acc: float, size: int | None, ms64: float, **extra: Any) -> dict[str, Any]:
        return {
            "name": name,
            "runtime": "onnxruntime",
            "test_acc": acc,
            "bytes": size,
            "latency_ms_bs64": ms64,
            **extra,
        }

    return [
        row("teacher", 0.9745, None, 0.72, runtime="torch eager"),  # no size: latency panel only
        row("student", 0.9455, 20_992, 0.264, runtime="torch eager", macs=23_290),
        row("compressed", 0.9455, 3_174, 0.249, exported=True, precision="fp32"),
        row("onnx_fp32", 0.9455, 10_035, 0.114, exported=True, precision="fp32", macs=11_330),
        row("onnx_int8", 0.9440, 10_035, 0.0671, exported=True, precision="int8", macs=11_330),
        row("onnx_int8_dynamic", 0.9450, 9_114, 0.311, exported=True, precision="int8"),
    ]


def figure_of(report_rows: list[dict[str, Any]]):
    report = build_report(report_rows, title="tiny")
    recommended = report.recommendation["artifact"] if report.recommendation else None
    return tradeoff_figure(report.rows, report.baseline, recommended, report.title)


def labels(ax) -> list[str]:
    return [child.get_text() for child in ax.get_children() if isinstance(child, Annotation)]


def test_two_log_scatter_panels_with_every_point_named() -> None:
    latency, size = figure_of(rows()).axes
    assert latency.get_xscale() == size.get_xscale() == "log"
    assert "latency at batch 64" in latency.get_xlabel()
    assert "size (KiB" in size.get_xlabel()
    names = [row["name"] for row in rows()]
    assert labels(latency) == names
    assert labels(size) == names[1:]  # the teacher has no size
    # One scatter per point, at (value, accuracy %).
    points = [
        tuple(collection.get_offsets()[0])
        for collection in size.collections
        if isinstance(collection, PathCollection)
    ]
    assert points[0] == (20_992 / 1024, 94.55)


def test_the_accuracy_axis_is_zoomed_to_the_data_not_0_to_100() -> None:
    latency, size = figure_of(rows()).axes
    low, high = latency.get_ylim()
    # Data 94.40-97.45 (span 3.05): a tenth of the span as margin, at least half a point.
    assert (low, high) == pytest.approx((94.40 - 0.5, 97.45 + 0.5))
    # The teacher is not in the size panel.
    assert size.get_ylim() == pytest.approx((94.40 - 0.5, 94.55 + 0.5))
    wide = rows()
    wide[0]["test_acc"] = 0.50  # 50.00-94.55: span 44.55 points, 4.455 either side
    assert figure_of(wide).axes[0].get_ylim() == pytest.approx((50.0 - 4.455, 94.55 + 4.455))


def test_the_baseline_is_a_star_and_the_recommended_artifact_a_diamond() -> None:
    report = build_report(rows(), title="tiny")
    assert report.recommendation is not None
    assert report.recommendation["artifact"] == "onnx_int8"
    figure = tradeoff_figure(report.rows, "student", "onnx_int8", "tiny")
    latency = figure.axes[0]
    markers = {
        name: collection.get_paths()[0]
        for name, collection in zip(
            labels(latency),
            [c for c in latency.collections if isinstance(c, PathCollection)],
            strict=True,
        )
    }
    star, diamond, circle = (
        matplotlib.markers.MarkerStyle(marker).get_path() for marker in ("*", "D", "o")
    )
    assert len(markers["student"].vertices) == len(star.vertices)
    assert len(markers["onnx_int8"].vertices) == len(diamond.vertices)
    assert len(markers["onnx_fp32"].vertices) == len(circle.vertices)
    legend = [text.get_text() for text in figure.legends[0].get_texts()]
    assert legend[0].startswith("baseline: student") and legend[1] == "recommended: onnx_int8"


def test_png_is_valid_sized_and_deterministic(tmp_path: Path) -> None:
    first = png_bytes(figure_of(rows()))
    assert first[:8] == b"\x89PNG\r\n\x1a\n"
    assert png_bytes(figure_of(rows())) == first
    write_report(tmp_path, rows(), title="tiny")
    assert (tmp_path / "report.png").read_bytes() == first
    pixels = mpl_image.imread(tmp_path / "report.png")
    assert pixels.shape[:2] == (round(FIGSIZE[1] * DPI), round(FIGSIZE[0] * DPI)) == (500, 1200)


def test_a_panel_without_points_says_not_measured() -> None:
    only_latency = [{**row, "bytes": None} for row in rows()]
    latency, size = figure_of(only_latency).axes
    assert labels(size) == []
    assert [text.get_text() for text in size.texts] == ["not measured"]
    assert len(labels(latency)) == len(rows())


def test_labels_of_nearby_points_do_not_overlap() -> None:
    figure = figure_of(rows())
    figure.canvas.draw()  # positions every annotation's text
    renderer = figure.canvas.get_renderer()
    for ax in figure.axes:
        # The text's own box: an annotation's extent also covers its leader line.
        boxes = [
            Text.get_window_extent(child, renderer)
            for child in ax.get_children()
            if isinstance(child, Annotation)
        ]
        for index, box in enumerate(boxes):
            assert not any(box.overlaps(other) for other in boxes[index + 1 :])


def test_a_label_without_a_leader_line_is_nearest_its_own_point() -> None:
    figure = figure_of(rows())
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()

    def distance(box, xy) -> float:
        x, y = xy
        return math.hypot(max(box.x0 - x, 0, x - box.x1), max(box.y0 - y, 0, y - box.y1))

    leaders = 0
    for ax in figure.axes:
        annotations = [child for child in ax.get_children() if isinstance(child, Annotation)]
        centers = [ax.transData.transform(label.xy) for label in annotations]
        for index, label in enumerate(annotations):
            if label.arrow_patch is not None:
                leaders += 1
                continue
            box = Text.get_window_extent(label, renderer)
            own = distance(box, centers[index])
            others = [c for i, c in enumerate(centers) if i != index]
            assert all(distance(box, other) > own for other in others), label.get_text()
    assert leaders >= 1  # student and compressed nearly coincide in the latency panel
