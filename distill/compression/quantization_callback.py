"""QuantizationCallback: quantization-aware training of the student, phase by phase.

Timeline, in epochs: float warm-up, then from `start_epoch` weights and activations are
fake-quantized (observers running), from `batchnorm_epoch` BatchNorm statistics are frozen (and,
with `batchnorm="fold"`, folded into the conv before them), from `observer_freeze_epoch` the
activation ranges stop moving, and from `weight_sharing.epoch` each layer's weights are clustered
into shared values (Han et al. 2016) whose centroids keep training.

Folding and freezing BatchNorm deploy to the same int8 weights: see `batchnorm.py`.
"""

from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from distill.compression.activation_sites import (
    ActivationQuantizer,
    ActivationSites,
    find_activation_sites,
    observers_of,
)
from distill.compression.batchnorm import fold_batchnorm_in_place, freeze_batchnorm
from distill.compression.fake_quant import (
    EXPORTABLE_WEIGHT_BITS,
    WeightFakeQuant,
    check_bits,
)
from distill.compression.masks import find_parametrization
from distill.compression.pruning_callback import example_inputs_for_attach
from distill.compression.selection import prunable_layer_names
from distill.compression.sharing import attach_weight_sharing, cluster_weight_sharing
from distill.errors import ConfigError

BATCHNORM_MODES = ("fold", "freeze")


@dataclass
class WeightSharingSettings:
    """k-means weight sharing: `bits` per index (2^bits shared values per layer), from `epoch`."""

    bits: int = 4
    epoch: int | float = 0
    include: Sequence[str] = ("*",)

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 1 <= self.bits <= 8:
            raise ConfigError("quantization.weight_sharing.bits", self.bits, "an integer 1..8")
        _check_epoch(self.epoch, "quantization.weight_sharing.epoch")


def _check_epoch(value: object, field: str) -> int | float:
    """An epoch: an integer >= 0, or a fraction of trainer.max_epochs in (0, 1)."""
    is_int = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    is_fraction = isinstance(value, float) and 0.0 < value < 1.0
    if not (is_int or is_fraction):
        raise ConfigError(
            field, value, "an epoch number >= 0, or a fraction of trainer.max_epochs in (0, 1)"
        )
    return value


def _resolve_epoch(value: int | float, max_epochs: int | None, field: str) -> int:
    if isinstance(value, int):
        return value
    if max_epochs is None or max_epochs <= 0:
        raise ConfigError(
            field, value, "an epoch number: a fraction needs trainer.max_epochs to be set"
        )
    return int(value * max_epochs)


def get_weight_fake_quant(module: nn.Module, tensor_name: str = "weight") -> WeightFakeQuant | None:
    """The `WeightFakeQuant` on `module.<tensor_name>`, or None if it has none."""
    return find_parametrization(module, tensor_name, WeightFakeQuant)


