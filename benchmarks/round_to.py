"""Channel counts that fit the kernels: `pruning.round_to` measured side by side.

    python benchmarks/round_to.py [--threads N] [--int8] [--models resnet20,mobilenetv2]

onnxruntime's CPU convolutions work on channels in blocks (NCHWc: 8 floats on AVX2, 16 on
AVX-512) and XNNPACK's kernels likewise; a slim layer whose channel count is not a multiple of
the block pads the remainder. This takes the CIFAR students of conf/student (resnet20 and
mobilenetv2, 10 classes, 3x32x32 random inputs) to 50% and 75% channel sparsity with
round_to in {1, 8, 16}: one-shot L1 `ChannelPruning` through `PruningCallback` on the seeded
random initialisation (fixed, arbitrary channel scores: latency does not care which channels
go), baked, slimmed (`remove_zero_channels`) and exported to ONNX fp32 (`export_onnx`); with
`--int8` also the QDQ int8 graph of the same student after QAT attach and calibration on random
batches, as benchmarks/deploy.py builds it. Every variant of a model, its dense model
included, is timed in onnxruntime interleaved round by round (`interleaved_medians`) at batch
1 and 64, with `--threads` threads for torch and onnxruntime alike (1 by default: on small
shared CPUs a second thread stalls on a busy neighbour).

The table gives each variant's MACs and median latency as ratios against round_to=1 at the
same sparsity, and the latency per MAC against round_to=1: rounding changes how many channels
survive (to the nearest multiple, `distill.compression.kept_channels`), so the time ratio mixes
"fewer or more MACs" with "MACs that fit the kernels"; the per-MAC ratio hints at the second,
but flatters the variant with more MACs (a smaller graph pays the same per-op overhead over
fewer MACs), so read the time ratio first. No goal is judged: the numbers back the advice in
the README (pruning.round_to). The machine is shared: the load average is printed per model.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort
import torch
from deploy_path import (
    CIFAR_SHAPE,
    budgeted_medians,
    calibrate,
    in_ort,
    int8_graph,
    load_note,
    make_student,
    quantize,
)
from deploy_path import timing_session as ort_session
from harness import print_table
from torch import nn

from distill.compression import (
    ChannelPruning,
    L1Score,
    OneShotSchedule,
    PruningCallback,
    bake_into,
)
from distill.deploy import remove_zero_channels
from distill.deploy.onnx_runtime import export_onnx

ROUND_TOS = (1, 8, 16)
SPARSITIES = (0.5, 0.75)
MODELS = ("resnet20", "mobilenetv2")
# (batch, most rounds, seconds of timing per model): batch 64 is slow on mobilenetv2.
BATCHES = ((1, 200, 20.0), (64, 20, 60.0))


@dataclass
class Variant:
    label: str
    sparsity: float
    round_to: int
    macs: float
    kept: float  # channels after / before, over the layers pruning could cut
    model: nn.Module
    paths: dict[str, Path]

    def blocked(self) -> str:
        """How many convs have output channels a multiple of 8, and of 16."""
        convs = [m.out_channels for m in self.model.modules() if isinstance(m, nn.Conv2d)]
        eight, sixteen = sum(c % 8 == 0 for c in convs), sum(c % 16 == 0 for c in convs)
        return f"{eight}/{sixteen} of {len(convs)}"


def slim_variant(name: str, sparsity: float, round_to: int, int8: bool, root: Path) -> Variant:
    example = torch.randn(1, *CIFAR_SHAPE)
    model = make_student(name)
    pruning = PruningCallback(
        ChannelPruning(L1Score()), OneShotSchedule(sparsity=sparsity, at=0), round_to=round_to
    )
    pruning.attach(model, example)
    pruning.apply(model, t=0)  # the final (and only) update
    qat = None
    if int8:
        qat = quantize(model, example)
        calibrate(model, qat, CIFAR_SHAPE)
    report = remove_zero_channels(bake_into(model, make_student(name)).eval(), example)
    slim = report.model.eval()
    label = f"{sparsity:.0%} r{round_to}"
    stem = f"{name}_{sparsity}_{round_to}"
    export_example = torch.randn(2, *CIFAR_SHAPE)
    paths = {"fp32": export_onnx(slim, export_example, root / f"{stem}_fp32.onnx")}
    if qat is not None:
        paths["int8"] = export_onnx(
            int8_graph(slim, model, qat), export_example, root / f"{stem}_int8.onnx"
        )
    before = sum(report.channels_before[layer] for layer in pruning.layers)
    after = sum(report.channels_after[layer] for layer in pruning.layers)
    return Variant(label, sparsity, round_to, report.macs_after, after / before, slim, paths)


def dense_variant(name: str, int8: bool, root: Path) -> Variant:
    example = torch.randn(1, *CIFAR_SHAPE)
    model = make_student(name)
    paths = {"fp32": export_onnx(model, torch.randn(2, *CIFAR_SHAPE), root / f"{name}_fp32.onnx")}
    if int8:
        qat = quantize(model, example)
        calibrate(model, qat, CIFAR_SHAPE)
        plain = bake_into(model, make_student(name)).eval()
        paths["int8"] = export_onnx(
            int8_graph(plain, model, qat), torch.randn(2, *CIFAR_SHAPE), root / f"{name}_int8.onnx"
        )
    report = remove_zero_channels(make_student(name), example)  # nothing to remove: the MACs
    return Variant("dense", 0.0, 1, report.macs_before, 1.0, report.model, paths)


def measure(name: str, threads: int, int8: bool) -> None:
    print(f"\n_{name}: {load_note()}_")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-round-to-") as tmp:
        root = Path(tmp)
        variants = [dense_variant(name, int8, root)] + [
            slim_variant(name, sparsity, round_to, int8, root)
            for sparsity in SPARSITIES
            for round_to in ROUND_TOS
        ]
        print(
            f"_{name}: built and exported {len(variants)} variants in "
            f"{time.perf_counter() - started:.0f} s_"
        )
        precisions = ("fp32", "int8") if int8 else ("fp32",)
        sessions = {
            (variant.label, precision): ort_session(variant.paths[precision], threads)
            for variant in variants
            for precision in precisions
        }
        medians: dict[tuple[str, str, int], float] = {}
        rounds: dict[int, int] = {}
        for batch, max_rounds, budget_s in BATCHES:
            inputs = torch.randn(batch, *CIFAR_SHAPE)
            timed, rounds[batch] = budgeted_medians(
                {
                    f"{label}|{precision}": in_ort(session, inputs)
                    for (label, precision), session in sessions.items()
                },
                max_rounds,
                budget_s,
            )
            for key, seconds in timed.items():
                label, precision = key.split("|")
                medians[label, precision, batch] = seconds
    print_results(name, variants, medians, precisions, rounds, threads)
    print(f"\n_{name}: {time.perf_counter() - started:.0f} s wall_")


def print_results(
    name: str,
    variants: list[Variant],
    medians: dict[tuple[str, str, int], float],
    precisions: tuple[str, ...],
    rounds: dict[int, int],
    threads: int,
) -> None:
    """One row per variant: its MACs and latencies, as ratios to round_to=1 at its sparsity."""
    by_key = {(v.sparsity, v.round_to): v for v in variants}
    rows = []
    for variant in variants:
        base = by_key.get((variant.sparsity, 1), variant)
        row: list[object] = [
            variant.label,
            f"{variant.kept:.3f}",
            variant.blocked(),
            f"{variant.macs / 1e6:.2f}",
            f"{variant.macs / base.macs:.3f}",
        ]
        for precision in precisions:
            for batch, _, _ in BATCHES:
                ms = 1e3 * medians[variant.label, precision, batch]
                ratio = (
                    medians[variant.label, precision, batch] / medians[base.label, precision, batch]
                )
                per_mac = ratio / (variant.macs / base.macs)
                row += [f"{ms:.3g}", f"{ratio:.3f}", f"{per_mac:.3f}"]
        rows.append(row)
    header = ["variant", "channels kept", "convs %8/%16", "MMACs/example", "MACs vs r1"]
    for precision in precisions:
        for batch, _, _ in BATCHES:
            header += [
                f"{precision} b{batch} ms",
                f"b{batch} vs r1",
                f"b{batch} per MAC vs r1",
            ]
    print_table(
        f"{name}: onnxruntime latency by round_to ({threads} thread"
        f"{'s' if threads > 1 else ''}; medians of {rounds[1]} rounds at batch 1, "
        f"{rounds[64]} at batch 64, all variants interleaved; ratios < 1 are faster)",
        header,
        rows,
    )


def cpu_note() -> str:
    """The CPU's model and its widest vector unit, which sets onnxruntime's channel block."""
    info = Path("/proc/cpuinfo").read_text() if os.path.exists("/proc/cpuinfo") else ""
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in info.splitlines()
            if line.startswith("model name")
        ),
        platform.machine(),
    )
    isa = "AVX-512" if " avx512f" in info else "AVX2" if " avx2" in info else "no AVX2"
    return f"{model} ({isa}), {os.cpu_count()} CPUs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--int8", action="store_true", help="also time the int8 QDQ graphs")
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"_torch {torch.__version__}, onnxruntime {ort.__version__}, {cpu_note()}, "
        f"{args.threads} thread(s)_"
    )
    for name in args.models.split(","):
        measure(name, args.threads, args.int8)


if __name__ == "__main__":
    main()
