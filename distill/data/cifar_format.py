"""The CIFAR "python version" files: where they live, how to read them, how to write them.

Layout (Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", 2009)::

    cifar-10-batches-py/   data_batch_1 .. data_batch_5, test_batch
    cifar-100-python/      train, test

Each file is a pickled dict; ``b"data"`` is an ``(N, 3072)`` uint8 array holding each image as
three 32x32 planes (red, green, blue), and the labels are a list of ints under ``b"labels"``
(CIFAR-10) or ``b"fine_labels"`` (CIFAR-100).
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from distill.errors import ConfigError

DOWNLOAD_PAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"
IMAGE_SHAPE = (3, 32, 32)
_PIXELS_PER_IMAGE = 3 * 32 * 32
_CIFAR10_TRAIN_BATCHES = 5


@dataclass(frozen=True)
class CIFARVariant:
    """What distinguishes CIFAR-10 from CIFAR-100 on disk."""

    name: str
    folder: str
    archive: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: bytes
    num_classes: int


VARIANTS = {
    "cifar10": CIFARVariant(
        name="cifar10",
        folder="cifar-10-batches-py",
        archive="cifar-10-python.tar.gz",
        train_files=tuple(f"data_batch_{i}" for i in range(1, _CIFAR10_TRAIN_BATCHES + 1)),
        test_files=("test_batch",),
        label_key=b"labels",
        num_classes=10,
    ),
    "cifar100": CIFARVariant(
        name="cifar100",
        folder="cifar-100-python",
        archive="cifar-100-python.tar.gz",
        train_files=("train",),
        test_files=("test",),
        label_key=b"fine_labels",
        num_classes=100,
    ),
}


def get_variant(variant: str) -> CIFARVariant:
    """The on-disk description of ``variant``; ConfigError on an unknown name."""
    if variant not in VARIANTS:
        raise ConfigError("data.variant", variant, f"one of {sorted(VARIANTS)}")
    return VARIANTS[variant]


def find_batches_dir(data_dir: str | os.PathLike, variant: CIFARVariant) -> Path:
    """The folder holding ``variant``'s files: ``data_dir/<folder>`` or ``data_dir`` itself."""
    root = Path(data_dir).expanduser()
    names = variant.train_files + variant.test_files
    nested = root / variant.folder
    for candidate in (nested, root):
        if all((candidate / name).is_file() for name in names):
            return candidate
    # Report a missing file where the user most likely meant the data to be: in the
    # extracted folder, unless data_dir itself already holds some of the batch files.
    partly_flat = not nested.is_dir() and any((root / name).is_file() for name in names)
    looked_in = root if partly_flat else nested
    missing = next(name for name in names if not (looked_in / name).is_file())
    raise ConfigError(
        "data.data_dir",
        str(data_dir),
        f"a folder with the {variant.name} python batches; {looked_in / missing} does not exist. "
        f"Download {variant.archive} from {DOWNLOAD_PAGE} and extract it into {root} "
        f"(tar -xzf {variant.archive} -C {root} creates {variant.folder}/); "
        "this code never downloads",
    )


