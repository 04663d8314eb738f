"""MobileNetV3-small (Howard et al. 2019, "Searching for MobileNetV3") for images (`dims=2`) and
1-D signals (`dims=1`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from distill.errors import ConfigError
from distill.models.mobilenet_blocks import (
    ACTIVATIONS,
    ConvNormAct,
    InvertedResidual,
    global_pool,
    init_mobilenet_weights,
    make_divisible,
    require_dims,
)
from distill.validate import (
    is_int,
    require_bool,
    require_choice,
    require_fraction,
    require_int,
    require_positive,
)

# The paper's Table 2 (MobileNetV3-Small): kernel, expanded width, output width, SE,
# activation, stride; the stem is a 16-channel 3x3 stride-2 conv with hard-swish.
Row = tuple[int, int, int, bool, str, int]
IMAGENET_BLOCKS: tuple[Row, ...] = (
    (3, 16, 16, True, "relu", 2),
    (3, 72, 24, False, "relu", 2),
    (3, 88, 24, False, "relu", 1),
    (5, 96, 40, True, "hardswish", 2),
    (5, 240, 40, True, "hardswish", 1),
    (5, 240, 40, True, "hardswish", 1),
    (5, 120, 48, True, "hardswish", 1),
    (5, 144, 48, True, "hardswish", 1),
    (5, 288, 96, True, "hardswish", 2),
    (5, 576, 96, True, "hardswish", 1),
    (5, 576, 96, True, "hardswish", 1),
)
# For 32x32 inputs the stem and the first block keep the resolution: three downsamplings,
# 32 -> 4 (40 -> 5 on MNIST-1D, 8 -> 1 on digits).
CIFAR_BLOCKS: tuple[Row, ...] = ((*IMAGENET_BLOCKS[0][:5], 1), *IMAGENET_BLOCKS[1:])
LAYOUTS = {"cifar": (1, CIFAR_BLOCKS), "imagenet": (2, IMAGENET_BLOCKS)}  # stem stride, table
STEM_CHANNELS, LAST_CHANNELS = 16, 1024
SQUEEZE_FACTOR = 4  # SE squeezes to a quarter of the expanded width
ROW_ALLOWED = (
    "a non-empty list of [kernel, expanded, out, se, activation, stride] rows: integers >= 1, "
    f"se true or false, activation one of {tuple(ACTIVATIONS)}"
)


class MobileNetV3Small(nn.Module):
    """MobileNetV3-Small: a hard-swish stem, inverted residual blocks with optional SE, a 1x1
    conv to 6x the last block's width, global average pool, a hard-swish hidden Linear,
    dropout and a Linear head.

    Module names: `features.0` (stem), `features.1` ... (`InvertedResidual`: `expand`,
    `depthwise`, `se` with `fc1`, `fc2`, `gate`, `project`), the last `features.{k}` (1x1
    `ConvNormAct`), `pool`, `head` (`head.0` Linear, `head.1` Hardswish, `head.2` Dropout),
    `classifier`.

    Args:
        num_classes: number of output logits.
        in_channels: channels of the input.
        width_mult: multiplies every width, rounded to multiples of 8 as in the paper.
        dims: 2 for images (Conv2d), 1 for signals (Conv1d).
        layout: `cifar` (stem and first block at stride 1: 32x32 images, 8x8 digits, length-40
            signals) or `imagenet` (the paper's strides, 224x224).
        blocks: rows [kernel, expanded, out, se, activation, stride] replacing the layout's
            table (the stem stride stays the layout's).
        last_channels: width of the hidden Linear before `width_mult` (paper: 1024).
        dropout: dropout probability before the classifier (paper: 0.2).
        zero_init_residual: start each residual block's last BN at gamma 0.

    1-D inputs may be `(batch, channels, length)`, or `(batch, length)` for one channel.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        width_mult: float = 1.0,
        dims: int = 2,
        layout: str = "cifar",
        blocks: Sequence[Sequence[Any]] | None = None,
        last_channels: int = LAST_CHANNELS,
        dropout: float = 0.2,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes = require_int("num_classes", num_classes, minimum=1)
        in_channels = require_int("in_channels", in_channels, minimum=1)
        width_mult = require_positive("width_mult", width_mult)
        self.dims = require_dims(dims)
        layout = require_choice("layout", layout, LAYOUTS)
        stem_stride, table = LAYOUTS[layout]
        if blocks is not None:
            table = _rows(blocks)
        last_channels = require_int("last_channels", last_channels, minimum=1)
        dropout = require_fraction("dropout", dropout)
        zero_init_residual = require_bool("zero_init_residual", zero_init_residual)

        width = make_divisible(STEM_CHANNELS * width_mult)
        layers: list[nn.Module] = [
            ConvNormAct(
                self.dims, in_channels, width, 3, stride=stem_stride, activation="hardswish"
            )
        ]
        for kernel_size, expanded, channels, se, activation, stride in table:
            expanded_width = make_divisible(expanded * width_mult)
            out_width = make_divisible(channels * width_mult)
            layers.append(
                InvertedResidual(
                    self.dims,
                    width,
                    expanded_width,
                    out_width,
                    kernel_size,
                    stride=stride,
                    activation=activation,
                    squeeze_channels=(
                        make_divisible(expanded_width // SQUEEZE_FACTOR) if se else None
                    ),
                )
            )
            width = out_width
        layers.append(ConvNormAct(self.dims, width, 6 * width, activation="hardswish"))
        self.features = nn.Sequential(*layers)
        self.pool = global_pool(self.dims)
        self.last_channels = make_divisible(last_channels * width_mult)
        self.head = nn.Sequential(
            nn.Linear(6 * width, self.last_channels), nn.Hardswish(), nn.Dropout(dropout)
        )
        self.classifier = nn.Linear(self.last_channels, self.num_classes)
        init_mobilenet_weights(self, zero_init_residual)

    def forward(self, x: Tensor) -> Tensor:
        """Map `(batch, in_channels, *spatial)` (or `(batch, length)`) to logits."""
        if self.dims == 1 and x.dim() == 2:
            x = x.unsqueeze(1)
        features = torch.flatten(self.pool(self.features(x)), 1)
        return self.classifier(self.head(features))


def _rows(blocks: Any) -> tuple[Row, ...]:
    if isinstance(blocks, (str, bytes)) or not isinstance(blocks, Sequence) or not blocks:
        raise ConfigError("blocks", blocks, ROW_ALLOWED)
    rows = []
    for index, row in enumerate(blocks):
        valid = (
            not isinstance(row, (str, bytes))
            and isinstance(row, Sequence)
            and len(row) == 6
            and all(is_int(row[i]) and row[i] >= 1 for i in (0, 1, 2, 5))
            and isinstance(row[3], bool)
            and row[4] in ACTIVATIONS
        )
        if not valid:
            raise ConfigError(f"blocks[{index}]", row, ROW_ALLOWED)
        kernel, expanded, out, se, activation, stride = row
        rows.append((int(kernel), int(expanded), int(out), bool(se), str(activation), int(stride)))
    return tuple(rows)
