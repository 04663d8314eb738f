"""Fake quantization: float tensors rounded onto the integer grid they will have when deployed.

Weights: `WeightFakeQuant`, a parametrization registered after the pruning mask (mask, then
quantize), per output channel, symmetric (zero point 0, range [-(2^(b-1)-1), 2^(b-1)-1]), so
pruned weights stay exactly 0 and the ONNX export stores the same integers. The scale follows
the current weights (max |w| per channel); the gradient is straight-through.

Activations: `ActivationFakeQuant`, per tensor, affine uint8, with a moving-average min/max
observer (momentum 0.1: DESIGN.md section 3 measured 0.01 to stall). The same scale and zero
point become the QuantizeLinear / DequantizeLinear pair of the int8 ONNX graph.

torch.ao's eager QAT is deprecated and on x86 its fake-quant clips activations where its own int8
kernels do not (DESIGN.md section 3); these two modules use only the `torch.fake_quantize_*` ops,
or, for activations, `fake_quantize_per_tensor`: the same arithmetic in vectorized elementwise
ops, bit for bit (torch's per-tensor CPU kernel is a scalar loop, ~4x slower, and was most of a
QAT step's overhead on the default student: issue 11).
"""

from __future__ import annotations

import struct
from typing import cast

import torch
from torch import Tensor, nn

from distill.validate import require_int, require_real

WEIGHT_BITS = range(2, 9)  # what fake quantization simulates
EXPORTABLE_WEIGHT_BITS = (7, 8)  # what the int8 QDQ ONNX export stores (int8 initializers)
ACTIVATION_RANGE = (0, 255)  # uint8, affine
_TINY_SCALE = 1e-12  # an all-zero (pruned) channel still needs a positive scale
_MIN_SCALE = 1e-8  # an activation range of (nearly) zero width still needs a positive scale
_FLOAT32 = struct.Struct("f")
# Elements from which activation fake-quant runs vectorized ops rather than torch's scalar-loop
# kernel: the two took the same time at ~2,500 float32 elements (1 thread, AVX2; issue 11).
VECTORIZED_FROM = 2048


def _float32(value: float) -> float:
    """`value` rounded to the nearest float32 (OverflowError beyond float32's range)."""
    return cast(float, _FLOAT32.unpack(_FLOAT32.pack(value))[0])


_MIN_SCALE_FLOAT32 = _float32(_MIN_SCALE)  # what clamp_min(_MIN_SCALE) compares in float32


def check_bits(bits: object, field: str) -> int:
    return require_int(
        field,
        bits,
        WEIGHT_BITS.start,
        WEIGHT_BITS.stop - 1,
        allowed="an integer number of weight bits from 2 to 8 (8: int8 default; 7: int8 kernels "
        "on CPUs without VNNI; 4 and below: weight-only experiments, not exportable to ONNX)",
    )


def _round_to_grid(
    x: Tensor, scale: float, zero_point: int, quant_min: int, quant_max: int
) -> tuple[Tensor, Tensor]:
    """The fake-quant kernel's arithmetic: x * (1 / scale) rounded half to even, clamped to
    [quant_min - zero_point, quant_max - zero_point] (the kernel adds the zero point, clamps to
    [quant_min, quant_max] and subtracts it again: the same integers), times the scale, each step
    one float32 operation rounded as the kernel rounds it. Also returns where x fell inside the
    grid (the gradient's mask), as 1.0 and 0.0."""
    scale = _float32(scale)  # as the kernel takes it
    # Detached rather than under no_grad: the context costs more than an op, at every site.
    rounded = (x.detach() * _float32(1.0 / scale)).round_()
    clamped = rounded.clamp(quant_min - zero_point, quant_max - zero_point)
    # In place of `rounded`, which has no further use; multiplying by 1.0 / 0.0 is what
    # multiplying by the kernel's bool mask does.
    inside = rounded.eq_(clamped)
    # + 0.0: a -0.0 (x rounded to zero from below) is +0.0 out of the kernel's integers.
    return clamped.mul_(scale).add_(0.0), inside


