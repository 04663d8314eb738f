"""CIFAR-10 / CIFAR-100 from the python batch files, with the usual crop-and-flip augmentation."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from distill.data.base import ClassificationDataModule
from distill.data.cifar_format import (
    IMAGE_SHAPE,
    find_batches_dir,
    get_variant,
    read_batches,
    write_cifar_batches,
)
from distill.errors import ConfigError
from distill.validate import require_bool

__all__ = [
    "CHANNEL_STATS",
    "CIFARDataModule",
    "CIFARImages",
    "random_crop_flip",
    "write_cifar_batches",
]

# Per-channel (RGB) mean and standard deviation of each training set, pixels scaled to [0, 1].
CHANNEL_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
CROP_PADDING = 4


def random_crop_flip(
    image: torch.Tensor, padding: int = CROP_PADDING, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Zero-pad by ``padding``, crop back to the original size at a random offset, and flip
    left-right with probability 1/2 (He et al., "Deep Residual Learning for Image
    Recognition", 2016, section 4.2).

    Args:
        image: ``(channels, height, width)``, any dtype.
        padding: pixels of zeros added on each side before cropping.
        generator: source of randomness; the global torch RNG when None, which DataLoader
            seeds differently in every worker.
    """
    _, height, width = image.shape
    top, left = torch.randint(0, 2 * padding + 1, (2,), generator=generator).tolist()
    padded = F.pad(image, (padding, padding, padding, padding))
    crop = padded[:, top : top + height, left : left + width]
    if torch.rand((), generator=generator) < 0.5:
        crop = crop.flip(-1)
    return crop


class CIFARImages(Dataset):
    """uint8 images kept in memory (4x smaller than float), normalized per channel on access.

    Args:
        images: uint8, ``(N, 3, 32, 32)``.
        labels: int64, ``(N,)``.
        mean, std: per-channel statistics of pixels scaled to ``[0, 1]``.
        augment: apply :func:`random_crop_flip` before normalizing, so the padding is black
            as in the reference recipe.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        augment: bool = False,
    ) -> None:
        self.images = images
        self.labels = labels
        self.mean = torch.tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).reshape(-1, 1, 1)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index]
        if self.augment:
            image = random_crop_flip(image)
        return (image.float() / 255.0 - self.mean) / self.std, self.labels[index]


class CIFARDataModule(ClassificationDataModule):
    """CIFAR-10 or CIFAR-100 read from the official python batch files; nothing is downloaded.

    Inputs are float32 ``(3, 32, 32)`` normalized per channel. The files are looked up in
    ``data_dir/cifar-10-batches-py/`` (``cifar-100-python/``) or directly in ``data_dir``,
    when :meth:`setup` runs; a missing or unreadable file raises ConfigError on
    ``data.data_dir`` naming the file and where to download the archive.

    Args:
        data_dir: folder the archive was extracted into, or the batches folder itself.
        variant: ``"cifar10"`` or ``"cifar100"``.
        augment: random crop (4-pixel zero padding) and horizontal flip of training images.
        num_classes: declared number of classes; defaults to the variant's (10 or 100) and is
            checked against the labels.
        input_shape: declared input shape, checked against the data; ``(3, 32, 32)``.
        **kwargs: the other arguments of :class:`ClassificationDataModule`.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        variant: str = "cifar10",
        augment: bool = True,
        num_classes: int | None = None,
        input_shape: tuple[int, ...] = IMAGE_SHAPE,
        **kwargs: Any,
    ) -> None:
        spec = get_variant(variant)
        super().__init__(
            num_classes=spec.num_classes if num_classes is None else num_classes,
            input_shape=input_shape,
            **kwargs,
        )
        if not isinstance(data_dir, str | os.PathLike) or not str(data_dir):
            raise ConfigError("data.data_dir", data_dir, "a path to a folder")
        augment = require_bool("data.augment", augment)
        self.data_dir = data_dir
        self.variant = variant
        self.augment = augment
        self._spec = spec

    @property
    def has_random_augmentation(self) -> bool:
        """True exactly when ``augment`` is on."""
        return self.augment

    def load_datasets(self) -> tuple[Dataset, Dataset]:
        """Read the train and test batch files into un-augmented datasets."""
        directory = find_batches_dir(self.data_dir, self._spec)
        mean, std = CHANNEL_STATS[self.variant]
        train_images, train_labels = read_batches(directory, self._spec, train=True)
        test_images, test_labels = read_batches(directory, self._spec, train=False)
        return (
            CIFARImages(train_images, train_labels, mean, std),
            CIFARImages(test_images, test_labels, mean, std),
        )

    def train_view(self, train_dataset: Dataset) -> Dataset:
        """The training images, randomly cropped and flipped when ``augment`` is on."""
        if not self.augment:
            return train_dataset
        assert isinstance(train_dataset, CIFARImages)  # made by load_datasets above
        mean, std = CHANNEL_STATS[self.variant]
        # Shares the image tensor with the plain view: no second copy of the data.
        return CIFARImages(train_dataset.images, train_dataset.labels, mean, std, augment=True)
