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
from distill.config import build, check_group_overrides, compose_train

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
    "executorch_switch_misspelled": (
        ["export=true", "export_executorch=yes"],
        "export_executorch='yes' is not allowed: auto",
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
    # Lightning's checkpoints of another student, and of this student without the masks a
    # pruned run has: both used to fail only when the fit started, after the teacher.
    "ckpt_other_architecture": (
        ["ckpt_path={tmp}/other_student.ckpt"],
        "ckpt_path='{tmp}/other_student.ckpt' is not allowed: the path of a Lightning checkpoint "
        "of an earlier run of this recipe, or null: this run's student (distill.models.mlp.MLP, "
        "with its pruning masks and fake-quant state) does not load it: missing keys",
    ),
    "ckpt_changed_compression": (
        ["ckpt_path={tmp}/unpruned.ckpt", "pruning=agp_unstructured", "trainer.max_epochs=2"],
        "ckpt_path='{tmp}/unpruned.ckpt' is not allowed: the path of a Lightning checkpoint of an "
        "earlier run of this recipe, or null: this run's student (distill.models.mlp.MLP, with its "
        "pruning masks and fake-quant state) does not load it: missing keys [student.features.3."
        "parametrizations.weight.0.mask",
    ),
    # A ramp that ends after the last epoch used to exit 0, pruning nothing (a "slim" model
    # larger than the student). Fractions of the run (the defaults) fit any run of 2+ epochs.
    "pruning_ramp_in_one_epoch": (
        ["pruning=channel_l1"],
        "pruning.schedule.end=0.5 is not allowed",
    ),
    "pruning_ramp_after_last_epoch": (
        [
            "pruning=channel_l1",
            "trainer.max_epochs=10",
            "pruning.schedule.start=5",
            "pruning.schedule.num_updates=25",
        ],
        "pruning.schedule.num_updates=25 is not allowed",
    ),
    "pruning_one_shot_after_last_epoch": (
        ["pruning=nm_2_4", "trainer.max_epochs=2", "pruning.schedule.at=3"],
        "pruning.schedule.at=3 is not allowed",
    ),
    "pruning_steps_on_one_epoch": (
        ["pruning=iterative_unstructured", "trainer.max_epochs=2"],
        "pruning.schedule.steps[1][0]=0.34 is not allowed",
    ),
    # Counted in optimizer steps: Lightning knows them only at fit start, after the teacher.
    "pruning_steps_after_the_last_step": (
        [
            "pruning=agp_unstructured",
            "pruning.unit=step",
            "pruning.schedule.start=0",
            "pruning.schedule.end=1000",
        ],
        "pruning.schedule.end=1000 is not allowed: a schedule that ends within the fit's "
        "optimizer steps=",
    ),
    "pruning_final_sparsity_one": (
        ["pruning=agp_unstructured", "pruning.schedule.final_sparsity=1.0"],
        "pruning.schedule.final_sparsity=1.0 is not allowed",
    ),
    "qat_start_not_an_epoch": (
        ["quantization=qat_int8", "quantization.start_epoch=1.5"],
        "quantization.start_epoch=1.5 is not allowed",
    ),
    # A misspelled argument used to be blamed on the term's _target_.
    "loss_argument_misspelled": (
        ["+loss.kd.temprature=4"],
        "loss.kd.temprature=4 is not allowed: an argument of distill.losses.SoftTargetKD: "
        "temperature, weight (did you mean loss.kd.temperature?)",
    ),
    "loss_temperature_negative": (["loss.kd.temperature=-1"], "loss.kd.temperature=-1 is not"),
    "loss_weight_not_a_number": (["loss.kd.weight=abc"], "loss.kd.weight='abc' is not allowed"),
    "trainer_precision": (["trainer.precision=13"], "trainer={'precision': 13} is not allowed"),
    "batch_size_zero": (["data.batch_size=0"], "data.batch_size=0 is not allowed"),
    "threads_zero": (["threads=0"], "threads=0 is not allowed"),
    "teacher_output_cache_unknown": (
        ["teacher_output_cache=maybe"],
        "teacher_output_cache='maybe' is not allowed",
    ),
    # Where the teacher would be cached: refused by a write probe (root passes a chmod).
    "cache_dir_uncreatable": (
        ["paths.cache_dir=/proc/distill-cache"],
        "teacher.cache_dir='/proc/distill-cache/teachers' is not allowed: a directory this user "
        "can write (no new file in /proc",
    ),
    "cache_dir_under_a_file": (
        ["paths.cache_dir={tmp}/a_file/cache"],
        "teacher.cache_dir='{tmp}/a_file/cache/teachers' is not allowed: a directory this user "
        "can write (no new file in {tmp}/a_file: Not a directory)",
    ),
    # "loading failed: )" said nothing about an empty file.
    "teacher_checkpoint_empty": (
        ["teacher.checkpoint={tmp}/empty.ckpt"],
        "teacher.checkpoint='{tmp}/empty.ckpt' is not allowed: a torch checkpoint (the file is "
        "empty)",
    ),
    "teacher_checkpoint_random_bytes": (
        ["teacher.checkpoint={tmp}/random.ckpt"],
        "teacher.checkpoint='{tmp}/random.ckpt' is not allowed: a torch checkpoint (torch cannot "
        "read it: UnpicklingError",
    ),
    "teacher_checkpoint_other_model": (
        ["teacher.checkpoint={tmp}/weights.pt"],
        "teacher.checkpoint='{tmp}/weights.pt' is not allowed: a checkpoint of SmallCNN",
    ),
}


