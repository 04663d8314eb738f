"""Wide residual networks (Zagoruyko & Komodakis 2016, "Wide residual networks")."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from distill.errors import ConfigError
from distill.models._init import init_resnet_weights
from distill.validate import require_fraction, require_int


class WideBasicBlock(nn.Module):
    """Pre-activation block: BN → ReLU → conv3x3 → BN → ReLU → Dropout → conv3x3, plus shortcut.

    When the stride or width changes, the shortcut (`shortcut`) is a 1x1 conv applied to the
    pre-activated input, as in the paper's code; otherwise it is the raw input and `shortcut`
    is None.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        # ReLU modules (not F.relu): quantization observes their outputs, so the convs after
        # them read quantized values and onnxruntime can run them in int8.
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()
        # Kept even at p=0 so layer names do not depend on the dropout setting.
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.shortcut: nn.Conv2d | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        preactivated = self.relu1(self.bn1(x))
        out = self.conv1(preactivated)
        out = self.conv2(self.dropout(self.relu2(self.bn2(out))))
        residual = x if self.shortcut is None else self.shortcut(preactivated)
        return out + residual


class WideResNet(nn.Module):
    """WRN-depth-k: 3x3 stem, three stages of pre-activation blocks, BN-ReLU, pool, Linear head.

    Stage widths are 16k, 32k, 64k after a 16-channel stem; strides 1, 2, 2. Module names:
    `conv1` (stem), `layer1`..`layer3` (blocks `layer1.0` ..., each with `bn1`, `conv1`, `bn2`,
    `dropout`, `conv2`, `shortcut`), `bn_final`, `avgpool`, `fc`.

    Args:
        depth: total weighted layers, 6n + 4 with n >= 1 blocks per stage (10, 16, 28, 40, ...).
        widen_factor: k, the width multiplier of the three stages.
        num_classes: number of output logits.
        in_channels: channels of the input image.
        dropout: dropout probability between the two convs of each block, in [0, 1).
    """

    def __init__(
        self,
        depth: int,
        widen_factor: int,
        num_classes: int = 100,
        in_channels: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        depth = require_int("depth", depth, minimum=1)
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ConfigError("depth", depth, "6n + 4 with n >= 1, e.g. 10, 16, 28, 40")
        widen_factor = require_int("widen_factor", widen_factor, minimum=1)
        self.num_classes = require_int("num_classes", num_classes, minimum=1)
        in_channels = require_int("in_channels", in_channels, minimum=1)
        dropout = require_fraction("dropout", dropout)
        self.depth = depth
        self.widen_factor = widen_factor
        blocks_per_stage = (depth - 4) // 6

        stem_width = 16
        w1, w2, w3 = 16 * widen_factor, 32 * widen_factor, 64 * widen_factor
        self.conv1 = nn.Conv2d(in_channels, stem_width, 3, padding=1, bias=False)
        self.layer1 = _stage(stem_width, w1, blocks_per_stage, 1, dropout)
        self.layer2 = _stage(w1, w2, blocks_per_stage, 2, dropout)
        self.layer3 = _stage(w2, w3, blocks_per_stage, 2, dropout)
        # Pre-activation blocks end on a conv, so the head needs its own BN-ReLU.
        self.bn_final = nn.BatchNorm2d(w3)
        self.relu_final = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w3, self.num_classes)
        init_resnet_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        """Map `(batch, in_channels, height, width)` to logits `(batch, num_classes)`."""
        out = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        out = self.relu_final(self.bn_final(out))
        return self.fc(torch.flatten(self.avgpool(out), 1))


def _stage(
    in_channels: int, out_channels: int, num_blocks: int, stride: int, dropout: float
) -> nn.Sequential:
    """`num_blocks` WideBasicBlocks; only the first changes stride and width."""
    blocks = [WideBasicBlock(in_channels, out_channels, stride, dropout)]
    blocks += [
        WideBasicBlock(out_channels, out_channels, 1, dropout) for _ in range(num_blocks - 1)
    ]
    return nn.Sequential(*blocks)


def wrn_16_2(num_classes: int = 100, in_channels: int = 3, dropout: float = 0.0) -> WideResNet:
    """WRN-16-2; ~0.70M params at 100 classes."""
    return WideResNet(16, 2, num_classes=num_classes, in_channels=in_channels, dropout=dropout)


def wrn_40_2(num_classes: int = 100, in_channels: int = 3, dropout: float = 0.0) -> WideResNet:
    """WRN-40-2, a common CRD teacher; ~2.2M params at 100 classes."""
    return WideResNet(40, 2, num_classes=num_classes, in_channels=in_channels, dropout=dropout)


def wrn_16_4(num_classes: int = 100, in_channels: int = 3, dropout: float = 0.0) -> WideResNet:
    """WRN-16-4; ~2.8M params at 100 classes."""
    return WideResNet(16, 4, num_classes=num_classes, in_channels=in_channels, dropout=dropout)
