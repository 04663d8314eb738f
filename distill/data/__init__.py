"""Classification DataModules: offline ones (digits, MNIST-1D) and CIFAR from local files."""

from distill.data.base import ClassificationDataModule, TensorClassificationDataset
from distill.data.cifar import CIFARDataModule, write_cifar_batches
from distill.data.digits import DigitsDataModule
from distill.data.mnist1d import MNIST1DDataModule

__all__ = [
    "CIFARDataModule",
    "ClassificationDataModule",
    "DigitsDataModule",
    "MNIST1DDataModule",
    "TensorClassificationDataset",
    "write_cifar_batches",
]
