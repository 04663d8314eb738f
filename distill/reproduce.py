"""Checking a finished run against its recipe's expected numbers: a PASS/FAIL table.

Before training, `check_expected_keys` refuses an expected key that the run's summary.json
will not hold (a typo, an int8 accuracy of a run without the export), so a reproduction never
trains for an hour to report that it had nothing to compare. After training, `compare` reads
each key from the summary and `write_reproduction` writes reproduce.json and reproduce.md.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from distill.assembly import AssembledRun
from distill.compression.sparsity import weight_sparsity
from distill.deploy.pte import INSTALL_HINT
from distill.deploy.pte import planned as pte_planned
from distill.errors import ConfigError
from distill.files import atomic_write, atomic_write_json
from distill.recipe import Expectation, Recipe
from distill.validate import is_real

REPRODUCE_JSON = "reproduce.json"
REPRODUCE_MD = "reproduce.md"

# Numbers every exported artifact's entry holds (deploy/artifacts.py: onnx_entry, measure).
MEASURED = ("bytes", "test_acc", "agreement", "latency_ms_bs1", "latency_ms_bs64")
# The artifacts the deployment export writes (not those a run without export has).
EXPORTED = ("compressed", "onnx_fp32", "onnx_int8", "onnx_int8_dynamic", "onnx_int8_ptq_static")
# The int8 QDQ artifacts, whose entries also count convs and int8 convs (deploy/kernels.py).
INT8_QDQ = ("onnx_int8", "onnx_int8_ptq_static")
# With export_executorch (auto: when executorch is installed).
PTE_EXPORTED = ("executorch_fp32", "executorch_int8")


def summary_metric_keys(run: AssembledRun) -> set[str]:
    """The dotted keys of the numbers this run's summary.json will hold (timing aside)."""
    keys = {
        "student.test_acc",
        "student.test_acc_top5",
        "student.params_total",
        "student.params_nonzero",
        "sparsity.global",
        "artifacts.student.bytes",
        "artifacts.student_state.bytes",
    }
    _, layers = weight_sparsity(run.student)
    keys |= {f"sparsity.layers.{name}" for name in layers}
    if run.teacher is not None:
        keys |= {"teacher.test_acc", "teacher.params_total", "student.agreement"}
    quantization = run.compression.quantization
    if quantization is not None:
        keys.add("sparsity.global_after_quantization")
    pruning = run.compression.pruning
    if pruning is not None and pruning.removes_channels:
        slim = ("bytes", "params", "macs", "params_dense", "macs_dense", "max_abs_diff")
        keys |= {f"artifacts.slim.{name}" for name in slim}
    if run.exports:
        exported = [name for name in EXPORTED if name != "onnx_int8_ptq_static"]
        if quantization is not None and quantization.activations:
            exported.append("onnx_int8_ptq_static")  # the post-training baseline of QAT
        keys |= {f"artifacts.{name}.{number}" for name in exported for number in MEASURED}
        keys |= {
            f"artifacts.{name}.{number}"
            for name in exported
            if name in INT8_QDQ
            for number in ("convs", "int8_convs")
        }
        keys |= {"artifacts.compressed.bytes_dense_fp32", "artifacts.compressed.ratio"}
        if pte_planned(run.cfg.get("export_executorch", "auto")):
            keys |= {f"artifacts.{name}.{number}" for name in PTE_EXPORTED for number in MEASURED}
            keys |= {
                "artifacts.executorch_fp32.max_abs_diff",
                "artifacts.executorch_int8.agreement_float",
                "artifacts.executorch_int8.pt2e_agreement",
            }
    if run.cfg.get("baseline"):
        accuracies = [
            key for key in keys if key.endswith(".test_acc") and key != "teacher.test_acc"
        ]
        keys |= {f"baseline.{part}.{key}" for key in accuracies for part in ("test_acc", "kd_gain")}
    return keys


