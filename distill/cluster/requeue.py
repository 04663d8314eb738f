"""A requeued SLURM job resumes its own run from the checkpoint Lightning saved when it was
told to stop.

On SIGUSR1 Lightning's SLURMEnvironment saves `<default_root_dir>/hpc_ckpt_<n>.ckpt` and runs
`scontrol requeue`; the job starts again with the same job id, submitit re-runs the same sweep
job into the same directory (`hydra.sweep.dir` is resolved once and pickled with the
launcher), and `trainer.fit(ckpt_path=None)` restores the newest hpc checkpoint whenever SLURM
is detected (pytorch_lightning/trainer/connectors/checkpoint_connector.py, `_parse_ckpt_path`).
SLURM counts the restarts in SLURM_RESTART_COUNT.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the Hydra callback imports this package: no torch at --help time
    import pytorch_lightning as pl

HPC_PREFIX = "hpc_ckpt_"


def slurm_restart_count(environ: Mapping[str, str]) -> int:
    """How many times SLURM has requeued this job (0 outside SLURM or on its first start)."""
    value = environ.get("SLURM_RESTART_COUNT", "0")
    return int(value) if value.isdigit() else 0


def hpc_checkpoints(run_dir: Path) -> list[Path]:
    """The hpc checkpoints Lightning saved in `run_dir`, oldest first (by their number, as
    Lightning orders them)."""
    pattern = re.compile(rf"{HPC_PREFIX}(\d+)\.ckpt")
    found = [
        (int(match.group(1)), path)
        for path in run_dir.glob(f"{HPC_PREFIX}*.ckpt")
        if (match := pattern.fullmatch(path.name))
    ]
    return [path for _, path in sorted(found)]


def retire_hpc_checkpoints(trainer: pl.Trainer, run_dir: Path) -> list[Path]:
    """Delete the hpc checkpoints once the fit that resumed from them has finished; returns
    them (on rank 0).

    Under SLURM Lightning gives every `ckpt_path=None` call the newest hpc checkpoint, `test`
    included: left in place, the test after a resumed fit would load the weights from before
    the requeue instead of the trained ones. Rank 0 deletes, between barriers, so that no rank
    looks for them while they go.
    """
    trainer.strategy.barrier("retire_hpc_checkpoints")
    retired = hpc_checkpoints(run_dir) if trainer.is_global_zero else []
    for path in retired:
        path.unlink(missing_ok=True)
    trainer.strategy.barrier("retire_hpc_checkpoints done")
    return retired
