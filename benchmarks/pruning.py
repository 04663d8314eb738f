"""Pruning costs and payoffs, measured side by side in one run and reported as ratios.

    python benchmarks/pruning.py [step|slim|accuracy|all]      (default: all)

Everything runs single-threaded (`torch.set_num_threads(1)`): on small shared CPUs two threads
stall each other, which hides the effects measured here. Sections and their goals:

- `step`: a training step with mask parametrizations on every conv/linear weight (50% magnitude
  masks) against the same model without masks. Goal: time ratio masked / plain <= 1.1, i.e.
  masks add at most 10% to a step. Default-recipe student and CIFAR resnet20.
- `slim`: a student with 50% of its prunable channels zeroed (one-shot L1 channel pruning, as
  `PruningCallback` does in training), baked and physically slimmed by `remove_zero_channels`,
  against the dense model: eager forward latency at batch 1 and 64, next to the MACs ratio. The
  latency ratio should approach the MACs ratio (small layers and per-op overhead keep it above).
- `accuracy`: the default recipe run through `distill.pipeline.train`, dense and with AGP
  unstructured pruning to 90%, for the default student and one twice as wide. Goal: the sparse
  student's MNIST-1D test accuracy within 2 points of the dense one's. Takes minutes; the
  teacher trains once (cached under a temporary directory, or under $DISTILL_CACHE_DIR).
"""

from __future__ import annotations

import copy
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from harness import interleaved_medians, print_table
from torch import nn

from distill.compression import (
    ChannelPruning,
    OneShotSchedule,
    PruningCallback,
    attach_mask,
    bake_into,
    magnitude_mask,
    set_mask,
)
from distill.compression.selection import prunable_layer_names
from distill.config import build
from distill.deploy import remove_zero_channels
from distill.losses import soft_target_kd
from distill.models import resnet20
from recipes import compose_cfg, run_recipe

STEP_GOAL = 1.1  # masked step time / plain step time
ACCURACY_GOAL = 2.0  # points of test accuracy lost at 90% sparsity
SECTIONS = ("step", "slim", "accuracy")


def title(what: str) -> str:
    return f"{what} (torch {torch.__version__}, {torch.get_num_threads()} thread)"


# -- step ---------------------------------------------------------------------------------


def with_masks(model: nn.Module, sparsity: float = 0.5) -> nn.Module:
    """A copy of `model` with a magnitude mask on every conv/linear weight."""
    masked = copy.deepcopy(model)
    for name in prunable_layer_names(masked):
        layer = masked.get_submodule(name)
        attach_mask(layer, "weight")
        set_mask(layer, "weight", magnitude_mask(layer.weight, sparsity))
    return masked


