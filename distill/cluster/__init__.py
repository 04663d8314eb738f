"""Running distill on a cluster: the SLURM launcher's settings checked before a sweep is
submitted, and the requeue of a preempted job into its own run directory.

Nothing here schedules anything: Hydra's multirun makes the jobs, hydra-submitit-launcher
submits them (conf/hydra/launcher/slurm.yaml) and Lightning's SLURMEnvironment checkpoints and
requeues them on SIGUSR1. This package only checks what those engines are given.
"""

from distill.cluster.launcher import (
    SLURM_LAUNCHER,
    LauncherCheck,
    check_launcher,
    is_slurm_sweep_job,
)
from distill.cluster.requeue import (
    hpc_checkpoints,
    retire_hpc_checkpoints,
    slurm_restart_count,
)

__all__ = [
    "SLURM_LAUNCHER",
    "LauncherCheck",
    "check_launcher",
    "hpc_checkpoints",
    "is_slurm_sweep_job",
    "retire_hpc_checkpoints",
    "slurm_restart_count",
]
