"""Building blocks of the MobileNets, for 1-D signals and 2-D images alike (`dims`).

Every nonlinearity is a module (ReLU6, Hardswish, Hardsigmoid), never a functional call, and the
two functional ops of the blocks (the residual add, the squeeze-and-excitation product) are the
last op of a block's own `forward`: quantization observes module outputs, so every tensor a conv
reads is then quantized and onnxruntime can run every conv in int8 (see
`distill/compression/activation_sites.py`).
"""

from __future__ import annotations

from typing import cast

from torch import Tensor, nn

from distill.errors import ConfigError


def make_divisible(value: float, divisor: int = 8) -> int:
    """`value` rounded to the nearest multiple of `divisor`, never below `divisor` nor more than
    10% below `value`: the channel rounding of the MobileNet reference code (`_make_divisible`
    in the TensorFlow models repository, used by Sandler et al. 2018 and Howard et al. 2019)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def require_dims(dims: object) -> int:
    """1 (Conv1d on `(batch, channels, length)`) or 2 (Conv2d on images)."""
    if isinstance(dims, bool) or dims not in (1, 2):
        raise ConfigError("dims", dims, "1 (signals, Conv1d) or 2 (images, Conv2d)")
    return 1 if dims == 1 else 2


def conv(dims: int, *args: object, **kwargs: object) -> nn.Module:
    """`nn.Conv1d` or `nn.Conv2d` with the same arguments."""
    layer = nn.Conv1d if dims == 1 else nn.Conv2d
    return layer(*args, **kwargs)  # type: ignore[arg-type]


def batch_norm(dims: int, channels: int) -> nn.Module:
    return nn.BatchNorm1d(channels) if dims == 1 else nn.BatchNorm2d(channels)


def global_pool(dims: int) -> nn.Module:
    return nn.AdaptiveAvgPool1d(1) if dims == 1 else nn.AdaptiveAvgPool2d(1)


# The activations the block tables name: ReLU6 (V2 throughout), ReLU and hard-swish (V3).
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "hardswish": nn.Hardswish,
}


class ConvNormAct(nn.Sequential):
    """conv (no bias: the BatchNorm after it subtracts the mean) → BatchNorm → activation.

    Module names: `0` (conv), `1` (BatchNorm), `2` (activation, absent for a linear layer such
    as the projection of an inverted residual block).
    """

    def __init__(
        self,
        dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        activation: str | None = "relu6",
    ) -> None:
        layers = [
            conv(
                dims,
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=(kernel_size - 1) // 2,
                groups=groups,
                bias=False,
            ),
            batch_norm(dims, out_channels),
        ]
        if activation is not None:
            layers.append(ACTIVATIONS[activation]())
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """Channel gate x * hardsigmoid(fc2(relu(fc1(pool(x))))) (Hu et al. 2018, "Squeeze-and-
    excitation networks", with the hard-sigmoid gate of Howard et al. 2019).

    `fc1` / `fc2` are 1x1 convs with bias (no BatchNorm on a pooled vector). Module names:
    `pool`, `fc1`, `relu`, `fc2`, `gate`.
    """

    def __init__(self, dims: int, channels: int, squeeze_channels: int) -> None:
        super().__init__()
        self.pool = global_pool(dims)
        self.fc1 = conv(dims, channels, squeeze_channels, 1)
        self.relu = nn.ReLU()
        self.fc2 = conv(dims, squeeze_channels, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(self.fc2(self.relu(self.fc1(self.pool(x)))))


class InvertedResidual(nn.Module):
    """Inverted residual block (Sandler et al. 2018, "MobileNetV2: Inverted residuals and linear
    bottlenecks"), optionally with squeeze-and-excitation (Howard et al. 2019).

    1x1 expand conv + BN + activation (absent when `expanded_channels == in_channels`),
    depthwise `kernel_size` conv + BN + activation, optional SE, 1x1 linear projection + BN,
    plus the input when the stride is 1 and the width unchanged. Module names: `expand`,
    `depthwise`, `se` (None without SE), `project`, each a `ConvNormAct` except `se`.
    """

    def __init__(
        self,
        dims: int,
        in_channels: int,
        expanded_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        activation: str = "relu6",
        squeeze_channels: int | None = None,
    ) -> None:
        super().__init__()
        self.expand: nn.Module | None = None
        if expanded_channels != in_channels:
            self.expand = ConvNormAct(dims, in_channels, expanded_channels, activation=activation)
        self.depthwise = ConvNormAct(
            dims,
            expanded_channels,
            expanded_channels,
            kernel_size,
            stride=stride,
            groups=expanded_channels,
            activation=activation,
        )
        self.se: nn.Module | None = None
        if squeeze_channels is not None:
            self.se = SqueezeExcitation(dims, expanded_channels, squeeze_channels)
        self.project = ConvNormAct(dims, expanded_channels, out_channels, activation=None)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        out = x if self.expand is None else self.expand(x)
        out = self.depthwise(out)
        if self.se is not None:
            out = self.se(out)
        out = self.project(out)
        return x + out if self.use_residual else out


def init_mobilenet_weights(model: nn.Module, zero_init_residual: bool = False) -> None:
    """The initialisation of the MobileNet reference code: He-normal (fan-out) convs, unit-scale
    BatchNorm, Linear N(0, 0.01) with zero bias.

    With `zero_init_residual`, each residual block's projection BatchNorm starts at gamma 0,
    so the block starts as the identity (Goyal et al. 2017, "Accurate, large minibatch SGD").
    """
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d)):
            nn.init.kaiming_normal_(module.weight, mode="fan_out")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.01)
            nn.init.zeros_(module.bias)
    if zero_init_residual:
        for module in model.modules():
            if isinstance(module, InvertedResidual) and module.use_residual:
                nn.init.zeros_(cast(Tensor, module.project[1].weight))
