"""The SLURM launcher's settings, checked when a multirun starts, before any job is submitted.

hydra-submitit-launcher hands its fields to sbatch as they are: no partition means the
cluster's default partition, `tasks_per_node: auto` becomes `--ntasks-per-node=auto`, and each
fails on the cluster with SLURM's message, or not at all. The `LauncherCheck` callback
(registered in conf/hydra/default.yaml) refuses them first, naming the field.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Mapping
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from distill.errors import ConfigError
from distill.validate import require_int

SLURM_LAUNCHER = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
# The signal Lightning's SLURMEnvironment requeues on (its default, SIGUSR1).
REQUEUE_SIGNAL = signal.SIGUSR1.name.removeprefix("SIG")
FIELD = "hydra.launcher"


def is_slurm_sweep_job(mode: Any, launcher_target: Any) -> bool:
    """Whether a run is one job of a multirun submitted to SLURM: Hydra's `hydra.mode` is
    MULTIRUN (a RunMode or its name) and `hydra.launcher._target_` is submitit's SLURM
    launcher."""
    name = getattr(mode, "name", mode)
    return str(name) == "MULTIRUN" and launcher_target == SLURM_LAUNCHER


def check_launcher(config: DictConfig) -> None:
    """Refuse a SLURM launcher config (`config.hydra.launcher`, `config` the composed run
    config with its hydra node) that sbatch would reject or run somewhere unintended; other
    launchers pass unchecked."""
    launcher = config.hydra.launcher
    if launcher.get("_target_") != SLURM_LAUNCHER:
        return
    settings = _resolved(config)
    partition = settings.get("partition")
    if not isinstance(partition, str) or not partition.strip() or partition == "???":
        raise ConfigError(
            f"{FIELD}.partition",
            partition,
            "the SLURM partition to submit to, e.g. hydra.launcher.partition=gpu (`sinfo` lists "
            "them); without one sbatch would use the cluster's default partition",
        )
    for name in ("account", "qos"):
        value = settings.get(name)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ConfigError(f"{FIELD}.{name}", value, "a SLURM name, or null for the default")
    require_int(f"{FIELD}.tasks_per_node", settings.get("tasks_per_node"), 1, None, TASKS_ALLOWED)
    require_int(f"{FIELD}.nodes", settings.get("nodes"), minimum=1)
    timeout_min = require_int(f"{FIELD}.timeout_min", settings.get("timeout_min"), minimum=1)
    delay = require_int(
        f"{FIELD}.signal_delay_s",
        settings.get("signal_delay_s"),
        minimum=1,
        maximum=timeout_min * 60 - 1,
        allowed=f"seconds before the time limit ({timeout_min * 60} s) at which SLURM sends "
        f"SIG{REQUEUE_SIGNAL}: an int in [1, {timeout_min * 60 - 1}]",
    )
    for name, minimum in (("gpus_per_node", 0), ("cpus_per_task", 1), ("mem_gb", 1)):
        if settings.get(name) is not None:
            require_int(f"{FIELD}.{name}", settings.get(name), minimum=minimum)
    _check_signal(settings.get("additional_parameters") or {}, delay)


DEVICES_ALLOWED = (
    "a number of devices under hydra/launcher=slurm, whose tasks_per_node starts one process "
    "per device; not 'auto' or a list"
)
TASKS_ALLOWED = (
    "a number of processes >= 1; it follows trainer.devices (one process per device), which "
    "must then be a count, not 'auto' or a list"
)


def _resolved(config: DictConfig) -> dict[str, Any]:
    """The launcher's settings as plain values. The plugin's fields are typed (`tasks_per_node:
    int`), so an interpolation to a value of another type fails here, named by its key."""
    try:
        settings = OmegaConf.to_container(config.hydra.launcher, resolve=True)
    except OmegaConfBaseException as error:
        key = str(getattr(error, "full_key", None) or FIELD)
        if key == f"{FIELD}.tasks_per_node":
            # The user's setting is trainer.devices, which tasks_per_node follows.
            devices = OmegaConf.select(config, "trainer.devices", throw_on_missing=False)
            raise ConfigError("trainer.devices", devices, DEVICES_ALLOWED) from error
        raise ConfigError(key, str(error).splitlines()[0], "a valid setting") from error
    assert isinstance(settings, dict)
    return {str(key): value for key, value in settings.items()}


def _check_signal(additional: Mapping[str, Any], delay: int) -> None:
    """Lightning requeues on SIGUSR1 only: a job told to expect another signal would be killed
    at its time limit with nothing saved."""
    expected = f"{REQUEUE_SIGNAL}@{delay}"
    value = additional.get("signal")
    if value != expected:
        raise ConfigError(
            f"{FIELD}.additional_parameters.signal",
            value,
            f"{expected!r}: the signal Lightning's SLURMEnvironment saves an hpc checkpoint and "
            "requeues on, signal_delay_s before the time limit",
        )


class LauncherCheck(Callback):
    """Hydra callback: `check_launcher` on the composed config when a multirun starts, before
    the sweeper makes jobs or the launcher submits them.

    Hydra 1.3 turns an exception raised in a callback into a warning and carries on
    (hydra/_internal/callbacks.py), so a refusal exits here, with the configuration errors'
    exit status 2, as `distill-train` does for every other ConfigError.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_launcher(config)
        except ConfigError as error:
            print(f"Configuration error: {error}", file=sys.stderr)
            sys.exit(2)