def fake_quantize_per_tensor(
    x: Tensor, scale: float, zero_point: int, quant_min: int, quant_max: int
) -> Tensor:
    """`torch.fake_quantize_per_tensor_affine(x, scale, zero_point, quant_min, quant_max)`, bit
    for bit, by whichever is quicker: torch's op for tensors under `VECTORIZED_FROM` elements
    (one op, where `fake_quantize_per_tensor_vectorized` runs nine) and other than float32, the
    vectorized ops for the rest."""
    if x.dtype != torch.float32 or x.numel() < VECTORIZED_FROM:
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, quant_min, quant_max)
    return fake_quantize_per_tensor_vectorized(x, scale, zero_point, quant_min, quant_max)


def fake_quantize_per_tensor_vectorized(
    x: Tensor, scale: float, zero_point: int, quant_min: int, quant_max: int
) -> Tensor:
    """`torch.fake_quantize_per_tensor_affine` on a float32 `x`, in vectorized elementwise ops:
    the same values and straight-through gradient, bit for bit (torch's CPU kernel is a scalar
    loop, ~4x slower on a 40k-element tensor). Non-finite elements differ: torch's kernel casts
    them to an integer (undefined in C++); here an infinity clamps to its end of the grid and a
    NaN stays NaN."""
    rounded, inside = _round_to_grid(x, scale, zero_point, quant_min, quant_max)
    if not (x.requires_grad and torch.is_grad_enabled()):
        return rounded
    # The straight-through gradient as one built-in autograd node (a Python autograd.Function,
    # or adding a zero that carries the gradient, cost more than torch's kernel saves on small
    # tensors): `x * inside` backpropagates `grad * inside`, which is torch's cachemask
    # backward exactly; its saved tensor is `inside`, so its values may be replaced.
    through = x * inside
    through.data = rounded
    return through


class WeightFakeQuant(nn.Module):
    """Parametrization: per-channel symmetric fake quantization of a weight, off until enabled.

    The `enabled` flag is a buffer, so a checkpoint taken during the float warm-up restores a
    float model and one taken during QAT a quantized one.
    """

    enabled: Tensor

    def __init__(self, bits: int = 8) -> None:
        super().__init__()
        self.bits = check_bits(bits, "quantization.weight_bits")
        self.qmax = 2 ** (bits - 1) - 1
        self.register_buffer("enabled", torch.tensor(False))

    def scale(self, weight: Tensor) -> Tensor:
        """One scale per output channel (dim 0): the channel's max |w| maps to qmax."""
        amax = weight.detach().abs().flatten(1).amax(dim=1) if weight.dim() > 1 else weight.abs()
        return (amax / self.qmax).clamp_min(_TINY_SCALE).float()

    def forward(self, weight: Tensor) -> Tensor:
        if not bool(self.enabled):
            return weight
        scale = self.scale(weight)
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(
            weight, scale, zero_point, 0, -self.qmax, self.qmax
        )

    @torch.no_grad()
    def quantize(self, weight: Tensor) -> tuple[Tensor, Tensor]:
        """The integers and per-channel scales `forward` uses: `forward(w) == q * scale` exactly.

        `weight` is this parametrization's input (the masked weight), not the effective one.
        The rounding repeats the fake-quant kernel's arithmetic (x * (1 / scale), round half to
        even), so dequantizing in float32 gives back the fake-quantized weight bit for bit.
        """
        scale = self.scale(weight)
        shape = (-1,) + (1,) * (weight.dim() - 1)
        inverse = (1.0 / scale).view(shape)
        q = torch.round(weight.float() * inverse).clamp_(-self.qmax, self.qmax)
        return q.to(torch.int8), scale

    def extra_repr(self) -> str:
        return f"bits={self.bits}, enabled={bool(self.enabled)}"


