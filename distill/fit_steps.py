"""How many optimizer steps the student's fit will take, known before anything trains.

Lightning answers this (`trainer.estimated_stepping_batches`) only once the fit has started,
which is after the teacher was trained. A setting counted in steps (`pruning.unit=step`) that
does not fit the run is then refused minutes into the job; with this estimate it is refused
before any work, and the fit-start check remains the authority.
"""

from __future__ import annotations

import math

import pytorch_lightning as pl


def planned_optimizer_steps(trainer: pl.Trainer, num_samples: int, batch_size: int) -> int | None:
    """`trainer.estimated_stepping_batches` of a fit over `num_samples` training samples in
    batches of `batch_size` (the last one partial), computed as Lightning does; None where
    this cannot be done before the fit: several processes (each rank's share depends on the
    sampler Lightning injects), a run without an epoch limit, or a fraction of batches Lightning
    refuses itself."""
    if trainer.world_size != 1 or trainer.max_epochs in (None, -1):
        return None
    length = math.ceil(num_samples / batch_size)
    limit = trainer.limit_train_batches
    if isinstance(limit, int):
        batches = min(length, limit)
    else:
        batches = int(length * limit)
        if batches == 0 and limit > 0.0:
            return None  # Lightning's own error at fit start names the setting
    steps = math.ceil(batches / trainer.accumulate_grad_batches) * max(trainer.max_epochs, 1)
    return steps if trainer.max_steps == -1 else min(steps, trainer.max_steps)
