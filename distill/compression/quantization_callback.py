"""QuantizationCallback: quantization-aware training of the student, phase by phase.

Timeline, in epochs: float warm-up, then from `start_epoch` weights and activations are
fake-quantized (observers running), from `batchnorm_epoch` BatchNorm statistics are frozen (and,
with `batchnorm="fold"`, folded into the conv before them), from `observer_freeze_epoch` the
activation ranges stop moving, and from `weight_sharing.epoch` each layer's weights are clustered
into shared values (Han et al. 2016) whose centroids keep training.

The callback only decides when; what each phase does to the student is the `Quantizer`'s
(`quantizer.py`), and so are the settings' checks (`quantization_settings.py`). Folding and
freezing BatchNorm deploy to the same int8 weights: see `batchnorm.py`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any, cast

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from distill.compression.activation_sites import ActivationSites
from distill.compression.batchnorm import freeze_batchnorm
from distill.compression.parametrizations import get_weight_fake_quant
from distill.compression.pruning_callback import example_inputs_for_attach
from distill.compression.quantization_settings import (
    QuantizationEpochs,
    QuantizationSettings,
    WeightSharingSettings,
)
from distill.compression.quantizer import Quantizer
from distill.errors import ConfigError

__all__ = ["QuantizationCallback", "WeightSharingSettings", "get_weight_fake_quant"]


def _student(pl_module: pl.LightningModule) -> nn.Module:
    return cast(nn.Module, pl_module.student)


class QuantizationCallback(pl.Callback):
    """Fake-quantizes `pl_module.student` (never the teacher) from `start_epoch` on.

    Takes the `quantization.*` settings (see `QuantizationSettings`) and holds the `Quantizer`
    that applies them. Weight fake-quant is registered after the pruning mask, so call `attach`
    after the pruning callback's. The callback's own state (whether BatchNorm was folded,
    weights clustered) is checkpointed; the rest is in the student's buffers, so a resumed run
    continues exactly.
    """

    def __init__(
        self,
        weight_bits: int = 8,
        layer_bits: Mapping[str, int | None] | None = None,
        activations: bool = True,
        start_epoch: int | float = 0,
        batchnorm: str = "fold",
        batchnorm_epoch: int | float | None = None,
        observer_freeze_epoch: int | float | None = None,
        observer_momentum: float = 0.1,
        observer_interval: int = 1,
        weight_sharing: WeightSharingSettings | Mapping[str, Any] | None = None,
        calibration_batches: int = 32,
    ) -> None:
        if isinstance(weight_sharing, Mapping):
            weight_sharing = WeightSharingSettings(**weight_sharing)
        self.settings = QuantizationSettings(
            weight_bits=weight_bits,
            layer_bits=dict(layer_bits or {}),
            activations=activations,
            start_epoch=start_epoch,
            batchnorm=batchnorm,
            batchnorm_epoch=batchnorm_epoch,
            observer_freeze_epoch=observer_freeze_epoch,
            observer_momentum=observer_momentum,
            observer_interval=observer_interval,
            weight_sharing=weight_sharing,
            calibration_batches=calibration_batches,
        )
        self.quantizer = Quantizer(self.settings)
        self.epochs: QuantizationEpochs | None = None
        if not self.settings.has_fractions:
            self.resolve_epochs(None)
        self.folded = False
        self.clustered = False

    # -- what the settings and the quantizer say -----------------------------------------
    @property
    def activations(self) -> bool:
        return self.settings.activations

    @property
    def batchnorm(self) -> str:
        return self.settings.batchnorm

    @property
    def calibration_batches(self) -> int:
        return self.settings.calibration_batches

    @property
    def epoch_settings(self) -> dict[str, int | float | None]:
        """The phases' epochs as configured (numbers or fractions of the run)."""
        return self.settings.epochs

    @property
    def layers(self) -> dict[str, int]:
        """Quantized layer -> weight bits, once attached."""
        return self.quantizer.layers

    @property
    def shared_layers(self) -> list[str]:
        return self.quantizer.shared_layers

    @property
    def sites(self) -> ActivationSites | None:
        """The activation sites and BatchNorm folds, once attached."""
        return self.quantizer.sites

    # -- schedule ------------------------------------------------------------------------
    @property
    def epochs_resolved(self) -> bool:
        return self.epochs is not None

    def resolve_epochs(self, max_epochs: int | None) -> None:
        """Turn fractions of the run into epochs and check the phases' order."""
        self.epochs = self.settings.resolve_epochs(max_epochs)

    def _epochs(self) -> QuantizationEpochs:
        if self.epochs is None:
            raise ConfigError(
                "quantization.start_epoch",
                self.settings.start_epoch,
                "resolved to an epoch first: call resolve_epochs(max_epochs)",
            )
        return self.epochs

    @property
    def start_epoch(self) -> int | None:
        return self.epochs.start if self.epochs else None

    @property
    def batchnorm_epoch(self) -> int | None:
        return self.epochs.batchnorm if self.epochs else None

    @property
    def observer_freeze_epoch(self) -> int | None:
        return self.epochs.observer_freeze if self.epochs else None

    @property
    def sharing_epoch(self) -> int | None:
        return self.epochs.weight_sharing if self.epochs else None

    # -- setup ---------------------------------------------------------------------------
    @property
    def attached(self) -> bool:
        return self.quantizer.prepared

    def attach(self, model: nn.Module, example_inputs: Tensor) -> None:
        """Register weight fake-quant (and weight sharing), find and hook activation sites."""
        self.quantizer.prepare(model, example_inputs)

    def check_exportable(self) -> None:
        """Only 8- and 7-bit weights are stored as int8 in the QDQ ONNX graph: say which layer."""
        self.quantizer.check_exportable()

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not self.epochs_resolved:
            self.resolve_epochs(trainer.max_epochs)
        if not self.attached:
            inputs = example_inputs_for_attach(trainer, "quantization", self)
            self.attach(_student(pl_module), inputs)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.quantizer.sync_observers(_student(pl_module), trainer.world_size > 1)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After the fit only rank 0 works (test, export): nothing to synchronize with.
        self.quantizer.sync_observers(_student(pl_module), False)

    # -- phases --------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.enter_epoch(_student(pl_module), trainer.current_epoch)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # Lightning puts the model back in train mode around validation; frozen statistics
        # must stay frozen for every batch.
        epoch = trainer.current_epoch
        if epoch >= self._epochs().batchnorm:
            freeze_batchnorm(_student(pl_module))
        interval = self.settings.observer_interval
        if interval > 1 and self._observing(epoch):
            # From the global step, which a checkpoint restores: resume stays exact.
            self.quantizer.observe_now(_student(pl_module), trainer.global_step % interval == 0)

    def _observing(self, epoch: int) -> bool:
        epochs = self._epochs()
        return epoch >= epochs.start and (
            epochs.observer_freeze is None or epoch < epochs.observer_freeze
        )

    @torch.no_grad()
    def enter_epoch(self, model: nn.Module, epoch: int) -> None:
        """Switch every phase flag to what `epoch` calls for (idempotent, so resume-safe)."""
        epochs = self._epochs()
        quantizing = epoch >= epochs.start
        self.quantizer.set_phase(model, quantize=quantizing, observe=self._observing(epoch))
        if epoch >= epochs.batchnorm:
            if self.settings.batchnorm == "fold" and not self.folded:
                self.quantizer.fold_batchnorm(model)
                self.folded = True
            freeze_batchnorm(model)
        sharing = epochs.weight_sharing
        if sharing is not None and epoch >= sharing and not self.clustered:
            self.quantizer.cluster_weights(model)
            self.clustered = True

    @contextlib.contextmanager
    def float_weights(self, model: nn.Module) -> Iterator[nn.Module]:
        """`Quantizer.float_weights`: `model` with its weight fake-quant off for the block."""
        with self.quantizer.float_weights(model):
            yield model

    def describe(self) -> dict[str, Any]:
        """What was quantized, and when, for summary.json."""
        return {
            **self.quantizer.describe(),
            "start_epoch": self.start_epoch,
            "observer_freeze_epoch": self.observer_freeze_epoch,
            "folded": self.folded,
            "clustered": self.clustered,
        }

    # -- checkpointing -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "layers": dict(self.layers),
            "folded": self.folded,
            "clustered": self.clustered,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.layers and state_dict["layers"] != self.layers:
            raise ConfigError(
                "ckpt_path",
                "quantization state",
                f"a checkpoint quantized with the same layers and bits; it has "
                f"{state_dict['layers']}, this run has {self.layers}",
            )
        self.folded = state_dict["folded"]
        self.clustered = state_dict["clustered"]
