"""1-D convolutional classifier for sequence inputs such as MNIST-1D."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from distill.validate import require_bool, require_int, require_ints


class ConvNet1D(nn.Module):
    """Stack of stride-2 1-D convolutions with a Linear head on the flattened features.

    The family used for MNIST-1D (Greydanus 2020, "Scaling down deep learning"); the paper's
    ConvBase is three stride-2 layers of 25 channels, i.e. `channels=(25, 25, 25)`.
    Each layer is Conv1d (stride 2, padding `kernel_size // 2`) → BatchNorm1d → ReLU, so layer
    `i` is `features.{3i}` (conv), `features.{3i+1}` (norm, an Identity without batch norm) and
    `features.{3i+2}` (ReLU); the head is `classifier`.

    Args:
        input_shape: `(channels, length)` of one example, or `(length,)` for one channel.
        num_classes: number of output logits.
        channels: output channels of each conv layer, at least one.
        kernel_size: conv kernel width.
        batch_norm: insert BatchNorm1d after each conv.

    Inputs may be `(batch, channels, length)`, or `(batch, length)` for single-channel data.
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 40),
        num_classes: int = 10,
        channels: Sequence[int] = (32, 32, 32),
        kernel_size: int = 5,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        shape = require_ints("input_shape", input_shape, lengths=(1, 2))
        self.input_shape = shape if len(shape) == 2 else (1, shape[0])
        self.num_classes = require_int("num_classes", num_classes, minimum=1)
        channels = require_ints("channels", channels)
        kernel_size = require_int("kernel_size", kernel_size, minimum=1)
        batch_norm = require_bool("batch_norm", batch_norm)

        padding = kernel_size // 2
        in_channels, length = self.input_shape
        layers: list[nn.Module] = []
        for out_channels in channels:
            layers += [
                # The conv bias is redundant when BatchNorm subtracts the mean right after it.
                nn.Conv1d(
                    in_channels,
                    out_channels,
                    kernel_size,
                    stride=2,
                    padding=padding,
                    bias=not batch_norm,
                ),
                # Identity keeps the layer indices the same with and without batch norm.
                nn.BatchNorm1d(out_channels) if batch_norm else nn.Identity(),
                nn.ReLU(),
            ]
            length = (length + 2 * padding - kernel_size) // 2 + 1
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(in_channels * length, self.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Map `(batch, length)` or `(batch, channels, length)` to logits `(batch, num_classes)`."""
        if x.dim() == 2:
            x = x.unsqueeze(1)
        return self.classifier(torch.flatten(self.features(x), 1))
