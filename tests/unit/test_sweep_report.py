"""distill-report: the runs of a fake sweep, exact CSV rows, Pareto flags, failed runs, charts,
and the inputs it refuses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from matplotlib import image as mpl_image

from distill.cli.report import main
from distill.sweep_report import NO_SUMMARY, find_runs, front_steps, pareto_front
from distill.sweep_report.charts import DPI, FIGSIZE
from distill.sweep_report.labels import labels, short_keys
from distill.sweep_report.runs import log_error, stderr_error

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
COMMON = ["data=digits", "student=mlp"]
HEADER = (
    "label,status,teacher_acc,student_acc,labels_only_acc,kd_gain,sparsity,artifact,"
    "artifact_bytes,artifact_acc,"
    "artifact_latency_ms_bs64,pareto_bytes,pareto_latency,run_dir,error"
)
FAILED_LOG = """\
[2026-12-02 21:28:49,860][lightning_fabric.utilities.seed][INFO] - Seed set to 0
[2026-12-02 21:28:50,001][distill][ERROR] - Run failed
Traceback (most recent call last):
  File "distill/pipeline.py", line 80, in train
    trainer.fit(module)
RuntimeError: mat1 and mat2 shapes cannot be multiplied (64x10 and 12x5)
[2026-12-02 21:28:50,002][distill][INFO] - Cleaning up
"""


def summary(
    student_acc: float, sparsity: float, int8: tuple[int, float, float] | None
) -> dict[str, Any]:
    """A summary.json as distill/pipeline.py writes it, cut to the keys the report reads."""
    artifacts: dict[str, Any] = {
        "student": {"path": "student.pt", "bytes": 107285},
        "onnx_fp32": {
            "path": "export/student_fp32.onnx",
            "bytes": 107658,
            "test_acc": student_acc,
            "latency_ms_bs1": 0.0124,
            "latency_ms_bs64": 0.05,
        },
    }
    if int8 is not None:
        size, acc, latency = int8
        artifacts["onnx_int8"] = {
            "path": "export/student_int8.onnx",
            "bytes": size,
            "test_acc": acc,
            "latency_ms_bs1": 0.0174,
            "latency_ms_bs64": latency,
            "method": "qat",
        }
    return {
        "seed": 0,
        "teacher": {"test_acc": 0.95, "params_total": 19562, "origin": "cache"},
        "student": {"test_acc": student_acc, "params_total": 26122, "params_nonzero": 20000},
        "sparsity": {"global": sparsity, "layers": {"features.0": sparsity}},
        "artifacts": artifacts,
        # distill-export measures the student checkpoint as the report's `student` row.
        "deployment": [
            {"name": "student", "bytes": 107285, "test_acc": 0.7, "latency_ms_bs64": 0.06}
        ],
        "timing": {"total_s": 5.0},
    }


def write_run(
    run_dir: Path,
    overrides: list[str],
    summary_: dict[str, Any] | None = None,
    log: str = "",
    job_id: str = "0",
) -> Path:
    """A run directory as Hydra and distill-train leave it."""
    (run_dir / ".hydra").mkdir(parents=True)
    lines = "".join(f"- {item}\n" for item in overrides)
    (run_dir / ".hydra" / "overrides.yaml").write_text(lines)
    (run_dir / ".hydra" / "hydra.yaml").write_text(
        f"hydra:\n  job:\n    name: train\n    id: '{job_id}'\n    num: 0\n"
    )
    (run_dir / "train.log").write_text(log)
    if summary_ is not None:
        (run_dir / "summary.json").write_text(json.dumps(summary_))
    return run_dir


def sweep_overrides(sparsity: float, temperature: int) -> list[str]:
    return [
        "data=digits",
        f"pruning.schedule.final_sparsity={sparsity}",
        f"loss.kd.temperature={temperature}",
        "student=mlp",
    ]


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """Two runs on the fronts, one dominated on both, one failed, one still running."""
    root = tmp_path / "multirun" / "2026-12-02_21-28-23"
    write_run(root / "0", sweep_overrides(0.5, 2), summary(0.9, 0.5, (30000, 0.9, 0.02)))
    write_run(root / "1", sweep_overrides(0.8, 2), summary(0.88, 0.8, (20000, 0.88, 0.03)))
    write_run(root / "2", sweep_overrides(0.5, 4), summary(0.85, 0.5, (40000, 0.85, 0.04)))
    write_run(root / "3", sweep_overrides(0.8, 4), log=FAILED_LOG)
    write_run(root / "10", sweep_overrides(0.9, 4), log="[t][distill][INFO] - Training\n")
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


def label(sparsity: float, temperature: int) -> str:
    return f"pruning.schedule.final_sparsity={sparsity} loss.kd.temperature={temperature}"


def test_csv_has_one_exact_row_per_run_with_pareto_flags(sweep: Path) -> None:
    assert main([str(sweep)]) == 0
    failed_error = (
        '"Run failed\nTraceback (most recent call last):\n'
        '  File ""distill/pipeline.py"", line 80, in train\n'
        "    trainer.fit(module)\n"
        'RuntimeError: mat1 and mat2 shapes cannot be multiplied (64x10 and 12x5)"'
    )
    assert (sweep / "report.csv").read_text() == "\n".join(
        [
            HEADER,
            f"{label(0.5, 2)},ok,0.95,0.9,,,0.5,onnx_int8,30000,0.9,0.02,true,true,0,",
            f"{label(0.8, 2)},ok,0.95,0.88,,,0.8,onnx_int8,20000,0.88,0.03,true,false,1,",
            f"{label(0.5, 4)},ok,0.95,0.85,,,0.5,onnx_int8,40000,0.85,0.04,false,false,2,",
            f"{label(0.8, 4)},failed,,,,,,,,,,false,false,3,{failed_error}",
            f"{label(0.9, 4)},{NO_SUMMARY},,,,,,,,,,false,false,10,",
            "",
        ]
    )


def test_markdown_rounds_and_lists_failed_and_running_runs(sweep: Path) -> None:
    assert main([str(sweep)]) == 0
    text = (sweep / "report.md").read_text()
    assert "5 runs: 3 finished, 1 failed, 1 without a summary (running or killed)." in text
    assert "Every run: `data=digits student=mlp`" in text
    assert (
        f"| {label(0.8, 2)} | ok | 95.00 | 88.00 | 80.0 | 19.5 | 88.00 | 0.03 | size | `1` |"
        in text
    )
    assert (
        f"| {label(0.5, 2)} | ok | 95.00 | 90.00 | 50.0 | 29.3 | 90.00 | 0.02 | size, latency |"
        in text
    )
    failed = text.split("## Failed runs")[1].split("## Runs without a summary")
    assert f"### `3`: {label(0.8, 4)}" in failed[0]
    assert "RuntimeError: mat1 and mat2 shapes cannot be multiplied (64x10 and 12x5)" in failed[0]
    assert "Cleaning up" not in failed[0]
    assert failed[1].strip() == f"- `10`: {label(0.9, 4)}: {NO_SUMMARY}"


def test_charts_are_pngs_of_the_set_size(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    assert main([str(sweep), "--out", str(out)]) == 0
    assert sorted(path.name for path in out.iterdir()) == [
        "accuracy_vs_bytes.png",
        "accuracy_vs_latency.png",
        "report.csv",
        "report.md",
    ]
    assert not (sweep / "report.md").exists()
    for name in ("accuracy_vs_bytes.png", "accuracy_vs_latency.png"):
        assert (out / name).read_bytes()[:8] == PNG_SIGNATURE
        height, width, _ = mpl_image.imread(out / name).shape
        assert (width, height) == (FIGSIZE[0] * DPI, FIGSIZE[1] * DPI)


def test_pareto_front_keeps_undominated_points_and_ties() -> None:
    points = [(0.9, 30.0), (0.88, 20.0), (0.85, 40.0), None, (0.9, 30.0), (0.9, 35.0), (0.8, 20.0)]
    # (0.9, 35) loses to (0.9, 30) on cost alone; (0.8, 20) to (0.88, 20) on accuracy alone;
    # the two (0.9, 30) do not beat each other.
    assert pareto_front(points) == [True, True, False, False, True, False, False]
    assert pareto_front([]) == []
    assert pareto_front([(0.5, 1.0)]) == [True]
    assert front_steps(points, pareto_front(points)) == ([20.0, 30.0, 30.0], [0.88, 0.9, 0.9])


def test_labels_keep_the_overrides_that_differ() -> None:
    # a=1 is shared; b and y.lr are absent from some runs, which counts as differing; the last
    # run differs only by what it lacks and is labeled by its directory.
    runs = [["a=1", "x.lr=1", "b=2"], ["a=1", "x.lr=2", "+y.lr=3"], ["a=1"]]
    assert labels(runs, ["0", "1", "2"]) == (
        ["x.lr=1 b=2", "x.lr=2 +y.lr=3", "2"],
        ["x.lr=1 b=2", "x.lr=2 y.lr=3", "2"],
    )
    # Nothing differs: a label is every override.
    assert labels([["a=1"], ["a=1"]], ["0", "1"]) == (["a=1", "a=1"], ["a=1", "a=1"])
    assert short_keys(["trainer.max_epochs", "teacher.train.max_epochs", "loss.kd.t"]) == {
        "loss.kd.t": "t",
        "teacher.train.max_epochs": "train.max_epochs",
        "trainer.max_epochs": "trainer.max_epochs",
    }


def test_runs_with_a_baseline_show_the_labels_only_student_and_the_kd_gain(
    tmp_path: Path,
) -> None:
    with_baseline = summary(0.9, 0.5, None)
    with_baseline["baseline"] = {
        "output_dir": "baseline",
        "test_acc": {"student.test_acc": 0.875},
        "kd_gain": {"student.test_acc": 0.025},
    }
    write_run(tmp_path / "0", [*COMMON, "loss.kd.temperature=2"], with_baseline)
    write_run(tmp_path / "1", [*COMMON, "loss.kd.temperature=4"], summary(0.8, 0.5, None))
    assert main([str(tmp_path)]) == 0
    rows = (tmp_path / "report.csv").read_text().splitlines()
    assert rows[1].split(",")[2:6] == ["0.95", "0.9", "0.875", "0.025"]
    assert rows[2].split(",")[2:6] == ["0.95", "0.8", "", ""]
    table = (tmp_path / "report.md").read_text()
    assert "| labels only % | KD gain pts |" in table
    assert "| 90.00 | 87.50 | +2.50 |" in table and "| 80.00 | - | - |" in table


def test_a_run_without_the_artifact_has_blanks(tmp_path: Path) -> None:
    write_run(tmp_path / "a", ["export=true"], summary(0.9, 0.5, (30000, 0.9, 0.02)))
    write_run(tmp_path / "b", ["export=false"], summary(0.95, 0.5, None))
    assert main([str(tmp_path)]) == 0
    rows = (tmp_path / "report.csv").read_text().splitlines()
    assert rows[1:] == [
        "export=true,ok,0.95,0.9,,,0.5,onnx_int8,30000,0.9,0.02,true,true,a,",
        "export=false,ok,0.95,0.95,,,0.5,onnx_int8,,,,false,false,b,",
    ]


def test_the_student_artifact_is_measured_by_its_deployment_row(tmp_path: Path) -> None:
    write_run(tmp_path / "a", [], summary(0.9, 0.5, None))
    assert main([str(tmp_path), "--artifact", "student"]) == 0
    rows = (tmp_path / "report.csv").read_text().splitlines()
    assert rows[1] == "a,ok,0.95,0.9,,,0.5,student,107285,0.7,0.06,true,true,a,"
    # Without --artifact and without int8, the fp32 ONNX file is shown.
    assert main([str(tmp_path)]) == 0
    rows = (tmp_path / "report.csv").read_text().splitlines()
    assert rows[1] == "a,ok,0.95,0.9,,,0.5,onnx_fp32,107658,0.9,0.05,true,true,a,"


def test_bad_inputs_exit_2_and_write_nothing(
    sweep: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert main([str(sweep), "--artifact", "onnx_int4"]) == 2
    assert (
        "--artifact='onnx_int4' is not allowed: an artifact the runs' summaries list: "
        "onnx_fp32, onnx_int8, student"
    ) in caplog.text
    assert not (sweep / "report.md").exists() and not (sweep / "report.csv").exists()

    empty = tmp_path / "empty"
    (empty / "logs").mkdir(parents=True)
    assert main([str(empty)]) == 2
    assert "a directory with runs under it" in caplog.text
    assert [path.name for path in empty.iterdir()] == ["logs"]

    assert main([str(tmp_path / "missing")]) == 2
    assert "an existing directory of distill-train runs" in caplog.text


def test_a_killed_submitit_job_reports_its_stderr(tmp_path: Path) -> None:
    write_run(tmp_path / "sweep" / "0", ["a=1"], job_id="77_0", log="[t][x][INFO] - Started\n")
    write_run(tmp_path / "sweep" / "1", ["a=2"], job_id="77_1")
    job = tmp_path / "sweep" / ".submitit" / "77_0"
    job.mkdir(parents=True)
    (job / "77_0_0_log.err").write_text(
        "UserWarning: slow\nslurmstepd: error: *** JOB 77 CANCELLED DUE TO TIME LIMIT ***\n"
    )
    runs = find_runs(tmp_path)
    assert [(run.rel, run.status, run.error) for run in runs] == [
        ("sweep/0", "failed", "slurmstepd: error: *** JOB 77 CANCELLED DUE TO TIME LIMIT ***"),
        ("sweep/1", NO_SUMMARY, None),
    ]


def test_errors_are_read_from_logs_and_stderr() -> None:
    assert log_error(FAILED_LOG) == (
        "Run failed\nTraceback (most recent call last):\n"
        '  File "distill/pipeline.py", line 80, in train\n    trainer.fit(module)\n'
        "RuntimeError: mat1 and mat2 shapes cannot be multiplied (64x10 and 12x5)"
    )
    assert log_error("[t][x][INFO] - fine\n[t][x][WARNING] - careful\n") is None
    bare = "noise\nTraceback (most recent call last):\n  File x\nValueError: bad\n\n"
    assert log_error(bare) == "Traceback (most recent call last):\n  File x\nValueError: bad"
    assert stderr_error(bare) == log_error(bare)
    assert stderr_error("all good\n") is None


def test_a_crash_leaves_its_traceback_in_the_job_log(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from omegaconf import OmegaConf

    import distill.pipeline
    from distill.cli.train import _train

    def crash(cfg: Any, overrides: Any = ()) -> None:
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(distill.pipeline, "train", crash)
    with pytest.raises(RuntimeError):
        _train.__wrapped__(OmegaConf.create({"teacher": {}}))  # type: ignore[attr-defined]
    logged = "\n".join(caplog.text.splitlines()[-3:])
    assert "Run failed" in caplog.text and "Traceback (most recent call last):" in caplog.text
    assert logged.endswith("RuntimeError: mat1 and mat2 shapes cannot be multiplied")
