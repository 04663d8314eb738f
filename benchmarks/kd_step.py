"""KD training step vs student-only step on the default recipe's models, and epochs per second.

    python benchmarks/kd_step.py [hydra overrides...]

The teacher forward pass is the expected extra cost of a KD step; the ratio shows how much.
With the teacher-output cache the teacher does not run at all in training: goal, an epoch with
cached teacher outputs within 1.1x of a student-only epoch.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from harness import interleaved_medians, print_table
from hydra import compose, initialize_config_dir

from distill.cli.train import CONF_DIR
from distill.config import build, build_named
from distill.losses import CrossEntropy, WeightedSum
from distill.module import DistillationModule
from distill.taps import FeatureTaps
from distill.teachers import FrozenTeacher, cached_teacher_outputs


def make_module(cfg, datamodule, with_teacher: bool, teacher_outputs=None) -> DistillationModule:
    student = build(cfg.student, "student")
    if with_teacher:
        loss = WeightedSum(build_named(cfg.loss, "loss"))
        teacher = build(cfg.teacher.model, "teacher.model")  # random weights time the same
    else:
        loss, teacher = WeightedSum({"ce": CrossEntropy()}), None
    return DistillationModule(
        student,
        loss,
        optimizer=build(cfg.optimizer, "optimizer"),
        num_classes=datamodule.num_classes,
        teacher=teacher,
        teacher_outputs=teacher_outputs,
    )


def step_runner(module: DistillationModule, batch):
    optimizer = module.optimizer_factory(module.trainable_parameters())
    module.train()
    module.log = lambda *args, **kwargs: None  # outside a Trainer there is nowhere to log

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        module.training_step(batch, 0).backward()
        optimizer.step()

    return step


def epochs_per_second(
    cfg, datamodule, with_teacher: bool, teacher_outputs=None, epochs: int = 3
) -> float:
    datamodule.return_indices = teacher_outputs is not None
    module = make_module(cfg, datamodule, with_teacher, teacher_outputs)
    trainer = pl.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    return epochs / (time.perf_counter() - started)


def main(overrides: list[str]) -> None:
    torch.manual_seed(0)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["paths.output_dir=unused", *overrides])
    datamodule = build(cfg.data, "data")
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    kd, plain = make_module(cfg, datamodule, True), make_module(cfg, datamodule, False)
    medians = interleaved_medians(
        {"kd": step_runner(kd, batch), "student_only": step_runner(plain, batch)}, rounds=200
    )
    kd_eps = epochs_per_second(cfg, datamodule, with_teacher=True)
    plain_eps = epochs_per_second(cfg, datamodule, with_teacher=False)
    with tempfile.TemporaryDirectory() as cache_dir:
        teacher = FrozenTeacher(build(cfg.teacher.model, "teacher.model"))
        taps = FeatureTaps(teacher.model, [], field="loss")
        outputs, _ = cached_teacher_outputs(
            teacher, taps, datamodule.train_dataset, cache_dir, {"benchmark": True}
        )
        cached_eps = epochs_per_second(cfg, datamodule, with_teacher=True, teacher_outputs=outputs)
    batch_size = batch[1].shape[0]
    print_table(
        f"KD step cost ({Path(sys.argv[0]).name}, batch {batch_size}, torch {torch.__version__},"
        f" {torch.get_num_threads()} threads)",
        ["measure", "KD", "student only", "time ratio KD / student only"],
        [
            [
                "train step (ms, median of 200)",
                1e3 * medians["kd"],
                1e3 * medians["student_only"],
                medians["kd"] / medians["student_only"],
            ],
            ["epochs per second (Lightning fit)", kd_eps, plain_eps, plain_eps / kd_eps],
            [
                "epochs per second, teacher outputs cached (goal: ratio <= 1.1)",
                cached_eps,
                plain_eps,
                plain_eps / cached_eps,
            ],
        ],
    )


if __name__ == "__main__":
    main(sys.argv[1:])
