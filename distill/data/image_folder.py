"""Your own images: one folder per class, read with Pillow, decoded once into a memory-mapped
cache, normalized per channel, with CIFAR's crop-and-flip augmentation for training."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from distill.data.base import ClassificationDataModule
from distill.data.cifar import CROP_PADDING, random_crop_flip
from distill.data.image_cache import MODES, DecodedImages, DecodeSettings, load_images
from distill.data.image_files import (
    SPLITS,
    ClassFolders,
    count_class_folders,
    find_image_folders,
)
from distill.errors import ConfigError
from distill.validate import require_bool, require_choice, require_int, require_ints, require_real

log = logging.getLogger(__name__)

_STATS_CHUNK = 1024  # images per read when computing the channel statistics


class ImageSelection(NamedTuple):
    """Some images of an array: ``pixels[indices]`` (all when None), labelled ``labels[indices]``.
    The test_fraction split selects from one array, so no image is copied out of the cache."""

    pixels: np.ndarray
    labels: np.ndarray
    indices: np.ndarray | None


class FolderImages(Dataset):
    """Some of the uint8 images of an array (a memory-mapped cache), normalized on access.

    Args:
        images: uint8 ``pixels`` ``(N, C, H, W)`` (read, never written), the int64 ``labels``
            of all N, and the ``indices`` of the images this dataset holds, in order.
        mean, std: per-channel statistics of pixels scaled to ``[0, 1]``.
        augment: :func:`~distill.data.cifar.random_crop_flip` before normalizing (the padding
            is black, as for CIFAR).
        padding: the crop's zero padding on each side.
    """

    def __init__(
        self,
        images: ImageSelection,
        mean: Sequence[float],
        std: Sequence[float],
        augment: bool = False,
        padding: int = CROP_PADDING,
    ) -> None:
        self.pixels = images.pixels
        self.indices = np.arange(len(self.pixels)) if images.indices is None else images.indices
        self.labels = torch.from_numpy(images.labels[self.indices])
        self.mean = torch.tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).reshape(-1, 1, 1)
        self.augment = augment
        self.padding = padding

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        # A copy of the one image: the cache is mapped read-only.
        image = torch.from_numpy(np.array(self.pixels[self.indices[index]]))
        if self.augment:
            image = random_crop_flip(image, self.padding)
        return (image.float() / 255.0 - self.mean) / self.std, self.labels[index]

    def augmented(self, padding: int) -> FolderImages:
        """The same images (sharing the array), randomly cropped and flipped on access."""
        view = copy.copy(self)
        view.augment, view.padding = True, padding
        return view


class ImageFolderDataModule(ClassificationDataModule):
    """Images from class folders on disk, read with Pillow (torchvision is not needed).

    Layout: ``root/train/<class>/*`` and ``root/test/<class>/*`` (the same class folders in
    both), or, with ``test_fraction`` set, ``root/<class>/*`` of which that share of every class
    is held out as the test set (seeded by ``seed``). Classes are the sorted folder names.
    Images are converted to ``input_shape[0]`` channels and, with ``image_size`` set, resized;
    they are decoded once into a uint8 array under ``cache_dir`` (keyed by the files' names,
    sizes and modification times) and read memory-mapped afterwards. A bad layout or image is
    refused at :meth:`setup`, naming the folder or file, before any model is trained.

    Args:
        root: the folder described above.
        num_classes: the number of class folders (the models are built for it before any image
            is read; a wrong number is refused with the right one).
        input_shape: ``(channels, height, width)`` of the inputs, which the models are built for.
        image_size: ``(height, width)`` to resize every image to, the last two of
            ``input_shape``; None keeps the images as they are: all must then be that size.
        channels: 1 (grayscale) or 3 (RGB); must be (and defaults to) ``input_shape[0]``.
        mean, std: per-channel statistics of pixels scaled to ``[0, 1]``; None computes them
            from the training images (the training split, validation included).
        test_fraction: None for the train/test layout, else the share of each class's images
            held out as the test set, in ``(0, 1)``.
        augment: random crop (``crop_padding`` pixels of zero padding) and horizontal flip of
            training images, as for CIFAR.
        crop_padding: padding of the random crop, in pixels.
        cache_dir: where decoded images are kept; None decodes into memory on every setup.
        **kwargs: the other arguments of :class:`ClassificationDataModule`.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        num_classes: int | None = None,
        input_shape: Sequence[int] = (3, 32, 32),
        image_size: Sequence[int] | None = None,
        channels: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        test_fraction: float | None = None,
        augment: bool = True,
        crop_padding: int = CROP_PADDING,
        cache_dir: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> None:
        self.root = Path(_require_path("data.root", root)).expanduser()
        if test_fraction is not None:
            test_fraction = require_real(
                "data.test_fraction",
                test_fraction,
                minimum=0,
                maximum=1,
                min_inclusive=False,
                max_inclusive=False,
                allowed="a number in (0, 1), or null for root/train and root/test",
            )
        self.test_fraction = test_fraction
        if num_classes is None:
            raise _num_classes_needed(self.root, test_fraction is not None)
        super().__init__(num_classes=num_classes, input_shape=input_shape, **kwargs)
        shape = require_ints(
            "data.input_shape",
            input_shape,
            lengths=(3,),
            allowed="[channels, height, width] of the inputs, e.g. [3, 32, 32]",
        )
        channels = shape[0] if channels is None else require_int("data.channels", channels)
        require_choice("data.channels", channels, tuple(MODES), "1 (grayscale) or 3 (RGB)")
        if channels != shape[0]:
            raise ConfigError(
                "data.channels",
                channels,
                f"{shape[0]}, the channels of data.input_shape={list(shape)}",
            )
        resize = None
        if image_size is not None:
            resize = require_ints("data.image_size", image_size, lengths=(2,))
            if resize != shape[1:]:
                raise ConfigError(
                    "data.image_size",
                    list(resize),
                    f"{list(shape[1:])}, the height and width of data.input_shape={list(shape)} "
                    "(the models are built for it: change that to resize to another size), "
                    "or null to keep the images' own size",
                )
        self.settings = DecodeSettings(channels, (resize[0], resize[1]) if resize else None)
        self.mean = _channel_values("data.mean", mean, channels)
        self.std = _channel_values("data.std", std, channels, positive=True)
        self.augment = require_bool("data.augment", augment)
        self.crop_padding = require_int("data.crop_padding", crop_padding, minimum=0)
        self.cache_dir = (
            None if cache_dir is None else Path(_require_path("data.cache_dir", cache_dir))
        )
        self.classes: tuple[str, ...] = ()
        self.channel_mean: tuple[float, ...] = ()
        self.channel_std: tuple[float, ...] = ()
        self._content: str | None = None

    @property
    def has_random_augmentation(self) -> bool:
        """True exactly when ``augment`` is on."""
        return self.augment

    def content_fingerprint(self) -> str:
        """A hash of the class names, the decoded pixels and the labels, in order: it changes
        when an image's pixels, a class or the order of the files changes."""
        if self._content is None:
            raise RuntimeError("call setup() first: the images are read there")
        return self._content

    def load_datasets(self) -> tuple[Dataset, Dataset]:
        """Find the class folders, load (or decode) their images, split and normalize them."""
        layout = find_image_folders(self.root, split_by_fraction=self.test_fraction is not None)
        classes = next(iter(layout.values())).classes
        if self.test_fraction is not None and set(classes) == set(SPLITS):
            raise ConfigError(
                "data.test_fraction",
                self.test_fraction,
                f"null: {self.root} holds {' and '.join(SPLITS)} folders, read as the train and "
                "test sets when data.test_fraction is null (set, it would make them two classes)",
            )
        if len(classes) != self.num_classes:
            folder = next(iter(layout.values())).folder
            raise ConfigError(
                "data.num_classes",
                self.num_classes,
                f"{len(classes)}: the number of class folders in {folder}",
            )
        decoded = {
            name: load_images(folders.files, folders.folder, self.settings, self.cache_dir)
            for name, folders in layout.items()
        }
        if self.test_fraction is None:
            train_images = ImageSelection(decoded["train"].pixels, layout["train"].labels, None)
            test_images = ImageSelection(decoded["test"].pixels, layout["test"].labels, None)
        else:
            train_indices, test_indices = split_per_class(
                layout["all"], self.test_fraction, self.seed
            )
            everything = decoded["all"].pixels, layout["all"].labels
            train_images = ImageSelection(*everything, train_indices)
            test_images = ImageSelection(*everything, test_indices)
        mean, std = self.mean, self.std
        if mean is None or std is None:
            computed_mean, computed_std = channel_stats(train_images)
            mean, std = mean or computed_mean, std or computed_std
            log.info("%s: channel mean %s, std %s", self.root, _rounded(mean), _rounded(std))
        if min(std) == 0:
            raise ConfigError(
                "data.std",
                self.std,
                f"values given per channel: channel {std.index(0)} of the training images is "
                "constant, so its computed std is 0",
            )
        self.classes, self.channel_mean, self.channel_std = classes, mean, std
        self._content = _fingerprint(classes, layout, decoded)
        return FolderImages(train_images, mean, std), FolderImages(test_images, mean, std)

    def train_view(self, train_dataset: Dataset) -> Dataset:
        """The training images, randomly cropped and flipped when ``augment`` is on."""
        if not self.augment:
            return train_dataset
        assert isinstance(train_dataset, FolderImages)  # made by load_datasets above
        return train_dataset.augmented(self.crop_padding)


def split_per_class(
    folders: ClassFolders, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train and test indices: ``test_fraction`` of every class's images (rounded, at
    least one, never all) drawn for the test set by a generator seeded with ``seed``, so the
    split is the same on every run and every class is in both sets."""
    generator = torch.Generator().manual_seed(seed)
    train: list[np.ndarray] = []
    test: list[np.ndarray] = []
    for label, name in enumerate(folders.classes):
        members = np.flatnonzero(folders.labels == label)
        if len(members) < 2:
            raise ConfigError(
                "data.test_fraction",
                test_fraction,
                f"a split that leaves every class in both sets; {folders.folder / name} has "
                "one image (or use root/train and root/test, with data.test_fraction=null)",
            )
        num_test = min(max(math.floor(len(members) * test_fraction + 0.5), 1), len(members) - 1)
        order = members[torch.randperm(len(members), generator=generator).numpy()]
        test.append(order[:num_test])
        train.append(order[num_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def channel_stats(images: ImageSelection) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) standard deviation of the selected images scaled to
    ``[0, 1]``, read a chunk at a time (the array may be a large memory map)."""
    pixels, indices = images.pixels, images.indices
    count = len(pixels) if indices is None else len(indices)
    total = np.zeros(pixels.shape[1])
    squares = np.zeros(pixels.shape[1])
    for start in range(0, count, _STATS_CHUNK):
        if indices is None:
            chunk = pixels[start : start + _STATS_CHUNK]
        else:
            chunk = pixels[indices[start : start + _STATS_CHUNK]]
        scaled = chunk.astype(np.float64) / 255.0
        total += scaled.sum(axis=(0, 2, 3))
        squares += np.square(scaled).sum(axis=(0, 2, 3))
    values = count * pixels.shape[2] * pixels.shape[3]
    mean = total / values
    std = np.sqrt(np.maximum(squares / values - mean**2, 0.0))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def _fingerprint(
    classes: Sequence[str],
    layout: dict[str, ClassFolders],
    decoded: dict[str, DecodedImages],
) -> str:
    material = {
        "classes": list(classes),
        "splits": {
            name: {
                "pixels": decoded[name].digest,
                "labels": hashlib.sha256(layout[name].labels.tobytes()).hexdigest(),
            }
            for name in sorted(layout)
        },
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def _rounded(values: Sequence[float]) -> list[float]:
    return [round(value, 4) for value in values]


def _require_path(field: str, value: Any) -> str | os.PathLike:
    if not isinstance(value, str | os.PathLike) or not str(value):
        raise ConfigError(field, value, "a path to a folder")
    return value


def _num_classes_needed(root: Path, split_by_fraction: bool) -> ConfigError:
    found = count_class_folders(root, split_by_fraction)
    folder = root if split_by_fraction else root / "train"
    counted = f" ({folder} has {found})" if found is not None else ""
    return ConfigError(
        "data.num_classes",
        None,
        f"the number of class folders{counted}, e.g. data.num_classes="
        f"{found if found else 10}: the models are built for it before any image is read",
    )


def _channel_values(
    field: str, value: Any, channels: int, positive: bool = False
) -> tuple[float, ...] | None:
    if value is None:
        return None
    allowed = f"null (computed from the training images) or {channels} numbers, one per channel"
    if positive:
        allowed += ", each > 0"
    if isinstance(value, str | bytes) or not isinstance(value, Sequence) or len(value) != channels:
        raise ConfigError(field, value, allowed)
    minimum = 0.0 if positive else None
    return tuple(
        require_real(field, item, minimum=minimum, min_inclusive=not positive, allowed=allowed)
        for item in value
    )