class QuantizationCallback(pl.Callback):
    """Fake-quantizes `pl_module.student` (never the teacher) from `start_epoch` on.

    `weight_bits` applies to every conv/linear layer; `layer_bits` maps name patterns to bits of
    their own, or to null to leave a layer in float (the last matching pattern wins). Weight
    fake-quant is registered after the pruning mask, so call `attach` after the pruning
    callback's. The callback's own state (whether BatchNorm was folded, weights clustered) is
    checkpointed; the rest is in the student's buffers, so a resumed run continues exactly.
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
        weight_sharing: WeightSharingSettings | Mapping[str, Any] | None = None,
        calibration_batches: int = 32,
    ) -> None:
        self.weight_bits = check_bits(weight_bits, "quantization.weight_bits")
        self.layer_bits = dict(layer_bits or {})
        for pattern, bits in self.layer_bits.items():
            if bits is not None:
                check_bits(bits, f"quantization.layer_bits.{pattern}")
        self.activations = bool(activations)
        if batchnorm not in BATCHNORM_MODES:
            raise ConfigError("quantization.batchnorm", batchnorm, f"one of {BATCHNORM_MODES}")
        self.batchnorm = batchnorm
        # As configured (epochs or fractions of the run); resolve_epochs turns them into epochs.
        self.epoch_settings: dict[str, int | float | None] = {
            "start_epoch": _check_epoch(start_epoch, "quantization.start_epoch"),
            "batchnorm_epoch": batchnorm_epoch,
            "observer_freeze_epoch": observer_freeze_epoch,
        }
        for name in ("batchnorm_epoch", "observer_freeze_epoch"):
            if self.epoch_settings[name] is not None:
                _check_epoch(self.epoch_settings[name], f"quantization.{name}")
        self.start_epoch: int | None = None
        self.batchnorm_epoch: int | None = None
        self.observer_freeze_epoch: int | None = None
        self.sharing_epoch: int | None = None
        if isinstance(weight_sharing, Mapping):
            weight_sharing = WeightSharingSettings(**weight_sharing)
        self.weight_sharing = weight_sharing
        if isinstance(calibration_batches, bool) or int(calibration_batches) < 1:
            raise ConfigError(
                "quantization.calibration_batches", calibration_batches, "an integer >= 1"
            )
        self.calibration_batches = int(calibration_batches)
        self.activation_quantizer = ActivationQuantizer(momentum=observer_momentum)
        self.sites: ActivationSites | None = None  # also gives the BatchNorm folds
        if not any(isinstance(v, float) for v in self._all_epoch_settings().values()):
            self.resolve_epochs(None)
        self.layers: dict[str, int] = {}  # quantized layer -> bits
        self.shared_layers: list[str] = []
        self.folded = False
        self.clustered = False

    # -- schedule ------------------------------------------------------------------------
    def _all_epoch_settings(self) -> dict[str, int | float | None]:
        sharing = self.weight_sharing
        return {
            **self.epoch_settings,
            "weight_sharing.epoch": sharing.epoch if sharing is not None else None,
        }

    @property
    def epochs_resolved(self) -> bool:
        return self.start_epoch is not None

    def resolve_epochs(self, max_epochs: int | None) -> None:
        """Turn fractions of the run into epochs and check the phases' order."""
        settings = self._all_epoch_settings()
        resolved = {
            name: None
            if value is None
            else _resolve_epoch(value, max_epochs, f"quantization.{name}")
            for name, value in settings.items()
        }
        start = resolved["start_epoch"]
        freeze = resolved["observer_freeze_epoch"]
        if (
            freeze is not None
            and freeze <= start
            and isinstance(settings["observer_freeze_epoch"], float)
        ):
            freeze = None  # a short run leaves no epoch between the two: keep observing
        if freeze is not None and freeze <= start:
            raise ConfigError(
                "quantization.observer_freeze_epoch",
                settings["observer_freeze_epoch"],
                f"an epoch after start_epoch (epoch {start}; this is epoch {freeze}): observers "
                "need data first; or null to keep them running",
            )
        self.start_epoch = start
        self.batchnorm_epoch = (
            start if resolved["batchnorm_epoch"] is None else resolved["batchnorm_epoch"]
        )
        self.observer_freeze_epoch = freeze
        self.sharing_epoch = resolved["weight_sharing.epoch"]

    # -- setup ---------------------------------------------------------------------------
    @property
    def attached(self) -> bool:
        return bool(self.layers)

    def layer_bits_for(self, names: Sequence[str]) -> dict[str, int | None]:
        bits: dict[str, int | None] = dict.fromkeys(names, self.weight_bits)
        for pattern, value in self.layer_bits.items():
            matched = [name for name in names if fnmatch.fnmatchcase(name, pattern)]
            if not matched:
                raise ConfigError(
                    f"quantization.layer_bits.{pattern}",
                    value,
                    f"a pattern matching a conv/linear layer: {', '.join(names[:12])}",
                )
            for name in matched:
                bits[name] = value
        return bits

    def attach(self, model: nn.Module, example_inputs: Tensor) -> None:
        """Register weight fake-quant (and weight sharing), find and hook activation sites."""
        names = prunable_layer_names(model)
        if not names:
            raise ConfigError(
                "quantization", type(model).__name__, "a student with conv or linear layers"
            )
        # Sites are found on the model as it computes now, before any fake-quant is in the way.
        self.sites = find_activation_sites(model, example_inputs)
        self.layers = {n: b for n, b in self.layer_bits_for(names).items() if b is not None}
        if self.weight_sharing is not None:
            self.shared_layers = [
                name
                for name in names
                if any(fnmatch.fnmatchcase(name, p) for p in self.weight_sharing.include)
            ]
            for name in self.shared_layers:
                attach_weight_sharing(model.get_submodule(name), self.weight_sharing.bits)
        for name, bits in self.layers.items():
            parametrize.register_parametrization(
                model.get_submodule(name), "weight", WeightFakeQuant(bits)
            )
        if self.activations:
            self.activation_quantizer.sites = self.sites
            self.activation_quantizer.attach(model)

    def check_exportable(self) -> None:
        """Only 8- and 7-bit weights are stored as int8 in the QDQ ONNX graph: say which layer."""
        for name, bits in self.layers.items():
            if bits not in EXPORTABLE_WEIGHT_BITS:
                raise ConfigError(
                    f"quantization.layer_bits[{name}]",
                    bits,
                    f"{' or '.join(map(str, EXPORTABLE_WEIGHT_BITS))} bits for the int8 ONNX "
                    "export (export=true); lower bit widths are weight-only experiments: run "
                    "with export=false, or keep this layer at 8 bits",
                )

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not self.epochs_resolved:
            self.resolve_epochs(trainer.max_epochs)
        if not self.attached:
            self.attach(pl_module.student, example_inputs_for_attach(trainer, "quantization", self))

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for observer in observers_of(pl_module.student).values():
            observer.sync_ranks = trainer.world_size > 1

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After the fit only rank 0 works (test, export): nothing to synchronize with.
        for observer in observers_of(pl_module.student).values():
            observer.sync_ranks = False

    # -- phases --------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.enter_epoch(pl_module.student, trainer.current_epoch)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # Lightning puts the model back in train mode around validation; frozen statistics
        # must stay frozen for every batch.
        if trainer.current_epoch >= self.batchnorm_epoch:
            freeze_batchnorm(pl_module.student)

    @torch.no_grad()
    def enter_epoch(self, model: nn.Module, epoch: int) -> None:
        """Switch every phase flag to what `epoch` calls for (idempotent, so resume-safe)."""
        if not self.epochs_resolved:
            raise ConfigError(
                "quantization.start_epoch",
                self.epoch_settings["start_epoch"],
                "resolved to an epoch first: call resolve_epochs(max_epochs)",
            )
        quantizing = epoch >= self.start_epoch
        for name in self.layers:
            get_weight_fake_quant(model.get_submodule(name)).enabled.fill_(quantizing)
        observing = quantizing and (
            self.observer_freeze_epoch is None or epoch < self.observer_freeze_epoch
        )
        for observer in observers_of(model).values():
            observer.enabled.fill_(quantizing)
            observer.observing.fill_(observing)
        if epoch >= self.batchnorm_epoch:
            if self.batchnorm == "fold" and not self.folded:
                fold_batchnorm_in_place(model, self.sites.folds)
                self.folded = True
            freeze_batchnorm(model)
        sharing_epoch = self.sharing_epoch
        if sharing_epoch is not None and epoch >= sharing_epoch and not self.clustered:
            cluster_weights(model, self.shared_layers)
            self.clustered = True

    @contextlib.contextmanager
    def float_weights(self, model: nn.Module) -> Iterator[nn.Module]:
        """Weight fake-quant switched off for the block: `model` computes with its float
        (masked, shared) weights, e.g. to count pruned zeros or for a post-training baseline."""
        quantizers = [get_weight_fake_quant(model.get_submodule(name)) for name in self.layers]
        enabled = [bool(quantizer.enabled) for quantizer in quantizers]
        for quantizer in quantizers:
            quantizer.enabled.fill_(False)
        try:
            yield model
        finally:
            for quantizer, was_enabled in zip(quantizers, enabled, strict=True):
                quantizer.enabled.fill_(was_enabled)

    def describe(self) -> dict[str, Any]:
        """What was quantized, for summary.json."""
        sites = self.sites
        return {
            "layers": dict(self.layers),
            "activation_sites": len(sites.names) if sites and self.activations else 0,
            "batchnorm": self.batchnorm,
            "batchnorm_folds": len(sites.folds) if sites is not None else 0,
            "start_epoch": self.start_epoch,
            "observer_freeze_epoch": self.observer_freeze_epoch,
            "weight_sharing_bits": self.weight_sharing.bits if self.weight_sharing else None,
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


def cluster_weights(model: nn.Module, layers: Sequence[str]) -> None:
    """Cluster each layer's (masked) weights into its shared values."""
    for name in layers:
        cluster_weight_sharing(model.get_submodule(name))