def checkpoint_files(folder: Path) -> None:
    """Files a run must refuse: empty, not a pickle, a bare state_dict (weights only, no
    training state), Lightning checkpoints of another student and of this one unpruned, and a
    file where a directory should be."""
    (folder / "empty.ckpt").write_bytes(b"")
    (folder / "random.ckpt").write_bytes(random.Random(0).randbytes(4096))
    torch.save({"weight": torch.zeros(2)}, folder / "weights.pt")
    other = {"student.features.0.weight": torch.zeros(8, 1, 3, 3)}
    torch.save({"state_dict": other, "optimizer_states": [{}]}, folder / "other_student.ckpt")
    student = build(compose_train(TINY).student, "student")
    unpruned = {f"student.{key}": value for key, value in student.state_dict().items()}
    torch.save({"state_dict": unpruned, "optimizer_states": [{}]}, folder / "unpruned.ckpt")
    (folder / "a_file").write_text("not a directory")


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
    assert f"Configuration error: {message}" in output, output[-3000:]
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
        (
            "hydra.run.dir=/proc/distill-run",
            "hydra.run.dir='/proc/distill-run' is not allowed: a directory this user can write "
            "(no new file in /proc",
        ),
    ],
)
def test_what_hydra_cannot_compose_exits_2_naming_the_options_or_close_keys(
    override, message, tmp_path, monkeypatch, capsys
):
    run_dir = tmp_path / "run"
    # The override last: it may name the run directory itself.
    monkeypatch.setattr(sys, "argv", ["distill-train", f"hydra.run.dir={run_dir}", override])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    output = capsys.readouterr().err
    assert output.startswith(f"distill-train: {message}") and "Traceback" not in output
    assert not run_dir.exists()  # refused before Hydra's app made the run directory


def test_a_refused_run_in_a_default_directory_leaves_no_empty_date_folder(
    tmp_path, monkeypatch, capsys
):
    """The default run directory is <log_dir>/<date>/<time>: the folders made for it go with
    it, and a folder that held something before is kept."""
    kept = tmp_path / "kept"
    (kept / "earlier").mkdir(parents=True)
    for log_dir in (tmp_path / "new", kept):
        argv = [*TINY, f"paths.cache_dir={tmp_path / 'cache'}", f"paths.log_dir={log_dir}"]
        monkeypatch.setattr(sys, "argv", ["distill-train", *argv, "seed=-1"])
        with pytest.raises(SystemExit) as exited:
            main()
        assert exited.value.code == 2, capsys.readouterr().err[-2000:]
    assert not (tmp_path / "new").exists()
    assert [path.name for path in kept.iterdir()] == ["earlier"]
