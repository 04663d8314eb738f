"""The int8 deployment model: BatchNorm folded, int8 weights, explicit quantize/dequantize ops.

The fake-quant ops of training do not export with a dynamic batch (DESIGN.md section 3); explicit
`quantized_decomposed` quantize/dequantize ops with frozen scales do, and the ONNX exporter turns
them into QuantizeLinear / DequantizeLinear. onnxruntime then fuses DequantizeLinear -> Conv ->
QuantizeLinear into QLinearConv (and adds into QLinearAdd) when every input of the op comes from
a DequantizeLinear, which is why activations are quantized at the same sites as in training.

Weights are stored as int8 tensors (7-bit weights use the int8 type with a smaller range), one
symmetric scale per output channel, zero point 0; the bias stays float.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Registers torch.ops.quantized_decomposed (the ops the ONNX exporter maps to Q/DQ).
from torch.ao.quantization.fx import _decomposed  # noqa: F401
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from distill.compression.activation_sites import INPUT_SITE, SiteHooks
from distill.compression.fake_quant import ACTIVATION_RANGE, EXPORTABLE_WEIGHT_BITS, WeightFakeQuant
from distill.errors import ConfigError

_decomposed_ops = torch.ops.quantized_decomposed
QParams = tuple[float, int]  # (scale, zero point) of a uint8 activation


class QDQLayer(nn.Module):
    """A conv or linear layer whose weight is int8 + per-channel scales, dequantized in forward."""

    qweight: Tensor
    scale: Tensor
    zero_point: Tensor

    def __init__(self, layer: nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear, bits: int) -> None:
        super().__init__()
        if bits not in EXPORTABLE_WEIGHT_BITS:
            raise ConfigError(
                "quantization.weight_bits",
                bits,
                f"{' or '.join(map(str, EXPORTABLE_WEIGHT_BITS))} for the int8 ONNX export",
            )
        quantizer = WeightFakeQuant(bits)
        qweight, scale = quantizer.quantize(layer.weight.detach())
        self.register_buffer("qweight", qweight)
        self.register_buffer("scale", scale)
        self.register_buffer("zero_point", torch.zeros_like(scale, dtype=torch.int64))
        self.qmax = quantizer.qmax
        bias = None if layer.bias is None else layer.bias.detach().clone()
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.kind = nn.Linear if isinstance(layer, nn.Linear) else type(layer)
        # Hyper-parameters only: keeping the float layer would carry its weight into the file.
        self.conv_args: dict = {}
        self.pad: tuple[Sequence[int], str] | None = None
        if not isinstance(layer, nn.Linear):
            self.conv_args = {
                key: getattr(layer, key) for key in ("stride", "padding", "dilation", "groups")
            }
            if layer.padding_mode != "zeros":
                # What the conv's own forward does: pad first, then convolve without padding.
                self.pad = (layer._reversed_padding_repeated_twice, layer.padding_mode)
                self.conv_args["padding"] = 0

    def dequantized_weight(self) -> Tensor:
        return _decomposed_ops.dequantize_per_channel(
            self.qweight, self.scale, self.zero_point, 0, -127, 127, torch.int8
        )

    def forward(self, x: Tensor) -> Tensor:
        weight = self.dequantized_weight()
        if self.kind is nn.Linear:
            return F.linear(x, weight, self.bias)
        if self.pad is not None:
            x = F.pad(x, self.pad[0], mode=self.pad[1])
        return _CONVS[weight.dim() - 2](x, weight, self.bias, **self.conv_args)


# The functional conv for a weight of 1, 2 or 3 spatial dims (a parametrized layer's class is
# a generated subclass, so the kind is read off the weight, not the class).
_CONVS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def qdq(scale: float, zero_point: int) -> Callable[[Tensor], Tensor]:
    """quantize -> dequantize with frozen uint8 parameters (QuantizeLinear/DequantizeLinear)."""
    qmin, qmax = ACTIVATION_RANGE

    def apply(x: Tensor) -> Tensor:
        q = _decomposed_ops.quantize_per_tensor(x, scale, zero_point, qmin, qmax, torch.uint8)
        return _decomposed_ops.dequantize_per_tensor(q, scale, zero_point, qmin, qmax, torch.uint8)

    return apply


def fold_batchnorms(model: nn.Module, folds: Mapping[str, str]) -> nn.Module:
    """Fold each BatchNorm into the conv/linear before it (eval statistics); the norm becomes an
    Identity under its own name, so activation sites keep their names."""
    for layer_name, norm_name in folds.items():
        layer = model.get_submodule(layer_name).eval()
        norm = cast(_BatchNorm, model.get_submodule(norm_name).eval())
        if isinstance(layer, nn.Linear):
            fused: nn.Module = fuse_linear_bn_eval(layer, norm)
        else:
            fused = fuse_conv_bn_eval(cast(nn.Conv2d, layer), norm)  # Conv1d or Conv2d
        _replace(model, layer_name, fused)
        _replace(model, norm_name, nn.Identity())
    return model


def build_qdq_model(
    plain_model: nn.Module,
    sites: list[str],
    qparams: Mapping[str, QParams],
    layer_bits: Mapping[str, int],
    folds: Mapping[str, str],
) -> nn.Module:
    """A copy of `plain_model` (baked, possibly slimmed) ready for the int8 ONNX export.

    `layer_bits` names the conv/linear layers with int8 weights; the others stay float, and so
    does attention's output projection.
    `qparams` holds each activation site's (scale, zero point).
    """
    missing = [site for site in sites if site not in qparams]
    if missing:
        raise ConfigError("quantization.sites", missing[:5], "sites with observed ranges")
    model = fold_batchnorms(copy.deepcopy(plain_model).eval(), folds)
    for name, bits in layer_bits.items():
        parent_name = name.rpartition(".")[0]
        if isinstance(model.get_submodule(parent_name), nn.MultiheadAttention):
            # Attention reads `out_proj.weight` itself instead of calling the layer; it keeps
            # its float weight (which already holds the fake-quantized values).
            continue
        layer = cast(nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear, model.get_submodule(name))
        _replace(model, name, QDQLayer(layer, bits))
    ordered = [site for site in sites if site != INPUT_SITE]
    if INPUT_SITE in sites:
        ordered.insert(0, INPUT_SITE)
    # The hooks stay registered on the returned model for as long as it lives.
    hooks = SiteHooks(model, ordered, lambda site: qdq(*qparams[site]))
    setattr(model, "_qdq_hooks", hooks)  # noqa: B010 (nn.Module's attributes are typed loosely)
    return model


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attribute = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attribute, new)
