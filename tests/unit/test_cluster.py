"""Cluster submission: the composed SLURM launcher config, its check, the requeue decision, and
what a run does when its teacher is missing from the cache."""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

import pytest
import submitit
from hydra import compose, initialize_config_dir
from hydra.types import RunMode
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import OmegaConf
from pytorch_lightning.plugins.environments import LightningEnvironment, SLURMEnvironment

from distill.cli.train import CONF_DIR
from distill.cluster import (
    SLURM_LAUNCHER,
    check_launcher,
    is_slurm_sweep_job,
    retire_hpc_checkpoints,
)
from distill.config import build
from distill.errors import ConfigError
from distill.run_state import ensure_fresh_run_dir, requeued_into
from distill.teachers import (
    MissingTeacherError,
    build_teachers,
    data_fingerprint,
    provide_teachers,
    resolve_when_missing,
    teacher_cache_key,
    teacher_compute,
    teacher_specs,
    teacher_trainer_factory,
    when_missing_of,
)

LOCAL_LAUNCHER = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"
DIGITS = ["data=digits", "teacher=cnn2d_digits", "student=mlp"]


def compose_with_hydra(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


def test_slurm_launcher_runs_one_task_per_trainer_device_and_signals_lightning():
    cfg = compose_with_hydra("hydra/launcher=slurm", "hydra.launcher.partition=gpu", "trainer=ddp")
    launcher = cfg.hydra.launcher
    assert launcher._target_ == SLURM_LAUNCHER
    assert (launcher.partition, launcher.nodes) == ("gpu", 1)
    assert (launcher.tasks_per_node, launcher.gpus_per_node) == (2, 2)  # trainer=ddp: 2 devices
    assert (launcher.timeout_min, launcher.signal_delay_s) == (240, 120)
    assert launcher.max_num_timeout == 0  # submitit never requeues on its own
    assert OmegaConf.to_container(launcher.additional_parameters, resolve=True) == {
        "signal": "USR1@120",
        "requeue": True,
    }
    check_launcher(cfg)  # passes
    one_device = compose_with_hydra("hydra/launcher=slurm", "hydra.launcher.partition=gpu")
    assert one_device.hydra.launcher.tasks_per_node == 1


def test_sbatch_file_sends_usr1_not_submitits_usr2(tmp_path, monkeypatch):
    """The sbatch script submitit writes from our launcher config, mapped as the plugin maps
    it (submitit_launcher.py, `launch`); a fake `srun` on PATH lets submitit build it here."""
    srun = tmp_path / "bin" / "srun"
    srun.parent.mkdir()
    srun.write_text("#!/bin/sh\n")
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{srun.parent}{os.pathsep}{os.environ['PATH']}")
    cfg = compose_with_hydra(
        "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.account=proj"
    )
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert isinstance(params, dict)
    for key in ("_target_", "submitit_folder", "max_num_timeout"):
        params.pop(key)
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="slurm")
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    lines = executor._executor._make_submission_file_text("python job.py", "uid").splitlines()
    sbatch = {line for line in lines if line.startswith("#SBATCH")}
    expected = {
        "#SBATCH --signal=USR1@120",
        "#SBATCH --requeue",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=proj",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --mem=32GB",
        "#SBATCH --nodes=1",
        "#SBATCH --time=240",
    }
    assert expected <= sbatch
    assert not [line for line in sbatch if "USR2" in line]


@pytest.mark.parametrize(
    ("overrides", "field", "value"),
    [
        ([], "hydra.launcher.partition", None),
        (["hydra.launcher.partition=''"], "hydra.launcher.partition", ""),
        (["hydra.launcher.partition=gpu", "trainer.devices=auto"], "trainer.devices", "auto"),
        (
            ["hydra.launcher.partition=gpu", "hydra.launcher.signal_delay_s=20000"],
            "hydra.launcher.signal_delay_s",
            20000,
        ),
        (
            [
                "hydra.launcher.partition=gpu",
                "hydra.launcher.additional_parameters.signal=USR2@120",
            ],
            "hydra.launcher.additional_parameters.signal",
            "USR2@120",
        ),
    ],
)
def test_bad_slurm_launcher_settings_are_refused_by_name(overrides, field, value):
    cfg = compose_with_hydra("hydra/launcher=slurm", *overrides)
    with pytest.raises(ConfigError) as error:
        check_launcher(cfg)
    assert (error.value.field, error.value.value) == (field, value)


def test_other_launchers_are_not_checked():
    check_launcher(compose_with_hydra("hydra/launcher=submitit_local"))
    check_launcher(compose_with_hydra())


def test_a_requeued_job_continues_its_own_unfinished_run(tmp_path):
    """After SIGUSR1 (an hpc checkpoint) or a preemption's SIGTERM (interrupted.ckpt), SLURM
    starts the job again into the same directory; it continues there, from the newest
    checkpoint that loads, as `resume=RUN_DIR` would."""
    requeued = {"SLURM_RESTART_COUNT": "1"}
    (tmp_path / "hpc_ckpt_1.ckpt").write_bytes(b"")
    assert requeued_into(tmp_path, requeued)
    ensure_fresh_run_dir(tmp_path, requeued)  # allowed: it continues
    preempted = tmp_path / "preempted"
    (preempted / "checkpoints").mkdir(parents=True)
    (preempted / "checkpoints" / "interrupted.ckpt").write_bytes(b"")
    ensure_fresh_run_dir(preempted, requeued)
    for plain in ({}, {"SLURM_RESTART_COUNT": "0"}):
        assert not requeued_into(tmp_path, plain)
        with pytest.raises(ConfigError, match="holds no earlier run"):
            ensure_fresh_run_dir(tmp_path, plain)  # a plain rerun into the job's directory


