"""Per-loss training step cost relative to KD alone, on the default recipe's models.

    python benchmarks/losses.py [hydra overrides...]

Every loss config in conf/loss/ is paired with cross-entropy, as its recipe does, and timed side
by side with `ce + kd` (interleaved rounds, median): the ratio is what a method costs per step
over plain KD on the same student and teacher.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from harness import interleaved_medians, print_table
from hydra import compose, initialize_config_dir

from distill.cli.train import CONF_DIR
from distill.config import build, build_named
from distill.losses import WeightedSum
from distill.module import DistillationModule


def step_for(cfg, loss_names: list[str], datamodule):
    """A closure running one optimizer step of the default student with these loss terms."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        run = compose("train", overrides=[f"loss=[{','.join(loss_names)}]", *cfg])
    torch.manual_seed(0)
    loss = WeightedSum(build_named(run.loss, "loss"))
    student = build(run.student, "student")
    teacher = build(run.teacher.model, "teacher.model")
    module = DistillationModule(
        student,
        loss,
        optimizer=build(run.optimizer, "optimizer"),
        num_classes=datamodule.num_classes,
        teacher=teacher,
        example_inputs=datamodule.example_input_batch(2),
        num_train_samples=len(datamodule.train_dataset),
    )
    datamodule.return_indices = module.requires_indices
    module.log = lambda *args, **kwargs: None  # outside a Trainer there is nowhere to log
    module.on_fit_start()
    optimizer = module.optimizer_factory(module.trainable_parameters())
    module.train()
    batch = next(iter(datamodule.train_dataloader()))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        module.training_step(batch, 0).backward()
        optimizer.step()

    return step


def main(overrides: list[str]) -> None:
    torch.set_num_threads(1)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["paths.output_dir=unused", *overrides])
    datamodule = build(cfg.data, "data")
    datamodule.setup("fit")
    datamodule.return_indices = True  # CRD's memory bank needs them; the others ignore them
    names = sorted(p.stem for p in (CONF_DIR / "loss").glob("*.yaml") if p.stem not in {"ce", "kd"})
    base = ["paths.output_dir=unused", *overrides]
    rows = []
    for name in names:
        medians = interleaved_medians(
            {
                "kd": step_for(base, ["ce", "kd"], datamodule),
                name: step_for(base, ["ce", name], datamodule),
            },
            rounds=60,
        )
        rows.append(
            [
                f"ce + {name}",
                1e3 * medians[name],
                1e3 * medians["kd"],
                medians[name] / medians["kd"],
            ]
        )
    print_table(
        f"Step cost per loss vs ce + kd ({Path(sys.argv[0]).name}, batch {datamodule.batch_size}, "
        f"torch {torch.__version__}, 1 thread)",
        ["loss", "step (ms)", "ce + kd step (ms)", "ratio"],
        rows,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
