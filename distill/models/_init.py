"""Weight initialisation for the ResNet families."""

from __future__ import annotations

from torch import nn


def init_resnet_weights(model: nn.Module) -> None:
    """He-normal convolutions, unit-scale BatchNorm, zero Linear bias.

    Matches the initialisation of the reference CIFAR ResNet / WRN training code (He et al. 2015,
    "Delving deep into rectifiers"), so that teacher accuracies are comparable with published ones.
    Fan-out mode keeps the backward signal at unit variance through the ReLU stacks.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)
