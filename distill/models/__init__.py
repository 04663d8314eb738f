"""Model zoo: every model maps a batch to logits of shape (batch, num_classes)."""

from distill.models.cnn1d import ConvNet1D
from distill.models.cnn2d import SmallCNN
from distill.models.mlp import MLP
from distill.models.mobilenetv2 import MobileNetV2
from distill.models.mobilenetv3 import MobileNetV3Small
from distill.models.resnet_cifar import CifarResNet, resnet8x4, resnet20, resnet32x4, resnet56
from distill.models.sequence import GRUClassifier, TransformerClassifier
from distill.models.wrn import WideResNet, wrn_16_2, wrn_16_4, wrn_40_2

__all__ = [
    "MLP",
    "CifarResNet",
    "ConvNet1D",
    "GRUClassifier",
    "MobileNetV2",
    "MobileNetV3Small",
    "SmallCNN",
    "TransformerClassifier",
    "WideResNet",
    "resnet8x4",
    "resnet20",
    "resnet32x4",
    "resnet56",
    "wrn_16_2",
    "wrn_16_4",
    "wrn_40_2",
]
