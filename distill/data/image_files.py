"""Finding the images of an image folder: its class folders and their image files.

Two layouts, as torchvision's ImageFolder reads them (without needing torchvision)::

    root/train/<class>/*.png  and  root/test/<class>/*.png    (data.test_fraction=null)
    root/<class>/*.png                                         (data.test_fraction in (0, 1))

Classes are the sorted names of the class folders; a class folder's images are found at any
depth below it. A layout that cannot be read this way is refused here, before any image is
decoded, with a ConfigError on ``data.root`` that names the folder at fault.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distill.errors import ConfigError

# What Pillow reads without plugins; other files (notes, .DS_Store) are not images of the set.
IMAGE_EXTENSIONS = (
    ".bmp",
    ".gif",
    ".jpeg",
    ".jpg",
    ".pgm",
    ".png",
    ".ppm",
    ".tif",
    ".tiff",
    ".webp",
)
SPLITS = ("train", "test")


@dataclass(frozen=True)
class ClassFolders:
    """The images under one folder of class folders, in a fixed order (by class, then path).

    Attributes:
        folder: the folder holding the class folders.
        classes: the class folder names, sorted; class ``i`` has label ``i``.
        files: every image file, sorted by class and then by path.
        labels: int64, the label of each file.
    """

    folder: Path
    classes: tuple[str, ...]
    files: tuple[Path, ...]
    labels: np.ndarray


def find_image_folders(root: Path, split_by_fraction: bool) -> dict[str, ClassFolders]:
    """``{"train": ..., "test": ...}`` from ``root/train`` and ``root/test``, or, when the test
    set is to be split off by a fraction, ``{"all": ...}`` from ``root`` itself."""
    if not root.is_dir():
        state = "it is not a folder" if root.exists() else "it does not exist"
        raise ConfigError("data.root", str(root), f"an existing folder of class folders ({state})")
    if split_by_fraction:
        return {"all": find_class_folders(root)}
    for split in SPLITS:
        if not (root / split).is_dir():
            raise ConfigError(
                "data.root",
                str(root),
                f"a folder holding {'/ and '.join(SPLITS)}/ folders of class folders "
                f"({root / split} does not exist), or set data.test_fraction to split a test "
                "set off one folder of class folders",
            )
    found = {split: find_class_folders(root / split) for split in SPLITS}
    train, test = (set(found[split].classes) for split in SPLITS)
    if train != test:
        only_train, only_test = sorted(train - test), sorted(test - train)
        where = (
            f"{only_train[0]} is in train/ but not in test/"
            if only_train
            else f"{only_test[0]} is in test/ but not in train/"
        )
        raise ConfigError(
            "data.root", str(root), f"train/ and test/ with the same class folders; {where}"
        )
    return found


def find_class_folders(folder: Path) -> ClassFolders:
    """The class folders under ``folder`` and their images; each must hold at least one."""
    classes = tuple(sorted(entry.name for entry in folder.iterdir() if _visible_folder(entry)))
    if not classes:
        raise ConfigError(
            "data.root",
            str(folder),
            "a folder of class folders (one folder of images per class); it has none",
        )
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        images = _images_below(folder / name)
        if not images:
            raise ConfigError(
                "data.root",
                str(folder / name),
                f"a class folder with at least one image ({', '.join(IMAGE_EXTENSIONS)}); "
                "it has none",
            )
        files += images
        labels += [label] * len(images)
    return ClassFolders(folder, classes, tuple(files), np.asarray(labels, dtype=np.int64))


def count_class_folders(root: Path, split_by_fraction: bool) -> int | None:
    """How many class folders the layout has, or None when it cannot be read (for a message)."""
    folder = root if split_by_fraction else root / "train"
    if not folder.is_dir():
        return None
    return sum(1 for entry in folder.iterdir() if _visible_folder(entry))


def _visible_folder(entry: Path) -> bool:
    return entry.is_dir() and not entry.name.startswith(".")


def _images_below(folder: Path) -> list[Path]:
    images = []
    # followlinks: a class folder of symlinks into a shared store is common; sorted walks make
    # the order (and so the labels and the validation split) the same on every file system.
    for directory, subfolders, names in os.walk(folder, followlinks=True):
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        images += [
            Path(directory) / name
            for name in sorted(names)
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)
        ]
    return images