def test_a_requeued_job_never_continues_a_finished_run(tmp_path):
    requeued = {"SLURM_RESTART_COUNT": "2"}
    (tmp_path / "hpc_ckpt_1.ckpt").write_bytes(b"")
    (tmp_path / "summary.json").write_text("{}")
    assert not requeued_into(tmp_path, requeued)
    with pytest.raises(ConfigError, match="holds a finished run"):
        ensure_fresh_run_dir(tmp_path, requeued)
    ensure_fresh_run_dir(tmp_path / "new", requeued)  # a first start of a requeued job


def test_slurm_runs_requeue_on_usr1_and_teachers_train_alone(compose_cfg, tmp_path, monkeypatch):
    slurm = {"SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_JOB_NAME": "train"}
    slurm |= {"SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_JOB_ID": "7"}
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    cfg = compose_cfg(*DIGITS, "trainer=cpu", "logger=none", "callbacks=none")
    trainer = build(cfg.trainer, "trainer", logger=False, enable_checkpointing=False)
    environment = trainer._accelerator_connector.cluster_environment
    assert isinstance(environment, SLURMEnvironment)
    assert environment.auto_requeue and environment.requeue_signal == signal.SIGUSR1
    teacher_trainer = teacher_trainer_factory(cfg.trainer)(
        max_epochs=1, default_root_dir=tmp_path / "teacher"
    )
    teacher_environment = teacher_trainer._accelerator_connector.cluster_environment
    assert isinstance(teacher_environment, LightningEnvironment)
    for number in (1, 2):
        (tmp_path / f"hpc_ckpt_{number}.ckpt").write_bytes(b"")
    (tmp_path / "last.ckpt").write_bytes(b"")
    retired = retire_hpc_checkpoints(trainer, tmp_path)
    assert [path.name for path in retired] == ["hpc_ckpt_1.ckpt", "hpc_ckpt_2.ckpt"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["last.ckpt"]


def test_auto_fails_only_in_jobs_of_a_slurm_multirun():
    assert is_slurm_sweep_job(RunMode.MULTIRUN, SLURM_LAUNCHER)
    assert is_slurm_sweep_job("MULTIRUN", SLURM_LAUNCHER)
    assert not is_slurm_sweep_job(RunMode.RUN, SLURM_LAUNCHER)
    assert not is_slurm_sweep_job(RunMode.MULTIRUN, LOCAL_LAUNCHER)
    assert not is_slurm_sweep_job(RunMode.MULTIRUN, None)
    assert resolve_when_missing("auto", slurm_sweep_job=True) == "fail"
    assert resolve_when_missing("auto", slurm_sweep_job=False) == "train"
    assert resolve_when_missing("train", slurm_sweep_job=True) == "train"
    assert resolve_when_missing("fail", slurm_sweep_job=False) == "fail"
    with pytest.raises(ConfigError) as error:
        resolve_when_missing("wait", slurm_sweep_job=False)
    assert (error.value.field, error.value.value) == ("teacher.when_missing", "wait")


def test_fail_refuses_a_teacher_missing_from_the_cache_without_training(compose_cfg, tmp_path):
    cfg = compose_cfg(*DIGITS, "teacher.when_missing=fail")
    assert when_missing_of(cfg) == "fail"
    datamodule = build(cfg.data, "data")
    datamodule.setup("fit")
    specs = teacher_specs(cfg)
    compute = teacher_compute(cfg.trainer)
    fingerprint = data_fingerprint(cfg.data)
    with pytest.raises(MissingTeacherError) as error:
        provide_teachers(
            build_teachers(specs, datamodule),
            specs,
            fingerprint,
            seed=cfg.seed,
            compute=compute,
            trainer_factory=teacher_trainer_factory(cfg.trainer),
            datamodule=datamodule,
            run_dir=tmp_path / "run",
            when_missing="fail",
        )
    key = teacher_cache_key(specs["teacher"], fingerprint, cfg.seed, compute)
    assert error.value.key == key
    assert error.value.path == Path(cfg.teacher.cache_dir) / key / "teacher.pt"
    assert error.value.field == "teacher.when_missing"
    assert "distill-teacher" in str(error.value)
    assert not (tmp_path / "cache").exists()  # nothing trained, no entry made
    assert not (tmp_path / "run").exists()


def test_student_side_overrides_keep_the_teacher_key(compose_cfg):
    def key(*overrides):
        cfg = compose_cfg(*DIGITS, *overrides)
        spec = teacher_specs(cfg)["teacher"]
        return teacher_cache_key(
            spec, data_fingerprint(cfg.data), cfg.seed, teacher_compute(cfg.trainer)
        )

    base = key()
    for student_side in (
        ["pruning.schedule.final_sparsity=0.7"],
        ["trainer.max_epochs=3", "loss.kd.temperature=2", "optimizer.lr=0.01"],
        ["trainer=ddp", "quantization=none", "export=false", "teacher.when_missing=fail"],
    ):
        assert key(*student_side) == base, student_side
    assert key("teacher.train.max_epochs=2") != base
    assert key("seed=1") != base
