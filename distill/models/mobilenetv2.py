"""MobileNetV2 (Sandler et al. 2018, "MobileNetV2: Inverted residuals and linear bottlenecks")
for images (`dims=2`) and 1-D signals (`dims=1`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor, nn

from distill.errors import ConfigError
from distill.models.mobilenet_blocks import (
    ConvNormAct,
    InvertedResidual,
    global_pool,
    init_mobilenet_weights,
    make_divisible,
    require_dims,
)
from distill.validate import (
    require_bool,
    require_choice,
    require_fraction,
    require_int,
    require_ints,
    require_positive,
)

# The paper's Table 2: (expansion t, output channels c, repeats n, first stride s).
Row = tuple[int, int, int, int]
IMAGENET_BLOCKS: tuple[Row, ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
# For 32x32 inputs the stem keeps the resolution and so does the 24-channel stage, as in the
# common CIFAR adaptations: three downsamplings, 32 -> 4 (40 -> 5 on MNIST-1D, 8 -> 1 on digits).
CIFAR_BLOCKS = tuple((t, c, n, 1 if c == 24 else s) for t, c, n, s in IMAGENET_BLOCKS)
LAYOUTS = {"cifar": (1, CIFAR_BLOCKS), "imagenet": (2, IMAGENET_BLOCKS)}  # stem stride, table
STEM_CHANNELS, LAST_CHANNELS = 32, 1280


class MobileNetV2(nn.Module):
    """MobileNetV2: a 3x3 stem, inverted residual blocks, a 1x1 conv to `last_channels`, global
    average pool, dropout and a Linear head.

    Module names: `features.0` (stem `ConvNormAct`: `features.0.0` conv, `.1` BN, `.2` ReLU6),
    `features.1` ... (`InvertedResidual` blocks with `expand`, `depthwise`, `project`), the last
    `features.{k}` (1x1 `ConvNormAct`), `pool`, `dropout`, `classifier`.

    Args:
        num_classes: number of output logits.
        in_channels: channels of the input.
        width_mult: multiplies every width; rounded to multiples of 8 as in the paper (the last
            conv's width is never reduced below `last_channels`).
        dims: 2 for images (Conv2d), 1 for signals (Conv1d).
        layout: `cifar` (stem stride 1, the 24-channel stage at stride 1: for 32x32 images,
            8x8 digits and length-40 signals) or `imagenet` (the paper's strides, 224x224).
        blocks: rows (t, c, n, s) replacing the layout's table (the stem stride stays the
            layout's); e.g. a short table for a tiny student.
        last_channels: width of the last 1x1 conv before `width_mult` (paper: 1280).
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
        blocks: Sequence[Sequence[int]] | None = None,
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
            if isinstance(blocks, (str, bytes)) or not isinstance(blocks, Sequence) or not blocks:
                raise ConfigError("blocks", blocks, "a non-empty list of [t, c, n, s] rows")
            table = tuple(
                cast(Row, require_ints(f"blocks[{i}]", row, lengths=(4,)))
                for i, row in enumerate(blocks)
            )
        last_channels = require_int("last_channels", last_channels, minimum=1)
        dropout = require_fraction("dropout", dropout)
        zero_init_residual = require_bool("zero_init_residual", zero_init_residual)

        width = make_divisible(STEM_CHANNELS * width_mult)
        layers: list[nn.Module] = [
            ConvNormAct(self.dims, in_channels, width, 3, stride=stem_stride)
        ]
        for expansion, channels, repeats, stride in table:
            out_width = make_divisible(channels * width_mult)
            for index in range(repeats):
                layers.append(
                    InvertedResidual(
                        self.dims,
                        width,
                        round(width * expansion),
                        out_width,
                        stride=stride if index == 0 else 1,
                    )
                )
                width = out_width
        self.last_channels = make_divisible(last_channels * max(1.0, width_mult))
        layers.append(ConvNormAct(self.dims, width, self.last_channels))
        self.features = nn.Sequential(*layers)
        self.pool = global_pool(self.dims)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(self.last_channels, self.num_classes)
        init_mobilenet_weights(self, zero_init_residual)

    def forward(self, x: Tensor) -> Tensor:
        """Map `(batch, in_channels, *spatial)` (or `(batch, length)`) to logits."""
        if self.dims == 1 and x.dim() == 2:
            x = x.unsqueeze(1)
        features = torch.flatten(self.pool(self.features(x)), 1)
        return self.classifier(self.dropout(features))
