"""`distill-train` refuses a bad setting before any work: exit 2, one message that names the
field, the bad value and what is allowed, no traceback, and no run directory left behind (Hydra
makes it before the task starts; a refused run removes it again): no teacher trained or cached,
no checkpoint, no student, no summary.

One row per setting; each runs the real entry point (`distill.cli.train.main`) in-process on
the tiny digits recipe, so a row that stopped being refused would train for a few seconds
(bounded by `trainer.max_time`) and fail its asserts, not hang.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from distill.checks import check_resume_checkpoint
from distill.cli.train import main
from distill.config import check_group_overrides

TINY = [
    "data=digits",
    "teacher=cnn2d_digits",
    "student=mlp",
    "teacher.train.max_epochs=1",
    "trainer.max_epochs=1",
    "pruning=none",
    "quantization=none",
    "export=false",
    "logger=none",
    "callbacks=none",
    "threads=1",
    # A refusal that regressed must not train for long (trainer.max_epochs=-1 has no end).
    "+trainer.max_time=00:00:00:20",
]

# (overrides, what the message must start with: the field and the value as ConfigError
# prints them).
REFUSALS = {
    # Torch checks these only when the fit makes the optimizer: after the teacher.
    "lr_negative": (["optimizer.lr=-1"], "optimizer.lr=-1 is not allowed"),
    "weight_decay_negative": (
        ["optimizer.weight_decay=-1"],
        "optimizer={'lr': 0.005, 'weight_decay': -1} is not allowed",
    ),
    "scheduler_argument": (
        ["lr_scheduler.T_max=abc"],
        "lr_scheduler={'T_max': 'abc'} is not allowed",
    ),
    "teacher_lr_negative": (
        ["teacher.train.optimizer.lr=-1"],
        "teacher.train.optimizer.lr=-1 is not allowed",
    ),
    "seed_not_a_number": (["seed=abc"], "seed='abc' is not allowed"),
    "seed_negative": (["seed=-1"], "seed=-1 is not allowed"),
    "max_epochs_negative": (["trainer.max_epochs=-1"], "trainer.max_epochs=-1 is not allowed"),
    "max_epochs_zero": (["trainer.max_epochs=0"], "trainer.max_epochs=0 is not allowed"),
    "max_epochs_not_a_number": (
        ["trainer.max_epochs=abc"],
        "trainer.max_epochs='abc' is not allowed",
    ),
    # With QAT on, the fraction start_epoch used to take the blame.
    "max_epochs_negative_with_qat": (
        ["trainer.max_epochs=-1", "quantization=qat_int8"],
        "trainer.max_epochs=-1 is not allowed",
    ),
    "latency_repeats_zero": (
        ["export=true", "export_latency_repeats=0"],
        "export_latency_repeats=0 is not allowed",
    ),
    "teacher_epochs_zero": (
        ["teacher.train.max_epochs=0"],
        "teacher.train.max_epochs=0 is not allowed",
    ),
    # Builds happily (an OrderedDict of the model's arguments), then failed on `.training`.
    "student_not_a_module": (
        ["student._target_=collections.OrderedDict"],
        "student._target_='collections.OrderedDict' is not allowed",
    ),
    "data_not_a_datamodule": (
        ["data._target_=collections.OrderedDict"],
        "data._target_='collections.OrderedDict' is not allowed",
    ),
    "image_folder_missing": (
        ["data=image_folder", "data.root={tmp}/no_images", "data.num_classes=3"],
        "data.root='{tmp}/no_images' is not allowed",
    ),
    "teacher_not_a_module": (
        ["teacher.model._target_=collections.OrderedDict"],
        "teacher.model._target_='collections.OrderedDict' is not allowed",
    ),
    # Hydra composes [ce,kd,kd] as [ce,kd] (it ran, silently) and [] as no `loss` node (a
    # traceback): the job's overrides say what was asked for.
    "loss_empty": (["loss=[]"], "loss=[] is not allowed"),
    "loss_repeated": (["loss=[ce,kd,kd]"], "loss=['ce', 'kd', 'kd'] is not allowed"),
    "logger_repeated": (["logger=[csv,csv]"], "logger=['csv', 'csv'] is not allowed"),
    # Checked before the teacher is trained; it used to be read when the fit started. `{tmp}`
    # is the test's folder, where `checkpoint_files` writes the bad files.
    "ckpt_missing": (["ckpt_path=/nonexistent"], "ckpt_path='/nonexistent' is not allowed"),
    "ckpt_empty": (["ckpt_path={tmp}/empty.ckpt"], "ckpt_path='{tmp}/empty.ckpt' is not allowed"),
    "ckpt_random_bytes": (
        ["ckpt_path={tmp}/random.ckpt"],
        "ckpt_path='{tmp}/random.ckpt' is not allowed",
    ),
    "ckpt_weights_only": (
        ["ckpt_path={tmp}/weights.pt"],
        "ckpt_path='{tmp}/weights.pt' is not allowed",
    ),
}


def checkpoint_files(folder: Path) -> None:
    """Files a resume must refuse: empty, not a pickle, and a bare state_dict (weights only,
    no training state)."""
    (folder / "empty.ckpt").write_bytes(b"")
    (folder / "random.ckpt").write_bytes(random.Random(0).randbytes(4096))
    torch.save({"weight": torch.zeros(2)}, folder / "weights.pt")


@pytest.mark.parametrize(("overrides", "message"), REFUSALS.values(), ids=REFUSALS.keys())
def test_refused_before_any_work(overrides, message, tmp_path, monkeypatch, capsys):
    run_dir, cache_dir = tmp_path / "run", tmp_path / "cache"
    checkpoint_files(tmp_path)
    overrides = [override.replace("{tmp}", str(tmp_path)) for override in overrides]
    message = message.replace("{tmp}", str(tmp_path))
    argv = [
        *TINY,
        f"hydra.run.dir={run_dir}",
        f"paths.cache_dir={cache_dir}",
        f"paths.log_dir={tmp_path / 'logs'}",
        *overrides,
    ]
    monkeypatch.setattr(sys, "argv", ["distill-train", *argv])

    with pytest.raises(SystemExit) as exited:
        main()

    captured = capsys.readouterr()
    output = captured.out + captured.err
    assert exited.value.code == 2, output[-3000:]
    assert f"Configuration error: {message}: " in output, output[-3000:]
    assert "Traceback" not in output
    assert output.count("Configuration error") == 1
    assert not run_dir.exists()  # Hydra made it for the task; the refusal took it back
    assert not cache_dir.exists() or not any(cache_dir.iterdir())


def test_a_lightning_checkpoint_passes_the_resume_check(tmp_path):
    """The check must not refuse what Lightning itself resumes from (weights_only=True)."""

    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = pl.Trainer(
        max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    trainer.fit(Tiny(), DataLoader(TensorDataset(torch.zeros(4, 2)), batch_size=2))
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    check_resume_checkpoint(str(tmp_path / "last.ckpt"))


def test_repeated_values_of_a_setting_that_is_no_group_are_fine():
    check_group_overrides(["student.hidden_sizes=[64,64]", "loss=[ce,kd]", "logger=none"])


@pytest.mark.parametrize("keyword", ["last", "best", "hpc", "registry", "s3://bucket/run.ckpt"])
def test_what_lightning_resolves_itself_is_left_to_it(keyword):
    check_resume_checkpoint(keyword)  # no file here to read: Lightning finds it at fit


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "loss=[ce,foo]",
            "loss='foo' is not allowed: an option of loss: at, cc, ce, crd, dist, dkd, fitnets,",
        ),
        ("student=mpl", "student='mpl' is not allowed: an option of student: cnn1d_small,"),
        (
            "trainer.max_epoch=3",
            "trainer.max_epoch='3' is not allowed: a key of the config (did you mean "
            "trainer.max_epochs? A new key needs a leading +",
        ),
    ],
)
def test_what_hydra_cannot_compose_exits_2_naming_the_options_or_close_keys(
    override, message, tmp_path, monkeypatch, capsys
):
    run_dir = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["distill-train", override, f"hydra.run.dir={run_dir}"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    output = capsys.readouterr().err
    assert output.startswith(f"distill-train: {message}") and "Traceback" not in output
    assert not run_dir.exists()  # refused before Hydra's app made the run directory
