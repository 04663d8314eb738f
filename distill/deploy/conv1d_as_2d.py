"""1-D convolutions exported as 2-D ones of height 1, for onnxruntime's fp32 kernels.

onnxruntime's CPU Conv has fast paths for 2-D convolutions (NCHWc blocking, a depthwise kernel)
that its 1-D Conv does not take: a 1-D depthwise conv runs group by group through im2col and a
tiny GEMM. Measured here (benchmarks/deploy.py ort): a depthwise Conv1d of 240 channels over
length 5 at batch 64 took 3.1 ms, the same conv as a Conv2d of kernel (1, 3) 0.2 ms, and the
slim fp32 file of a 1-D MobileNetV2 ran slower than the dense student in torch eager. So the
fp32 ONNX file of a student with Conv1d layers computes each of them as
Unsqueeze -> Conv2d (kernel (1, k)) -> Squeeze: the same weights and the same numbers.

The int8 file keeps its 1-D convs: onnxruntime fuses their QDQ into QLinearConv and runs them
as 2-D itself (one Unsqueeze at the first conv, one Squeeze after the last), while an Unsqueeze
between a DequantizeLinear and its Conv stops the fusion. Measured (MobileNetV2-1D x0.5, 75% of
channels removed, 1 thread): written as 2-D, none of the 52 convs fused and the file ran 9.8x
slower at batch 64 (3.6x at batch 1) than the 1-D file.
"""

from __future__ import annotations

import copy

from torch import Tensor, nn


class Conv1dAs2d(nn.Module):
    """`conv` (an `nn.Conv1d`) computed by a Conv2d over a height-1 view of its input."""

    def __init__(self, conv: nn.Conv1d) -> None:
        super().__init__()
        padding = conv.padding if isinstance(conv.padding, str) else (0, conv.padding[0])
        self.conv = nn.Conv2d(
            conv.in_channels,
            conv.out_channels,
            kernel_size=(1, conv.kernel_size[0]),
            stride=(1, conv.stride[0]),
            padding=padding,
            dilation=(1, conv.dilation[0]),
            groups=conv.groups,
            bias=conv.bias is not None,
        )
        self.conv.weight = nn.Parameter(conv.weight.detach().unsqueeze(2).clone())
        if conv.bias is not None:
            self.conv.bias = nn.Parameter(conv.bias.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x.unsqueeze(-2)).squeeze(-2)


def convs_as_2d(model: nn.Module) -> nn.Module:
    """A copy of `model` whose zero-padded `nn.Conv1d` layers run as `Conv1dAs2d` (unchanged
    when it has none); `model` itself is left as it is."""
    if not any(_convertible(module) for module in model.modules()):
        return model
    converted = copy.deepcopy(model)
    for name, module in list(converted.named_modules()):
        if _convertible(module):
            parent, _, child = name.rpartition(".")
            converted.get_submodule(parent).register_module(child, Conv1dAs2d(module))
    return converted.eval()


def _convertible(module: nn.Module) -> bool:
    # Other padding modes pad with their own op first; leave those layers as they are.
    return type(module) is nn.Conv1d and module.padding_mode == "zeros"