def read_batches(
    directory: Path, variant: CIFARVariant, train: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, 3, 32, 32)`` uint8 and labels ``(N,)`` int64 of the train or test files."""
    names = variant.train_files if train else variant.test_files
    images, labels = zip(*(_read_batch(directory / name, variant) for name in names), strict=True)
    return torch.cat(images), torch.cat(labels)


def write_cifar_batches(
    directory: str | os.PathLike,
    variant: str,
    train_images: np.ndarray | torch.Tensor,
    train_labels: np.ndarray | torch.Tensor | list[int],
    test_images: np.ndarray | torch.Tensor,
    test_labels: np.ndarray | torch.Tensor | list[int],
) -> Path:
    """Write images and labels as the CIFAR python batch files, under ``directory``.

    Creates ``directory/cifar-10-batches-py/`` (the training set spread over five
    ``data_batch_*`` files, as in the real one) or ``directory/cifar-100-python/``. The dict
    keys, dtypes and pixel layout match the published files, so any reader of those reads
    these; only the optional extras (``filenames``, ``coarse_labels``, the meta file) are
    placeholders or left out.

    Args:
        directory: the data_dir to write into; created if missing.
        variant: ``"cifar10"`` or ``"cifar100"``.
        train_images, test_images: uint8, shape ``(N, 3, 32, 32)`` (channels first).
        train_labels, test_labels: ints in ``[0, num_classes)``, one per image.

    Returns:
        The folder the files were written to.
    """
    spec = get_variant(variant)
    train = _to_batch_arrays(train_images, train_labels, spec, "train")
    test = _to_batch_arrays(test_images, test_labels, spec, "test")
    folder = Path(directory).expanduser() / spec.folder
    folder.mkdir(parents=True, exist_ok=True)
    splits = (("training", spec.train_files, train), ("testing", spec.test_files, test))
    for split, names, (pixels, labels) in splits:
        pixel_parts = np.array_split(pixels, len(names))
        label_parts = np.array_split(labels, len(names))
        for index, name in enumerate(names):
            batch = {
                b"batch_label": f"{split} batch {index + 1} of {len(names)}".encode(),
                spec.label_key: [int(label) for label in label_parts[index]],
                b"data": pixel_parts[index],
                b"filenames": [
                    f"{name}_{i:05d}.png".encode() for i in range(len(label_parts[index]))
                ],
            }
            with open(folder / name, "wb") as file:
                pickle.dump(batch, file, protocol=4)
    return folder


def _to_batch_arrays(
    images: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor | list[int],
    spec: CIFARVariant,
    split: str,
) -> tuple[np.ndarray, np.ndarray]:
    pixels = np.asarray(images)
    label_array = np.asarray(labels)
    if pixels.dtype != np.uint8 or pixels.shape[1:] != IMAGE_SHAPE:
        raise ValueError(
            f"{split}_images must be uint8 of shape (N, 3, 32, 32), "
            f"got {pixels.dtype} {pixels.shape}"
        )
    if label_array.shape != (len(pixels),):
        raise ValueError(f"{split}_labels must hold one label per image ({len(pixels)})")
    if len(label_array) and not 0 <= label_array.min() <= label_array.max() < spec.num_classes:
        raise ValueError(f"{split}_labels must lie in [0, {spec.num_classes}) for {spec.name}")
    # Flattening channels-first images gives exactly the red, green, blue planes of the format.
    return np.ascontiguousarray(pixels.reshape(len(pixels), _PIXELS_PER_IMAGE)), label_array


def _read_batch(path: Path, variant: CIFARVariant) -> tuple[torch.Tensor, torch.Tensor]:
    def unreadable(reason: str) -> ConfigError:
        return ConfigError(
            "data.data_dir",
            str(path),
            f"a readable {variant.name} batch file, but {reason}; "
            f"extract {variant.archive} from {DOWNLOAD_PAGE} again",
        )

    try:
        with open(path, "rb") as file:
            batch = _SafeUnpickler(file, encoding="bytes").load()
    except Exception as error:  # a damaged pickle fails in many ways; all mean "unreadable"
        raise unreadable(f"it could not be unpickled ({type(error).__name__}: {error})") from error
    if not isinstance(batch, dict):
        raise unreadable(f"it holds a {type(batch).__name__}, not a dict")
    # Accept str keys too: files re-pickled by Python 3 code often have them.
    batch = {key.encode() if isinstance(key, str) else key: value for key, value in batch.items()}
    if b"data" not in batch or variant.label_key not in batch:
        raise unreadable(f"it lacks the {b'data'!r} or {variant.label_key!r} entry")
    pixels = batch[b"data"]
    if (
        not isinstance(pixels, np.ndarray)
        or pixels.dtype != np.uint8
        or pixels.ndim != 2
        or pixels.shape[1] != _PIXELS_PER_IMAGE
    ):
        raise unreadable("its data is not an (N, 3072) uint8 array")
    labels = torch.as_tensor(np.asarray(batch[variant.label_key], dtype=np.int64))
    if labels.shape != (len(pixels),):
        raise unreadable(f"it has {len(pixels)} images but {labels.numel()} labels")
    # Arrays unpickled from protocol-5 buffers are read-only, which torch does not support.
    if not pixels.flags.writeable:
        pixels = pixels.copy()
    images = torch.from_numpy(pixels).reshape(len(pixels), *IMAGE_SHAPE)
    return images, labels


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles plain containers and NumPy arrays, and refuses everything else.

    A pickle can name any importable callable; data_dir comes from a config file, so a
    planted file must not be able to run code.
    """

    _ALLOWED = frozenset(
        {
            ("_codecs", "encode"),  # how Python 3 writes bytes at protocol 2
            ("builtins", "bytes"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "_reconstruct"),  # NumPy 1 and the Python 2 originals
            ("numpy.core.multiarray", "scalar"),
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.multiarray", "_reconstruct"),  # NumPy 2
            ("numpy._core.multiarray", "scalar"),
            ("numpy._core.numeric", "_frombuffer"),
        }
    )

    def find_class(self, module: str, name: str) -> object:
        python3_module = {"__builtin__": "builtins"}.get(module, module)
        if (python3_module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)
