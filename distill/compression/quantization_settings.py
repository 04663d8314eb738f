"""What quantization does, as typed and validated settings (the `quantization.*` config group).

`QuantizationSettings` holds every `quantization.*` field that `QuantizationCallback` takes from
Hydra, checked once at construction; `resolve_epochs` turns its epochs (numbers, or fractions of
`trainer.max_epochs`) into the `QuantizationEpochs` of one run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from distill.compression.fake_quant import check_bits
from distill.compression.run_points import check_point, point_allowed, resolve_point
from distill.compression.shared_weights import check_sharing_bits
from distill.errors import ConfigError
from distill.validate import require_bool, require_choice, require_int

BATCHNORM_MODES = ("fold", "freeze")
EPOCH_ALLOWED = point_allowed("epoch", "trainer.max_epochs")


def check_epoch(field_name: str, value: Any) -> int | float:
    """An epoch: an integer >= 0, or a fraction of trainer.max_epochs in (0, 1)."""
    return check_point(field_name, value, "epoch", "trainer.max_epochs")


def resolve_epoch(field_name: str, value: int | float, max_epochs: int | None) -> int:
    """`value` as an epoch number: integers as they are, fractions of `max_epochs` rounded down."""
    return resolve_point(field_name, value, max_epochs, "trainer.max_epochs")


@dataclass(frozen=True)
class WeightSharingSettings:
    """k-means weight sharing (Han et al. 2016): `bits` per index (2^bits shared values per
    layer), from `epoch`, on the conv/linear layers matching one of the `include` patterns."""

    bits: int = 4
    epoch: int | float = 0
    include: Sequence[str] = ("*",)

    def __post_init__(self) -> None:
        check_sharing_bits(self.bits, "quantization.weight_sharing.bits")
        object.__setattr__(
            self, "epoch", check_epoch("quantization.weight_sharing.epoch", self.epoch)
        )
        include = self.include
        # A bare string is a Sequence too, but its patterns would be its characters.
        if isinstance(include, str) or not all(isinstance(p, str) for p in include):
            raise ConfigError(
                "quantization.weight_sharing.include", include, "a list of layer name patterns"
            )
        object.__setattr__(self, "include", tuple(include))


@dataclass(frozen=True)
class QuantizationEpochs:
    """The epochs at which each QAT phase starts, for one run (`observer_freeze` and
    `weight_sharing` None: never)."""

    start: int
    batchnorm: int
    observer_freeze: int | None
    weight_sharing: int | None


@dataclass(frozen=True)
class QuantizationSettings:
    """Quantization-aware training of the student, and the int8 export it leads to.

    `weight_bits` applies to every conv/linear layer; `layer_bits` maps name patterns to bits of
    their own, or to None to leave a layer in float (the last matching pattern wins; a pattern
    matching no layer is refused when the student is prepared). Epochs are numbers or fractions
    of `trainer.max_epochs`; `batchnorm_epoch` defaults to `start_epoch`, `observer_freeze_epoch`
    None keeps observing to the end; while observing, `observer_interval` > 1 updates the ranges
    only every that many optimizer steps (global_step a multiple of it, or a range never set yet):
    a cheaper QAT step, different numbers, so off (1) by default. `observer_momentum` is
    checked when the observers are made (`Quantizer.prepare`), since weight-only QAT makes none.
    `calibration_batches`: training batches of the static post-training calibration.
    """

    weight_bits: int = 8
    layer_bits: Mapping[str, int | None] = field(default_factory=dict)
    activations: bool = True
    start_epoch: int | float = 0
    batchnorm: str = "fold"
    batchnorm_epoch: int | float | None = None
    observer_freeze_epoch: int | float | None = None
    observer_momentum: float = 0.1
    observer_interval: int = 1
    weight_sharing: WeightSharingSettings | None = None
    calibration_batches: int = 32

    def __post_init__(self) -> None:
        check_bits(self.weight_bits, "quantization.weight_bits")
        layer_bits = dict(self.layer_bits or {})
        for pattern, bits in layer_bits.items():
            if bits is not None:
                check_bits(bits, f"quantization.layer_bits.{pattern}")
        object.__setattr__(self, "layer_bits", layer_bits)  # a copy: the caller's dict may change
        require_bool("quantization.activations", self.activations)
        require_choice("quantization.batchnorm", self.batchnorm, BATCHNORM_MODES)
        for name in ("start_epoch", "batchnorm_epoch", "observer_freeze_epoch"):
            value = getattr(self, name)
            if value is not None or name == "start_epoch":
                object.__setattr__(self, name, check_epoch(f"quantization.{name}", value))
        sharing = self.weight_sharing
        if isinstance(sharing, Mapping):
            object.__setattr__(self, "weight_sharing", WeightSharingSettings(**sharing))
        elif sharing is not None and not isinstance(sharing, WeightSharingSettings):
            raise ConfigError(
                "quantization.weight_sharing", sharing, "null or {bits, epoch, include}"
            )
        require_int("quantization.calibration_batches", self.calibration_batches, minimum=1)
        require_int(
            "quantization.observer_interval",
            self.observer_interval,
            minimum=1,
            allowed="an integer >= 1: observers update every that many training steps "
            "(1: every step, the default)",
        )
        if not self.has_fractions:
            self.resolve_epochs(None)  # integer epochs: their order is checked now

    @property
    def epochs(self) -> dict[str, int | float | None]:
        """Every phase's epoch as configured, by config field under `quantization.`."""
        return {
            "start_epoch": self.start_epoch,
            "batchnorm_epoch": self.batchnorm_epoch,
            "observer_freeze_epoch": self.observer_freeze_epoch,
            "weight_sharing.epoch": self.weight_sharing.epoch if self.weight_sharing else None,
        }

    @property
    def has_fractions(self) -> bool:
        """Whether some epoch is a fraction of the run, so resolving needs max_epochs."""
        return any(isinstance(value, float) for value in self.epochs.values())

    def resolve_epochs(self, max_epochs: int | None) -> QuantizationEpochs:
        """Turn fractions of the run into epochs and check the phases' order."""
        configured = self.epochs
        resolved = {
            name: None
            if value is None
            else resolve_epoch(f"quantization.{name}", value, max_epochs)
            for name, value in configured.items()
        }
        start = cast(int, resolved["start_epoch"])  # never None: checked at construction
        freeze = resolved["observer_freeze_epoch"]
        if freeze is not None and freeze <= start:
            if isinstance(configured["observer_freeze_epoch"], float):
                freeze = None  # a short run leaves no epoch between the two: keep observing
            else:
                raise ConfigError(
                    "quantization.observer_freeze_epoch",
                    configured["observer_freeze_epoch"],
                    f"an epoch after start_epoch (epoch {start}; this is epoch {freeze}): "
                    "observers need data first; or null to keep them running",
                )
        batchnorm = resolved["batchnorm_epoch"]
        return QuantizationEpochs(
            start=start,
            batchnorm=start if batchnorm is None else batchnorm,
            observer_freeze=freeze,
            weight_sharing=resolved["weight_sharing.epoch"],
        )
