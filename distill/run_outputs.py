"""What a trained run leaves in its directory, and the facts summary.json records about it."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn

from distill.assembly import AssembledRun
from distill.deploy import save_slim
from distill.deploy.run_dir import STUDENT_STATE_FILE, TrainedRun, save_run_config
from distill.files import atomic_write
from distill.summary import (
    artifact,
    count_nonzero_parameters,
    count_parameters,
    weight_sparsity,
)


def save_student(
    run: AssembledRun, trained: TrainedRun, run_dir: Path
) -> dict[str, dict[str, Any]]:
    """Write the trained student's files; returns their summary entries.

    `student.pt` is plain: effective (masked) weights under the model's own keys, loadable into
    a freshly built student with no distill code in the way. `student_state.pt` is the student
    as trained (masks, fake-quant, observers): what distill-export starts from.
    """
    student, plain = run.student, trained.plain
    student_path = atomic_write(
        run_dir / "student.pt", lambda handle: torch.save(plain.state_dict(), handle)
    )
    state_path = atomic_write(
        run_dir / STUDENT_STATE_FILE, lambda handle: torch.save(student.state_dict(), handle)
    )
    save_run_config(run.cfg, run_dir)
    artifacts = {
        "student": artifact(student_path, run_dir),
        "student_state": artifact(state_path, run_dir),
    }
    pruning = run.compression.pruning
    if pruning is not None and pruning.removes_channels:
        example = run.datamodule.example_input_batch(2)
        artifacts["slim"] = save_slim(trained.slim, example, run_dir)
    checkpoint = run.trainer.checkpoint_callback
    if isinstance(checkpoint, ModelCheckpoint):
        if checkpoint.best_model_path:
            artifacts["checkpoint_best"] = artifact(Path(checkpoint.best_model_path), run_dir)
        if checkpoint.last_model_path:
            artifacts["checkpoint_last"] = artifact(Path(checkpoint.last_model_path), run_dir)
    return artifacts


def best_checkpoint_to_test(run: AssembledRun) -> str | None:
    """The checkpoint `trainer.test` should load: the best validation one, unless pruning or
    QAT ran, whose best score may predate the final sparsity or quantization; then the
    student that counts is the one at the end (None)."""
    if run.compression.callbacks:
        return None
    checkpoint = run.trainer.checkpoint_callback
    best = checkpoint.best_model_path if isinstance(checkpoint, ModelCheckpoint) else ""
    return best or None


def student_facts(results: Mapping[str, float], plain: nn.Module, target: str) -> dict[str, Any]:
    return {
        "target": target,
        "test_acc": results["test/acc"],
        "test_acc_top5": results.get("test/acc_top5"),
        "agreement": results.get("test/agreement"),
        "params_total": count_parameters(plain),
        "params_nonzero": count_nonzero_parameters(plain),
    }


def sparsity_facts(run: AssembledRun) -> dict[str, Any]:
    """Pruning sparsity counts the zeros the masks made, on the float weights; quantization
    rounds a few more small weights to zero, counted separately."""
    quantization = run.compression.quantization
    quantized_zeros = weight_sparsity(run.student)[0] if quantization is not None else None
    with (
        quantization.float_weights(run.student)
        if quantization is not None
        else contextlib.nullcontext()
    ):
        global_sparsity, layers = weight_sparsity(run.student)
    return {
        "global": global_sparsity,
        "layers": layers,
        "global_after_quantization": quantized_zeros,
    }