def train_step(model: nn.Module, inputs: torch.Tensor, num_classes: int):
    """One KD step as DistillationModule takes it: 0.1 CE + 0.9 KD(T=4), backward, SGD."""
    labels = torch.randint(0, num_classes, (inputs.shape[0],))
    teacher_logits = torch.randn(inputs.shape[0], num_classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        logits = model(inputs)
        loss = 0.1 * F.cross_entropy(logits, labels)
        loss = loss + 0.9 * soft_target_kd(logits, teacher_logits, 4.0)
        loss.backward()
        optimizer.step()

    return step


def step_section() -> None:
    cfg = compose_cfg()
    torch.manual_seed(0)
    batch = cfg.data.batch_size
    cases = {
        f"default student (ConvNet1D), batch {batch}": (
            build(cfg.student, "student"),
            torch.randn(batch, *cfg.data.input_shape),
            cfg.data.num_classes,
        ),
        "resnet20 (CIFAR-10), batch 64": (resnet20(num_classes=10), torch.randn(64, 3, 32, 32), 10),
    }
    rows = []
    for name, (model, inputs, classes) in cases.items():
        plain, masked = (
            train_step(model, inputs, classes),
            train_step(with_masks(model), inputs, classes),
        )
        medians = interleaved_medians({"plain": plain, "masked": masked}, rounds=200, warmup=10)
        ratio = medians["masked"] / medians["plain"]
        verdict = f"{'yes' if ratio <= STEP_GOAL else 'NO'} (<= {STEP_GOAL})"
        rows.append([name, 1e3 * medians["plain"], 1e3 * medians["masked"], ratio, verdict])
    print_table(
        title("Training step with 50% masks vs without, median of 200 interleaved rounds"),
        ["model", "plain (ms)", "masked (ms)", "ratio masked / plain", "meets goal"],
        rows,
    )


# -- slim ---------------------------------------------------------------------------------


def slimmed(model: nn.Module, fresh: nn.Module, example: torch.Tensor):
    """Prune 50% of the channels as training does (one-shot L1), bake, remove zero channels."""
    pruning = PruningCallback(
        ChannelPruning(), OneShotSchedule(sparsity=0.5, at=0), keep_first_last_dense=True
    )
    pruning.attach(model, example)
    pruning.apply(model, t=0)
    dense = bake_into(model, fresh).eval()
    return dense, remove_zero_channels(dense, example)


def forward(model: nn.Module, inputs: torch.Tensor):
    def run() -> None:
        with torch.no_grad():
            model(inputs)

    return run


def slim_section() -> None:
    cfg = compose_cfg()
    torch.manual_seed(0)
    shape = tuple(cfg.data.input_shape)
    cases = {
        "resnet20 (CIFAR-10, 3x32x32)": (lambda: resnet20(num_classes=10), (3, 32, 32)),
        f"default student (ConvNet1D {list(cfg.student.channels)}, MNIST-1D {shape})": (
            lambda: build(cfg.student, "student"),
            shape,
        ),
    }
    rows = []
    for name, (make, input_shape) in cases.items():
        dense, report = slimmed(make(), make(), torch.randn(1, *input_shape))
        slim = report.model.eval()
        before, after = report.channels_before, report.channels_after
        cut = sum(after[layer] < before[layer] for layer in before)
        row = [name, f"{cut} of {len(before)}", report.macs_ratio, report.params_ratio]
        for batch, rounds in ((1, 200), (64, 40)):
            inputs = torch.randn(batch, *input_shape)
            variants = {"dense": forward(dense, inputs), "slim": forward(slim, inputs)}
            medians = interleaved_medians(variants, rounds=rounds, warmup=5)
            row.append(medians["slim"] / medians["dense"])
            row.append(f"{1e3 * medians['dense']:.3g} / {1e3 * medians['slim']:.3g}")
        rows.append(row)
    print_table(
        title("Slimmed (50% of prunable channels removed) vs dense forward, eager, eval, no_grad"),
        ["model", "layers slimmed", "MACs ratio slim / dense", "params ratio"]
        + [f"{what}, batch {b}" for b in (1, 64) for what in ("latency ratio", "ms dense / slim")],
        rows,
    )
    print(
        "\nThe latency ratio should approach the MACs ratio; per-op overhead keeps it above, most "
        "at batch 1 and for tiny models. Kept dense: the first and last layers and every layer "
        "coupled to them (in resnet20 the stem's residual stream through stage 1)."
    )


# -- accuracy -----------------------------------------------------------------------------


# The default student (3.5k parameters) and one twice as wide: 90% of a layer's weights is a
# different request of a 1,280-weight conv than of a 5,120-weight one.
STUDENTS = {
    "default student, channels [16,16,16]": [],
    "wider student, channels [32,32,32]": ["student.channels=[32,32,32]"],
}


def accuracy_section() -> None:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-pruning-") as tmp:
        root = Path(tmp)
        for index, (student, overrides) in enumerate(STUDENTS.items()):
            dense = run_recipe(root, f"dense{index}", "pruning=none", *overrides)
            sparse = run_recipe(
                root,
                f"sparse{index}",
                "pruning=agp_unstructured",
                "pruning.schedule.final_sparsity=0.9",
                *overrides,
            )
            drop = 100 * (dense["student"]["test_acc"] - sparse["student"]["test_acc"])
            layers = sparse["sparsity"]["layers"].items()
            rows.append(
                [
                    student,
                    f"{100 * dense['student']['test_acc']:.2f}",
                    f"{100 * sparse['student']['test_acc']:.2f}",
                    f"{drop:.2f}",
                    "yes" if drop <= ACCURACY_GOAL else "NO",
                    f"{sparse['sparsity']['global']:.2f}",
                    ", ".join(f"{layer} {value:.2f}" for layer, value in layers),
                ]
            )
    print_table(
        title("MNIST-1D test accuracy, distilled students, dense vs AGP unstructured 90%"),
        [
            "student",
            "dense acc (%)",
            "90% sparse acc (%)",
            "drop (points)",
            f"within {ACCURACY_GOAL:g} points",
            "global sparsity",
            "sparsity per layer",
        ],
        rows,
    )
    print(
        "\nagp_unstructured keeps the first and last layers dense (keep_first_last_dense), so "
        "the global sparsity is below 90%; the per-layer column shows the pruned ones."
    )


def main(argv: list[str]) -> None:
    choice = argv[0] if argv else "all"
    if choice not in (*SECTIONS, "all"):
        raise SystemExit(f"usage: python benchmarks/pruning.py [{'|'.join(SECTIONS)}|all]")
    torch.set_num_threads(1)
    runners = {"step": step_section, "slim": slim_section, "accuracy": accuracy_section}
    for section in SECTIONS if choice == "all" else (choice,):
        started = time.perf_counter()
        runners[section]()
        print(f"\n_{section}: {time.perf_counter() - started:.0f} s wall_")


if __name__ == "__main__":
    main(sys.argv[1:])