def check_expected_keys(recipe: Recipe, quick: bool, run: AssembledRun) -> None:
    """Refuse, before training, an expected key this run's summary.json will not hold."""
    known = summary_metric_keys(run)
    block = "recipe.quick.expected" if quick else "recipe.expected"
    for key in recipe.expectations(quick):
        if key in known:
            continue
        hint = missing_metric_hint(key, known, run.exports)
        hint = f" ({hint})" if hint else ""
        raise ConfigError(
            f"{block}.{key}",
            recipe.expectations(quick)[key].value,
            f"a number this run's summary.json holds{hint}; it will hold: "
            + ", ".join(sorted(k for k in known if not k.startswith("sparsity.layers."))),
        )


def missing_metric_hint(key: str, known: set[str], exports: bool) -> str:
    """Why a run's summary.json will not hold `key`: the export is off, or a close key."""
    parts = key.split(".")
    exported = len(parts) > 1 and parts[0] == "artifacts" and parts[1] in EXPORTED + PTE_EXPORTED
    if exported and not exports:
        return "the export is off: export=false, or a fast_dev_run"
    if exported and parts[1] in PTE_EXPORTED:
        return (
            "no ExecuTorch export: export_executorch=false, or executorch is not installed "
            f"({INSTALL_HINT})"
        )
    close = difflib.get_close_matches(key, sorted(known), n=3, cutoff=0.6)
    return f"did you mean {', '.join(close)}?" if close else ""


@dataclass(frozen=True)
class Check:
    """One expected number against what the run obtained."""

    key: str
    expected: float
    tolerance: float
    obtained: float | None
    passed: bool

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "FAIL"


def lookup(summary: Mapping[str, Any], key: str) -> float | None:
    """The number at dotted `key` of a summary, None when absent or not a number."""
    value: Any = summary
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return float(value) if is_real(value) else None


def compare(expectations: Mapping[str, Expectation], summary: Mapping[str, Any]) -> list[Check]:
    """Every expected number checked against the summary (absent counts as FAIL)."""
    checks = []
    for key, expectation in expectations.items():
        obtained = lookup(summary, key)
        passed = obtained is not None and expectation.holds(obtained)
        checks.append(Check(key, expectation.value, expectation.tolerance, obtained, passed))
    return checks


def write_reproduction(
    run_dir: Path,
    recipe: Recipe,
    quick: bool,
    checks: list[Check],
    command: str,
    error: str | None = None,
) -> dict[str, Any]:
    """reproduce.json and reproduce.md in `run_dir`; the JSON's content."""
    passed = error is None and bool(checks) and all(check.passed for check in checks)
    result = {
        "recipe": recipe.name,
        "variant": "quick" if quick else "full",
        "verdict": "PASS" if passed else "FAIL",
        "command": command,
        "measured_on": recipe.measured_on,
        "source": recipe.source,
        "error": error,
        "checks": [{**asdict(check), "verdict": check.verdict} for check in checks],
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / REPRODUCE_JSON, result)
    text = markdown(result)
    atomic_write(run_dir / REPRODUCE_MD, lambda handle: handle.write(text.encode()))
    return result


def markdown(result: Mapping[str, Any]) -> str:
    """The reproduction as a Markdown table, also what distill-reproduce prints."""
    lines = [
        f"# Reproduction of `{result['recipe']}` ({result['variant']}): {result['verdict']}",
        "",
        f"Command: `{result['command']}`  ",
        f"Expected values measured on: {result['measured_on']}"
        + (f"; source: {result['source']}" if result.get("source") else ""),
        "",
    ]
    if result.get("error"):
        lines += [f"The run failed: {result['error']}", ""]
    lines += ["| metric | expected | obtained | tolerance | verdict |", "|---|---|---|---|---|"]
    for check in result["checks"]:
        obtained = check["obtained"]
        shown = "missing" if obtained is None else _number(obtained)
        lines.append(
            f"| {check['key']} | {_number(check['expected'])} | {shown} "
            f"| ±{_number(check['tolerance'])} | {check['verdict']} |"
        )
    return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return f"{value:.6g}"
