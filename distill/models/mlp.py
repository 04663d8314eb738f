"""Multi-layer perceptron on flattened input."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from distill.validate import require_fraction, require_int, require_ints


class MLP(nn.Module):
    """Fully connected classifier: flatten, then Linear → ReLU → Dropout blocks, then a Linear head.

    Module names: hidden block `i` is `features.{3i}` (Linear), `features.{3i+1}` (ReLU) and
    `features.{3i+2}` (Dropout); the head is `classifier`.

    Args:
        input_shape: shape of one example without the batch dimension, e.g. `(40,)` or `(1, 8, 8)`.
        num_classes: number of output logits.
        hidden_sizes: width of each hidden layer, at least one.
        dropout: dropout probability after each hidden ReLU, in [0, 1).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        hidden_sizes: Sequence[int] = (256, 256),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.input_shape = require_ints("input_shape", input_shape)
        self.num_classes = require_int("num_classes", num_classes, minimum=1)
        hidden_sizes = require_ints("hidden_sizes", hidden_sizes)
        dropout = require_fraction("dropout", dropout)

        layers: list[nn.Module] = []
        in_features = math.prod(self.input_shape)
        for width in hidden_sizes:
            # Dropout is kept even at p=0 so that layer names do not shift when dropout is
            # switched on or off; pruning and feature-tap configs address layers by these names.
            # ReLU is not in-place: a forward hook on a Linear must see the pre-activation.
            layers += [nn.Linear(in_features, width), nn.ReLU(), nn.Dropout(dropout)]
            in_features = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(in_features, self.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Map a batch shaped `(batch, *input_shape)` to logits `(batch, num_classes)`."""
        return self.classifier(self.features(torch.flatten(x, 1)))
