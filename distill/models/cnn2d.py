"""Small 2-D convolutional classifier for low-resolution images (digits, CIFAR)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from distill.validate import require_bool, require_int, require_ints


class SmallCNN(nn.Module):
    """Conv3x3 → BatchNorm → ReLU → MaxPool2x2 blocks, global average pool, Linear head.

    Block `i` is `features.{4i}` (conv), `features.{4i+1}` (norm, an Identity without batch
    norm), `features.{4i+2}` (ReLU) and `features.{4i+3}` (max-pool); the head is `classifier`.
    A block whose input is already narrower than 2 pixels replaces its pool with an Identity, so
    the same channel list works on 8x8 digits and 32x32 CIFAR.

    Args:
        input_shape: `(channels, height, width)` of one example.
        num_classes: number of output logits.
        channels: output channels of each conv block, at least one.
        batch_norm: insert BatchNorm2d after each conv.
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (3, 32, 32),
        num_classes: int = 10,
        channels: Sequence[int] = (32, 64),
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        self.input_shape = require_ints("input_shape", input_shape, lengths=(3,))
        self.num_classes = require_int("num_classes", num_classes, minimum=1)
        channels = require_ints("channels", channels)
        batch_norm = require_bool("batch_norm", batch_norm)

        in_channels, height, width = self.input_shape
        layers: list[nn.Module] = []
        for out_channels in channels:
            can_pool = min(height, width) >= 2
            layers += [
                # The conv bias is redundant when BatchNorm subtracts the mean right after it.
                nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=not batch_norm),
                nn.BatchNorm2d(out_channels) if batch_norm else nn.Identity(),
                nn.ReLU(),
                nn.MaxPool2d(2) if can_pool else nn.Identity(),
            ]
            if can_pool:
                height, width = height // 2, width // 2
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_channels, self.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Map `(batch, channels, height, width)` to logits `(batch, num_classes)`."""
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))
