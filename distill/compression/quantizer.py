"""`Quantizer`: everything quantization does to a student, in two steps (as torchao's quantizers).

1. Prepare. `prepare(model, example_inputs)` readies a student for quantization-aware training,
   in place: weight sharing and weight fake-quant join each conv/linear weight's chain after its
   mask (`parametrizations.py`), and observers are hooked in at the activation sites
   (`activation_sites.py`). `prepare_static(model, example_inputs)` readies a copy of a float
   model for static post-training calibration instead: observers only.
2. Convert. `convert(plain_model, qparams)` builds the int8 QDQ deployment model (`qdq.py`) of the
   baked (possibly slimmed) student, with the activation scales `qparams(model)` reads from the
   observers, learned in QAT or fed by `calibrate(model, batches)`.

In between, `set_phase`, `fold_batchnorm` and `cluster_weights` switch what the prepared student
computes; `QuantizationCallback` decides at which epoch.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from distill.compression.activation_sites import (
    ActivationQuantizer,
    ActivationSites,
    find_activation_sites,
    observers_of,
)
from distill.compression.batchnorm import fold_batchnorm_in_place
from distill.compression.fake_quant import EXPORTABLE_WEIGHT_BITS, WeightFakeQuant
from distill.compression.parametrizations import get_weight_fake_quant, register
from distill.compression.qdq import QParams, build_qdq_model
from distill.compression.quantization_settings import QuantizationSettings
from distill.compression.selection import prunable_layer_names
from distill.compression.sharing import attach_weight_sharing, cluster_weight_sharing
from distill.errors import ConfigError

# The observers of a static calibration average with this momentum whatever QAT's
# observer_momentum is, so the post-training baseline of the report is the same for every run.
CALIBRATION_MOMENTUM = 0.1


class Quantizer:
    """Prepares one student for int8 quantization and converts it for deployment.

    After `prepare` (or `prepare_static`), `sites` holds the activation sites and BatchNorm folds
    found on the model, `layers` each quantized conv/linear layer's weight bits (layers mapped to
    None by `layer_bits` stay float), and `shared_layers` the layers with weight sharing. One
    Quantizer prepares one model.
    """

    def __init__(self, settings: QuantizationSettings | None = None) -> None:
        self.settings = settings if settings is not None else QuantizationSettings()
        self.sites: ActivationSites | None = None
        self.layers: dict[str, int] = {}
        self.shared_layers: list[str] = []
        self._hooks: ActivationQuantizer | None = None

    @property
    def prepared(self) -> bool:
        return self.sites is not None

    # -- prepare ---------------------------------------------------------------------------
    def layer_bits_for(self, names: Sequence[str]) -> dict[str, int | None]:
        """Each of `names`' weight bits: `weight_bits`, or the last `layer_bits` pattern's."""
        bits: dict[str, int | None] = dict.fromkeys(names, self.settings.weight_bits)
        for pattern, value in self.settings.layer_bits.items():
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

    def _plan(self, model: nn.Module, example_inputs: Tensor) -> list[str]:
        """Find `model`'s sites and choose its quantized layers; returns its conv/linear names."""
        if self.prepared:
            raise ConfigError(
                "quantization", type(model).__name__, "a Quantizer not prepared yet (one per model)"
            )
        names = prunable_layer_names(model)
        if not names:
            raise ConfigError(
                "quantization", type(model).__name__, "a student with conv or linear layers"
            )
        # Sites are found on the model as it computes now, before any fake-quant is in the way.
        sites = find_activation_sites(model, example_inputs)
        self.layers = {n: b for n, b in self.layer_bits_for(names).items() if b is not None}
        self.sites = sites
        return names

    def prepare(self, model: nn.Module, example_inputs: Tensor) -> nn.Module:
        """Ready `model` for QAT, in place (call it after the pruning masks are attached).

        Registers weight sharing (when configured) and weight fake-quant on every quantized
        layer, both off until `set_phase` / `cluster_weights`, and, with `activations`, one
        observer per activation site in `model.activation_quant`, hooked in. Returns `model`.
        """
        names = self._plan(model, example_inputs)
        sharing = self.settings.weight_sharing
        if sharing is not None:
            self.shared_layers = [
                name for name in names if any(fnmatch.fnmatchcase(name, p) for p in sharing.include)
            ]
            for name in self.shared_layers:
                attach_weight_sharing(model.get_submodule(name), sharing.bits)
        for name, bits in self.layers.items():
            register(model.get_submodule(name), "weight", WeightFakeQuant(bits))
        if self.settings.activations:
            self._hook_observers(model, self.settings.observer_momentum)
        return model

    def prepare_static(self, model: nn.Module, example_inputs: Tensor) -> nn.Module:
        """A copy of the float `model` (baked, eval) with observers at its activation sites, for
        `calibrate`: weights untouched (the converted model rounds them itself), activations
        observed in float (the observers observe but do not round)."""
        calibrated = copy.deepcopy(model).eval()
        self._plan(calibrated, example_inputs)
        self._hook_observers(calibrated, CALIBRATION_MOMENTUM)
        return calibrated

    def _hook_observers(self, model: nn.Module, momentum: float) -> None:
        self._hooks = ActivationQuantizer(self.sites, momentum)
        self._hooks.attach(model)

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

    # -- phases of a prepared student ------------------------------------------------------
    def _weight_quantizers(self, model: nn.Module) -> list[WeightFakeQuant]:
        quantizers = []
        for name in self.layers:
            quantizer = get_weight_fake_quant(model.get_submodule(name))
            if quantizer is None:
                raise ConfigError("quantization", name, "a layer prepared by this Quantizer")
            quantizers.append(quantizer)
        return quantizers

    @torch.no_grad()
    def set_phase(self, model: nn.Module, quantize: bool, observe: bool) -> None:
        """Weight and activation fake-quant on or off; observers moving their ranges or not."""
        for quantizer in self._weight_quantizers(model):
            quantizer.enabled.fill_(quantize)
        for observer in observers_of(model).values():
            observer.enabled.fill_(quantize)
            observer.observing.fill_(observe)

    @torch.no_grad()
    def observe_now(self, model: nn.Module, due: bool) -> None:
        """During the observing phase with `observer_interval` > 1: observers update their
        ranges on this step if it is `due`, and those that never observed do in any case."""
        for observer in observers_of(model).values():
            observer.observing.fill_(due or not bool(observer.initialized))

    def fold_batchnorm(self, model: nn.Module) -> None:
        """Fold each BatchNorm into the conv/linear before it, keeping every key."""
        fold_batchnorm_in_place(model, self._sites().folds)

    def cluster_weights(self, model: nn.Module) -> None:
        """Cluster each shared layer's (masked) weights into its shared values."""
        for name in self.shared_layers:
            cluster_weight_sharing(model.get_submodule(name))

    def sync_observers(self, model: nn.Module, across_ranks: bool) -> None:
        """Observe the min/max of the global batch (all ranks), or of this process's only."""
        for observer in observers_of(model).values():
            observer.sync_ranks = across_ranks

    @contextlib.contextmanager
    def float_weights(self, model: nn.Module) -> Iterator[nn.Module]:
        """Weight fake-quant switched off for the block: `model` computes with its float
        (masked, shared) weights, e.g. to count pruned zeros or for a post-training baseline."""
        quantizers = self._weight_quantizers(model)
        enabled = [bool(quantizer.enabled) for quantizer in quantizers]
        for quantizer in quantizers:
            quantizer.enabled.fill_(False)
        try:
            yield model
        finally:
            for quantizer, was_enabled in zip(quantizers, enabled, strict=True):
                quantizer.enabled.fill_(was_enabled)

    # -- calibrate and convert -------------------------------------------------------------
    @torch.no_grad()
    def calibrate(self, model: nn.Module, batches: Iterable[Tensor]) -> int:
        """Static calibration: run at most `calibration_batches` input batches through `model`
        with its observers observing; returns how many ran.

        The rest of the model computes in eval mode (BatchNorm keeps the trained statistics);
        observers that round (a QAT student) keep rounding, fresh ones (`prepare_static`) observe
        float activations. Afterwards every observer's flag and the model's mode are as before.
        """
        observers = observers_of(model)
        if not observers:
            raise ConfigError(
                "quantization.activations",
                self.settings.activations,
                "a model with activation observers: prepare it first (prepare_static for a "
                "float model)",
            )
        was_training = model.training
        observing = {site: bool(observer.observing) for site, observer in observers.items()}
        model.eval()
        for observer in observers.values():
            observer.observing.fill_(True)
            observer.train()  # observers only observe in training mode
        count = 0
        try:
            for inputs in itertools.islice(batches, self.settings.calibration_batches):
                model(inputs)
                count += 1
        finally:
            for site, observer in observers.items():
                observer.observing.fill_(observing[site])
            model.train(was_training)
        return count

    def qparams(self, model: nn.Module) -> dict[str, QParams]:
        """Each activation site's (scale, zero point), from `model`'s observers."""
        qparams = {}
        for site, observer in observers_of(model).items():
            if not bool(observer.initialized):
                raise ConfigError(
                    "quantization.start_epoch",
                    "after the last epoch",
                    f"a QAT phase that saw data: the observer at {site!r} never ran (start QAT "
                    "before the final epoch)",
                )
            scale, zero_point = observer.qparams()
            qparams[site] = (float(scale), int(zero_point))
        return qparams

    def convert(self, plain_model: nn.Module, qparams: Mapping[str, QParams]) -> nn.Module:
        """The int8 QDQ deployment model of `plain_model` (the baked student, possibly slimmed;
        not changed): BatchNorm folded, int8 weights for `layers`, Q/DQ at every site."""
        sites = self._sites()
        return build_qdq_model(plain_model, sites.names, qparams, self.layers, sites.folds)

    def _sites(self) -> ActivationSites:
        if self.sites is None:
            raise ConfigError("quantization", None, "a Quantizer that prepared a model first")
        return self.sites

    def describe(self) -> dict[str, Any]:
        """What was quantized, for summary.json."""
        sites, sharing = self.sites, self.settings.weight_sharing
        return {
            "layers": dict(self.layers),
            "activation_sites": len(sites.names) if sites and self.settings.activations else 0,
            "batchnorm": self.settings.batchnorm,
            "batchnorm_folds": len(sites.folds) if sites is not None else 0,
            "weight_sharing_bits": sharing.bits if sharing is not None else None,
        }
