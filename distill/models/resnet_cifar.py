"""ResNets for 32x32 inputs, as used for CIFAR distillation benchmarks.

Architecture of He et al. 2016 ("Deep residual learning for image recognition", section 4.2) with
the configurable stage widths of the CRD code base (Tian et al. 2020, "Contrastive representation
distillation"), which defines the `resnet8x4` / `resnet32x4` teachers and students.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.errors import ConfigError
from distill.models._init import init_resnet_weights
from distill.validate import require_int, require_ints


class BasicBlock(nn.Module):
    """conv3x3 → BN → ReLU → conv3x3 → BN, plus a shortcut, then ReLU.

    The shortcut (`shortcut`) is a 1x1 conv + BN when the stride or width changes, otherwise an
    Identity.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        # A ReLU module (not F.relu): quantization observes its output, so the next conv reads
        # quantized values and onnxruntime can run it in int8. It holds no state.
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        # Non-inplace ReLUs: a forward hook on a BN layer keeps its pre-activation.
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet: a 3x3 stem, three stages of BasicBlocks, global average pool, Linear head.

    Module names: `conv1`, `bn1` (stem), `layer1`..`layer3` (stages, blocks `layer1.0` ...,
    each with `conv1`, `bn1`, `conv2`, `bn2`, `shortcut`), `avgpool`, `fc`.

    Args:
        depth: total weighted layers, 6n + 2 with n >= 1 blocks per stage (20, 32, 56, 110, ...).
        widths: four channel counts: the stem, then stages 1-3 (strides 1, 2, 2).
        num_classes: number of output logits.
        in_channels: channels of the input image.
    """

    def __init__(
        self,
        depth: int,
        widths: Sequence[int],
        num_classes: int = 100,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        depth = require_int("depth", depth, minimum=1)
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ConfigError("depth", depth, "6n + 2 with n >= 1, e.g. 8, 14, 20, 32, 56, 110")
        widths = require_ints("widths", widths, lengths=(4,))
        self.num_classes = require_int("num_classes", num_classes, minimum=1)
        in_channels = require_int("in_channels", in_channels, minimum=1)
        self.depth = depth
        blocks_per_stage = (depth - 2) // 6

        stem_width, *stage_widths = widths
        self.conv1 = nn.Conv2d(in_channels, stem_width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu1 = nn.ReLU()
        self.layer1 = _stage(stem_width, stage_widths[0], blocks_per_stage, stride=1)
        self.layer2 = _stage(stage_widths[0], stage_widths[1], blocks_per_stage, stride=2)
        self.layer3 = _stage(stage_widths[1], stage_widths[2], blocks_per_stage, stride=2)
        # Adaptive rather than a fixed 8x8 pool, so the same net runs on 8x8 digits.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(stage_widths[2], self.num_classes)
        init_resnet_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        """Map `(batch, in_channels, height, width)` to logits `(batch, num_classes)`."""
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.fc(torch.flatten(self.avgpool(out), 1))


def _stage(in_channels: int, out_channels: int, num_blocks: int, stride: int) -> nn.Sequential:
    """`num_blocks` BasicBlocks; only the first changes stride and width."""
    blocks = [BasicBlock(in_channels, out_channels, stride)]
    blocks += [BasicBlock(out_channels, out_channels, 1) for _ in range(num_blocks - 1)]
    return nn.Sequential(*blocks)


def resnet8x4(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    """ResNet-8 with 4x widths (32, 64, 128, 256), the CRD student; ~1.2M params at 100 classes."""
    return CifarResNet(8, (32, 64, 128, 256), num_classes=num_classes, in_channels=in_channels)


def resnet20(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    """ResNet-20 (He et al. 2016), widths (16, 16, 32, 64); ~0.27M params at 10 classes."""
    return CifarResNet(20, (16, 16, 32, 64), num_classes=num_classes, in_channels=in_channels)


def resnet32x4(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    """ResNet-32 with 4x widths (32, 64, 128, 256), the CRD teacher; ~7.4M params at 100 classes."""
    return CifarResNet(32, (32, 64, 128, 256), num_classes=num_classes, in_channels=in_channels)


def resnet56(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    """ResNet-56 (He et al. 2016), widths (16, 16, 32, 64); ~0.86M params at 100 classes."""
    return CifarResNet(56, (16, 16, 32, 64), num_classes=num_classes, in_channels=in_channels)
