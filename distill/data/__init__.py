"""Classification DataModules: offline ones (digits, MNIST-1D), CIFAR and image folders from
local files."""

from distill.data.base import ClassificationDataModule, TensorClassificationDataset
from distill.data.cifar import CIFARDataModule, write_cifar_batches
from distill.data.digits import DigitsDataModule
from distill.data.image_folder import ImageFolderDataModule
from distill.data.mnist1d import MNIST1DDataModule

__all__ = [
    "CIFARDataModule",
    "ClassificationDataModule",
    "DigitsDataModule",
    "ImageFolderDataModule",
    "MNIST1DDataModule",
    "TensorClassificationDataset",
    "write_cifar_batches",
]
