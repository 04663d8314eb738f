"""Deployment payoffs, measured side by side in one run and reported as ratios against goals.

    python benchmarks/deploy.py [latency|ort|size|step|accuracy|mobile|all]   (default: all)

Every table is Markdown; each goal is judged PASS or MISS. Sections and their goals:

- `latency` (deploy_latency.py): ResNet-20 and MobileNetV2 (CIFAR-10 shapes) at 50% and 75% of
  channels removed, batch 1 and 64, 2 threads and 1: dense fp32 torch eager against the slim
  student in onnxruntime (fp32, int8) and in ExecuTorch (XNNPACK fp32, int8), with the
  speed-up / MACs ratio and the int8 kernels of the optimized graph. Goal: the fastest
  deployed file >= 10x faster than dense fp32 eager at batch 64.
- `ort` (ort_settings.py): onnxruntime's settings one at a time (optimization level, NCHWc,
  threads, static vs dynamic batch, per-channel vs per-tensor int8 weights, spinning) on the
  slim students at 75%. No goal: it decides what `OrtModel` uses.
- `size`: resnet20 (0.27M weights) at 90% unstructured magnitude sparsity with int8 QAT
  weights: `save_compressed` against `torch.save` of the baked fp32 state dict, next to the fp32
  and int8 ONNX files, and a row with 4-bit weight sharing (k-means, 16 shared values per
  layer). Goal: the compressed int8 file >= 10x smaller than the dense fp32 checkpoint.
- `step`: a KD training step (forward, 0.1 CE + 0.9 KD at T=4, backward, SGD step) of the plain
  student against the same student with 50% magnitude masks, weight fake-quant and activation
  fake-quant (enabled and observing, BatchNorm folded and frozen, as QAT trains), built up one
  piece at a time to show where the time goes. Default-recipe student (teacher outputs cached,
  as that recipe trains) and resnet20 (a frozen resnet56 teacher runs every step, as CIFAR
  training with augmentation needs; its share is timed too). Also timed, interleaved with the
  rest: QAT with activation fake-quant as it was before issue 11 (`ActivationFakeQuant.
  reference_forward`: 0-d tensor qparams, torch's scalar-loop kernel; the same numbers), so one
  run shows the ratio before and after. Goal: ratio <= 1.3.
- `accuracy`: the default recipe (channel pruning + int8 QAT), shortened to 30 epochs, run
  through `distill.pipeline.train` with export; the int8 ONNX file's MNIST-1D test accuracy
  against the dense fp32 student's in torch. Goal: within 1 point. Takes minutes; the teacher
  trains once (cached under a temporary directory, or under $DISTILL_CACHE_DIR).
- `mobile`: the MobileNet recipe (`recipes/mnist1d_mobilenetv2.yaml`: a MobileNetV2 student on
  MNIST-1D, 75% of its channels removed, int8 QAT) and the same student trained dense in float;
  every exported file's accuracy against that dense float student and its speed-up over the
  dense fp32 student in torch eager, from the run's report. Goal: a file >= 10x faster at batch
  64 within 1 point. Trains two students (~20 minutes on 2 cores).

Latency runs with the thread counts above, as many rounds as fit a time budget; `step` runs
single-threaded, as benchmarks/pruning.py (two threads on small shared CPUs stall each other).
The load average at the start of each section is printed: the machine is shared, and ratios are
only as good as the quiet they get.
"""

from __future__ import annotations

import copy
import io
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from deploy_latency import latency_section
from deploy_path import CIFAR_SHAPE, calibrate, eager, int8_graph, load_note, quantize
from harness import interleaved_medians, print_table
from ort_settings import ort_section
from torch import Tensor, nn

from distill.compression import (
    Magnitude,
    OneShotSchedule,
    PruningCallback,
    QuantizationCallback,
    bake_into,
)
from distill.compression.activation_sites import observers_of
from distill.compression.batchnorm import freeze_batchnorm
from distill.config import build
from distill.deploy.compressed import load_compressed, save_compressed
from distill.deploy.onnx_runtime import export_onnx
from distill.losses import soft_target_kd
from distill.models import resnet20, resnet56
from recipes import compose_cfg, run_recipe

SIZE_GOAL = 10.0  # dense fp32 checkpoint bytes / compressed bytes
STEP_GOAL = 1.3  # QAT step time (masks + weight and activation fake-quant) / plain step time
ACCURACY_GOAL = 1.0  # points of test accuracy the int8 ONNX file may lose
SECTIONS = ("latency", "ort", "size", "step", "accuracy", "mobile")
RESNET20_CONFIG = {"_target_": "distill.models.resnet20", "num_classes": 10}


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def make_resnet20() -> nn.Module:
    return resnet20(num_classes=10)


