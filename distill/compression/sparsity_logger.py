"""SparsityLogger: logs the student's weight sparsity after each mask update; changes nothing."""

from __future__ import annotations

from typing import Any, cast

import pytorch_lightning as pl
from torch import nn

from distill.compression.pruning_callback import MaskUpdate, PruningCallback
from distill.compression.sparsity import sparsity_metrics


class SparsityLogger(pl.Callback):
    """Logs `sparsity/global` and `sparsity/<layer>` (from `weight_sparsity`) to every logger,
    once per mask update of `pruning`, at the global step of that update.

    Compression callbacks change the student; this one only observes it. Placed after the
    pruning callback (as the pipeline does), it measures in the same `on_before_optimizer_step`
    as the update, before the optimizer moves any weight; placed before, it catches the update
    at the end of the batch.
    """

    def __init__(self, pruning: PruningCallback) -> None:
        self.pruning = pruning
        self.logged: MaskUpdate | None = None

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        self.log_new_update(trainer, pl_module)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self.log_new_update(trainer, pl_module)

    def log_new_update(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Log the sparsity if the pruning callback updated its masks since the last log."""
        update = self.pruning.latest_update
        if update is None or update == self.logged:
            return
        self.logged = update
        metrics = sparsity_metrics(cast(nn.Module, pl_module.student))
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=update.step)