class ActivationFakeQuant(nn.Module):
    """Observer + fake quantization of one activation tensor (per tensor, affine uint8).

    `observing`: update the moving min/max in training mode (the first batch sets them).
    `enabled`: round the tensor onto the grid the min/max define. Both are buffers, so the
    phase is part of the model's state; under DDP, buffers are broadcast from rank 0 before
    every forward, so all ranks quantize with the same scales.
    """

    # Exists only to train and export the student: not part of the plain (baked) student.
    training_only = True

    min_val: Tensor
    max_val: Tensor
    initialized: Tensor
    enabled: Tensor
    observing: Tensor

    def __init__(self, momentum: float = 0.1) -> None:
        super().__init__()
        self.momentum = require_real(
            "quantization.observer_momentum",
            momentum,
            0.0,
            1.0,
            min_inclusive=False,
            allowed="a number in (0, 1]",
        )
        # Set by the QAT callback while a multi-process fit runs: every rank then observes the
        # min/max of the global batch, so all ranks hold the same ranges at every step.
        self.sync_ranks = False
        self.register_buffer("min_val", torch.tensor(0.0))
        self.register_buffer("max_val", torch.tensor(0.0))
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("enabled", torch.tensor(False))
        self.register_buffer("observing", torch.tensor(False))

    def observe(self, x: Tensor) -> None:
        # Nothing here records autograd history (x detached, buffers): no no_grad context,
        # which costs more than the rest at every site, every step.
        low, high = torch.aminmax(x.detach())  # one pass over the tensor, not two
        low, high = low.float(), high.float()
        if self.sync_ranks:
            extremes = torch.stack([-low, high])
            torch.distributed.all_reduce(extremes, op=torch.distributed.ReduceOp.MAX)
            low, high = -extremes[0], extremes[1]
        if not bool(self.initialized):
            self.min_val.copy_(low)
            self.max_val.copy_(high)
            self.initialized.fill_(True)
        else:
            self.min_val.lerp_(low, self.momentum)
            self.max_val.lerp_(high, self.momentum)

    def qparams(self) -> tuple[Tensor, Tensor]:
        """(scale, zero_point) of the uint8 grid covering [min, max] and always 0 itself."""
        qmin, qmax = ACTIVATION_RANGE
        low = self.min_val.clamp(max=0.0)
        high = self.max_val.clamp(min=0.0)
        scale = ((high - low) / (qmax - qmin)).clamp_min(_MIN_SCALE)
        zero_point = (qmin - torch.round(low / scale)).clamp(qmin, qmax).to(torch.int32)
        return scale, zero_point

    def host_qparams(self) -> tuple[float, int]:
        """`qparams()` as Python numbers, bit for bit, in a fraction of the time of its ten 0-d
        tensor ops (this runs at every site, every step): each float32 operation computed in
        double and rounded to float32 once, which is the float32 result (a double holds more
        than 2 * 24 + 2 bits). A range that is NaN or beyond float32 goes through `qparams()`."""
        qmin, qmax = ACTIVATION_RANGE
        low = min(self.min_val.item(), 0.0)
        high = max(self.max_val.item(), 0.0)
        try:
            scale = max(_float32(_float32(high - low) / (qmax - qmin)), _MIN_SCALE_FLOAT32)
            zero_point = min(max(qmin - round(_float32(low / scale)), qmin), qmax)
        except (OverflowError, ValueError):
            scale_tensor, zero_point_tensor = self.qparams()
            return float(scale_tensor), int(zero_point_tensor)
        return scale, zero_point

    def forward(self, x: Tensor) -> Tensor:
        if self.training and bool(self.observing):
            self.observe(x)
        if not bool(self.enabled) or not bool(self.initialized):
            return x
        scale, zero_point = self.host_qparams()
        return fake_quantize_per_tensor(x, scale, zero_point, *ACTIVATION_RANGE)

    def reference_forward(self, x: Tensor) -> Tensor:
        """`forward` as it was before issue 11 (0-d tensor qparams, torch's fake-quant kernel):
        the same numbers, slower; kept to check and time `forward` against."""
        if self.training and bool(self.observing):
            self.observe(x)
        if not bool(self.enabled) or not bool(self.initialized):
            return x
        scale, zero_point = self.qparams()
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, *ACTIVATION_RANGE)

    def extra_repr(self) -> str:
        return (
            f"momentum={self.momentum}, enabled={bool(self.enabled)}, "
            f"observing={bool(self.observing)}"
        )