# -- size ---------------------------------------------------------------------------------


def torch_save_bytes(model: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def sparse_int8_resnet20(example: Tensor, **settings) -> tuple[nn.Module, QuantizationCallback]:
    """resnet20, 90% unstructured magnitude sparsity (first/last dense), int8 QAT on."""
    model = make_resnet20()
    pruning = PruningCallback(Magnitude(), OneShotSchedule(sparsity=0.9, at=0))
    pruning.attach(model, example)
    pruning.apply(model, t=0)
    qat = quantize(model, example, **settings)
    return model, qat


def size_section() -> None:
    print(f"\n_size: {load_note()}_")
    torch.manual_seed(0)
    example = torch.randn(1, *CIFAR_SHAPE)
    int8_model, qat = sparse_int8_resnet20(example)
    calibrate(int8_model, qat, CIFAR_SHAPE)
    shared_model, _ = sparse_int8_resnet20(
        example, activations=False, weight_sharing={"bits": 4, "epoch": 0}
    )
    baked = bake_into(int8_model, make_resnet20()).eval()
    dense_bytes = torch_save_bytes(baked)
    params = sum(p.numel() for p in baked.parameters())
    weights = sum(baked.get_submodule(name).weight.numel() for name in qat.layers)
    zeros = sum(int((baked.get_submodule(name).weight == 0).sum()) for name in qat.layers)

    rows = [
        ["dense fp32 checkpoint (torch.save of the baked state dict)", dense_bytes, "1", "", ""]
    ]
    compressed_ratio = 0.0
    with tempfile.TemporaryDirectory(prefix="bench-deploy-") as tmp:
        root = Path(tmp)
        for label, model, file in (
            ("compressed: 90% sparse, int8 weights", int8_model, "int8.dcmp"),
            ("compressed: 90% sparse, 4-bit shared weights (+ int8)", shared_model, "shared.dcmp"),
        ):
            entry = save_compressed(model, root / file, RESNET20_CONFIG)
            restored = load_compressed(root / file)
            plain = bake_into(model, make_resnet20())
            exact = all(
                torch.equal(value, restored.state_dict()[key])
                for key, value in plain.state_dict().items()
            )
            encodings = ", ".join(f"{k} {n}" for k, n in entry["encodings"].items() if n)
            ratio = dense_bytes / entry["bytes"]
            if file == "int8.dcmp":
                compressed_ratio = ratio
            rows.append([label, entry["bytes"], f"{ratio:.3g}", encodings, f"exact: {exact}"])
        fp32_path = export_onnx(baked, example.repeat(2, 1, 1, 1), root / "fp32.onnx")
        int8_path = export_onnx(
            int8_graph(baked, int8_model, qat), example.repeat(2, 1, 1, 1), root / "int8.onnx"
        )
        for label, path in (("fp32 ONNX", fp32_path), ("int8 ONNX (QDQ)", int8_path)):
            size = path.stat().st_size
            rows.append([label, size, f"{dense_bytes / size:.3g}", "", ""])
    print_table(
        f"File sizes, resnet20 (10 classes, {params:,} parameters, {weights:,} conv/linear "
        f"weights, {zeros / weights:.1%} of them zero)",
        ["artifact", "bytes", "dense fp32 / this", "encodings", "restores the baked student"],
        rows,
    )
    print_table(
        "Size goal",
        ["goal", "measured", "target", "verdict"],
        [
            [
                "compressed (90% sparse, int8) vs dense fp32 checkpoint",
                f"{compressed_ratio:.3g}x smaller",
                f">= {SIZE_GOAL:g}x",
                verdict(compressed_ratio >= SIZE_GOAL),
            ]
        ],
    )


# -- step ---------------------------------------------------------------------------------


def kd_step(
    model: nn.Module,
    inputs: Tensor,
    num_classes: int,
    teacher: nn.Module | None,
    freeze_bn: bool = False,
):
    """One KD step as DistillationModule takes it: 0.1 CE + 0.9 KD(T=4), backward, SGD.

    With `teacher`, it runs frozen (eval, no grad) on every step; without, the teacher's logits
    are fixed, as the default recipe's teacher-output cache serves them.
    """
    labels = torch.randint(0, num_classes, (inputs.shape[0],))
    cached_logits = torch.randn(inputs.shape[0], num_classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    if freeze_bn:  # QAT freezes BatchNorm from its BatchNorm epoch on
        freeze_batchnorm(model)

    def step() -> None:
        if teacher is not None:
            with torch.no_grad():
                teacher_logits = teacher(inputs)
        else:
            teacher_logits = cached_logits
        optimizer.zero_grad(set_to_none=True)
        logits = model(inputs)
        loss = 0.1 * F.cross_entropy(logits, labels)
        loss = loss + 0.9 * soft_target_kd(logits, teacher_logits, 4.0)
        loss.backward()
        optimizer.step()

    return step


def with_masks(model: nn.Module, example: Tensor) -> nn.Module:
    """A copy with 50% magnitude masks on every layer but the first and last (training's way)."""
    masked = copy.deepcopy(model)
    pruning = PruningCallback(Magnitude(), OneShotSchedule(sparsity=0.5, at=0))
    pruning.attach(masked, example)
    pruning.apply(masked, t=0)
    return masked


def with_qat(model: nn.Module, example: Tensor, activations: bool = True) -> nn.Module:
    """A copy with 50% masks, int8 weight fake-quant and (unless `activations=False`) activation
    fake-quant, as QAT trains after its start epoch: BatchNorm folded and frozen, observers
    observing.

    A fresh copy of the plain model each time: a deep copy of a quantized student would keep
    forward hooks that update the original's observers.
    """
    qat_model = with_masks(model, example)
    quantization = quantize(qat_model, example, activations=activations)
    if not quantization.layers or not quantization.folded:
        raise RuntimeError("weight fake-quant was not attached, or BatchNorm not folded")
    observers = observers_of(qat_model).values()
    if activations and not observers:
        raise RuntimeError("activation fake-quant was not attached")
    if not all(bool(o.enabled) and bool(o.observing) for o in observers):
        raise RuntimeError("activation fake-quant is not enabled and observing")
    return qat_model


STEP_VARIANTS = {
    "plain": "plain (ms)",
    "masks": "+ 50% masks (ms)",
    "weights": "+ weight fake-quant (ms)",
    "qat": "+ activation fake-quant = QAT (ms)",
    "qat_reference": "QAT, activation fake-quant before issue 11 (ms)",
    "qat_still": "QAT, observers not updating (ms)",
}
# quantization.observer_interval shown in the table: a step updates the observers once in K.
OBSERVER_INTERVAL = 8


def with_reference_fake_quant(model: nn.Module) -> nn.Module:
    """`model` (a QAT student) with each observer computing as before issue 11."""
    for observer in observers_of(model).values():
        observer.forward = observer.reference_forward  # type: ignore[method-assign]
    return model


def with_still_observers(model: nn.Module, inputs: Tensor) -> nn.Module:
    """`model` (a QAT student) after one observing forward, its observers then kept still: a
    step between two updates of `quantization.observer_interval`, or after
    `observer_freeze_epoch`."""
    model.train()
    freeze_batchnorm(model)
    with torch.no_grad():
        model(inputs)
    for observer in observers_of(model).values():
        observer.observing.fill_(False)
    return model


def step_section() -> None:
    print(f"\n_step: {load_note()}_")
    torch.set_num_threads(1)
    cfg = compose_cfg()
    torch.manual_seed(0)
    batch = cfg.data.batch_size
    teacher = resnet56(num_classes=10).eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    cases = {
        f"default student (ConvNet1D), batch {batch}, teacher outputs cached": (
            build(cfg.student, "student"),
            torch.randn(batch, *cfg.data.input_shape),
            cfg.data.num_classes,
            None,
            200,
        ),
        "resnet20 (CIFAR-10), batch 64, frozen resnet56 teacher": (
            make_resnet20(),
            torch.randn(64, *CIFAR_SHAPE),
            10,
            teacher,
            15,
        ),
    }
    rows, goal_rows = [], []
    for name, (model, inputs, classes, frozen, rounds) in cases.items():
        example = inputs[:2]
        students = {
            "plain": model,
            "masks": with_masks(model, example),
            "weights": with_qat(model, example, activations=False),
            "qat": with_qat(model, example),
            "qat_reference": with_reference_fake_quant(with_qat(model, example)),
            "qat_still": with_still_observers(with_qat(model, example), inputs),
        }
        variants = {
            key: kd_step(student, inputs, classes, frozen, freeze_bn=key not in ("plain", "masks"))
            for key, student in students.items()
        }
        if frozen is not None:
            variants["teacher"] = eager(frozen, inputs)
        medians = interleaved_medians(variants, rounds=rounds, warmup=2)
        ratio = medians["qat"] / medians["plain"]
        reference_ratio = medians["qat_reference"] / medians["plain"]
        teacher_s = medians.get("teacher", 0.0)
        student_only = (medians["qat"] - teacher_s) / (medians["plain"] - teacher_s)
        k = OBSERVER_INTERVAL
        interval_ratio = (medians["qat"] + (k - 1) * medians["qat_still"]) / k / medians["plain"]
        rows.append(
            [name, rounds]
            + [f"{1e3 * medians[key]:.3g}" for key in STEP_VARIANTS]
            + [
                f"{1e3 * teacher_s:.3g}" if frozen is not None else "0 (cached)",
                ratio,
                reference_ratio,
                student_only,
                interval_ratio,
            ]
        )
        goal_rows.append(
            [
                f"QAT step / plain step, {name.split(',')[0]}",
                f"{ratio:.3g}",
                f"<= {STEP_GOAL:g}",
                verdict(ratio <= STEP_GOAL),
            ]
        )
    print_table(
        "KD training step (forward, CE + KD, backward, SGD), plain student vs QAT, built up "
        f"one piece at a time; 1 thread, torch {torch.__version__}, median of interleaved rounds",
        [
            "model",
            "rounds",
            *STEP_VARIANTS.values(),
            "of which teacher forward (ms)",
            "ratio QAT / plain",
            "same, before issue 11",
            "ratio without the teacher",
            f"ratio with observer_interval={OBSERVER_INTERVAL}",
        ],
        rows,
    )
    print(
        "\nThe masks column trains BatchNorm; the two fake-quant columns have it folded and "
        "frozen, as QAT does from its start epoch (weight fake-quant alone: "
        "QuantizationCallback(activations=False)). The observer_interval column averages one "
        f"observing step with {OBSERVER_INTERVAL - 1} steps of still observers (opt-in: it "
        "changes the numbers a run reaches)."
    )
    print_table("Step goal", ["goal", "measured", "target", "verdict"], goal_rows)


# -- accuracy -----------------------------------------------------------------------------

SHORT_RECIPE = (
    "trainer.max_epochs=30",
    "pruning.schedule.start=2",
    "pruning.schedule.num_updates=12",
    "quantization.start_epoch=20",
    "quantization.observer_freeze_epoch=27",
    "export=true",
)


def percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f}"


def accuracy_section() -> None:
    print(f"\n_accuracy: {load_note()}_")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench-deploy-") as tmp:
        summary = run_recipe(Path(tmp), "default", *SHORT_RECIPE)
    rows = summary["deployment"]
    student = next(row for row in rows if row["name"] == "student")
    int8 = summary["artifacts"]["onnx_int8"]
    drop = 100 * (student["test_acc"] - int8["test_acc"])
    print_table(
        "Deployment rows of the default recipe (channel_l1 50% + int8 QAT), 30 epochs, "
        "MNIST-1D test set",
        ["name", "runtime", "test acc (%)", "agreement (%)", "bytes", "latency bs64 (ms)"],
        [
            [
                row["name"],
                row.get("runtime", ""),
                percent(row.get("test_acc")),
                percent(row.get("agreement")),
                "" if row.get("bytes") is None else row["bytes"],
                "" if row.get("latency_ms_bs64") is None else f"{row['latency_ms_bs64']:.3g}",
            ]
            for row in rows
        ],
    )
    timing = summary["timing"]
    print(
        f"\nLightning test acc of the fake-quant student: "
        f"{percent(summary['student']['test_acc'])}%; int8 method: {int8.get('method')}; "
        f"int8 opt-level agreement {int8.get('opt_agreement')}; fit {timing['fit_s']:.0f} s, "
        f"teacher {timing['teacher_s']:.0f} s, export {timing.get('export_s', 0):.0f} s."
    )
    print_table(
        "Accuracy goal",
        ["goal", "measured", "target", "verdict"],
        [
            [
                "int8 ONNX test acc vs dense fp32 student (torch)",
                f"{percent(int8['test_acc'])} vs {percent(student['test_acc'])} "
                f"({drop:+.2f} points lost)",
                f"<= {ACCURACY_GOAL:g} point lost",
                verdict(drop <= ACCURACY_GOAL),
            ]
        ],
    )


# -- mobile -------------------------------------------------------------------------------

MOBILE_RECIPE = "mnist1d_mobilenetv2"
MOBILE_SPEEDUP_GOAL = 10.0  # dense fp32 eager student / deployed file, batch 64


def ratio_cell(value: float | None) -> str:
    return "" if value is None else f"{value:.3g}x"


def mobile_section() -> None:
    """The MobileNet recipe as `distill-train recipe=mnist1d_mobilenetv2` runs it (channels
    removed, int8 QAT, every artifact exported and measured), next to the same student trained
    dense and in float (`pruning=none quantization=none`): every artifact's accuracy against
    that dense float student, and its speed-up over the dense fp32 student in torch eager (the
    report's baseline row, which has the dense student's shapes)."""
    print(f"\n_mobile: {load_note()}_")
    recipe = f"recipe={MOBILE_RECIPE}"
    with tempfile.TemporaryDirectory(prefix="bench-deploy-") as tmp:
        root = Path(tmp)
        dense_float = ("pruning=none", "quantization=none", "export=false")
        dense = run_recipe(root, "dense", recipe, *dense_float)
        summary = run_recipe(root, MOBILE_RECIPE, recipe)
    dense_acc = dense["student"]["test_acc"]
    rows = summary["deployment"]
    table = []
    for row in rows:
        acc = row.get("test_acc")
        table.append(
            [
                row["name"],
                row.get("runtime", ""),
                percent(acc),
                "" if acc is None else f"{100 * (acc - dense_acc):+.2f}",
                "" if row.get("bytes") is None else row["bytes"],
                "" if row.get("latency_ms_bs64") is None else f"{row['latency_ms_bs64']:.3g}",
                ratio_cell(row.get("speedup_bs64")),
                ratio_cell(row.get("speedup_bs1")),
                ratio_cell(row.get("macs_ratio")),
                ""
                if row.get("speedup_per_macs_ratio_bs64") is None
                else f"{row['speedup_per_macs_ratio_bs64']:.3g}",
            ]
        )
    print_table(
        f"{MOBILE_RECIPE}: every artifact against the dense float student "
        f"({percent(dense_acc)}% test accuracy, the same recipe with pruning=none "
        "quantization=none) and the dense fp32 student in torch eager (speed-ups)",
        [
            "artifact",
            "runtime",
            "test acc (%)",
            "vs dense float student (points)",
            "bytes",
            "latency bs64 (ms)",
            "speed-up bs64",
            "speed-up bs1",
            "MACs ratio",
            "speed-up / MACs ratio, bs64",
        ],
        table,
    )
    recommended = summary.get("deployment_recommendation") or {}
    print(f"\nRecommendation of the report: {recommended.get('reason', 'none')}")
    within = [
        row
        for row in rows
        if row.get("exported")
        and row.get("test_acc") is not None
        and row.get("speedup_bs64") is not None
        and 100 * (dense_acc - row["test_acc"]) <= ACCURACY_GOAL + 1e-9
    ]
    best = max(within, key=lambda row: row["speedup_bs64"], default=None)
    measured = (
        "no exported file within 1 point"
        if best is None
        else f"{best['name']}: {best['speedup_bs64']:.3g}x, "
        f"{100 * (best['test_acc'] - dense_acc):+.2f} points"
    )
    print_table(
        "MobileNet goal",
        ["goal", "measured", "target", "verdict"],
        [
            [
                "fastest exported file within 1 point of the dense float student, speed-up over "
                "the dense fp32 student in torch eager at batch 64",
                measured,
                f">= {MOBILE_SPEEDUP_GOAL:g}x at <= {ACCURACY_GOAL:g} point lost",
                verdict(best is not None and best["speedup_bs64"] >= MOBILE_SPEEDUP_GOAL),
            ]
        ],
    )


def main(argv: list[str]) -> None:
    choice = argv[0] if argv else "all"
    if choice not in (*SECTIONS, "all"):
        raise SystemExit(f"usage: python benchmarks/deploy.py [{'|'.join(SECTIONS)}|all]")
    torch.set_num_threads(1)
    runners = {
        "latency": latency_section,
        "ort": ort_section,
        "size": size_section,
        "step": step_section,
        "accuracy": accuracy_section,
        "mobile": mobile_section,
    }
    started_all = time.perf_counter()
    for section in SECTIONS if choice == "all" else (choice,):
        started = time.perf_counter()
        runners[section]()
        print(f"\n_{section}: {time.perf_counter() - started:.0f} s wall_")
    print(f"\n_total: {time.perf_counter() - started_all:.0f} s wall_")


if __name__ == "__main__":
    main(sys.argv[1:])
