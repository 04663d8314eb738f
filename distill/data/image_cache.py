"""Decoding a folder of images once: a uint8 ``(N, C, H, W)`` array kept as a .npy file under the
cache directory and read back memory-mapped, so later runs neither decode nor hold it in RAM.

An entry is keyed by the files as they are on disk (relative path, size and modification time
of each) and the decode settings (channels, resize, Pillow's version), so a changed, added or
removed image decodes again. Entries are written like the teacher output cache's: into a
staging folder renamed into place under a per-entry lock, so a job killed half way leaves
nothing a later job trusts, and concurrent jobs decode an entry once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import PIL
from PIL import Image

from distill.errors import ConfigError
from distill.files import exclusive_lock, new_staging_dir, remove_abandoned_staging

log = logging.getLogger(__name__)

# Bump when the meaning of an entry changes (how images are decoded), so old entries are not used.
CACHE_FORMAT = 1
PIXELS = "pixels.npy"
META = "meta.json"
DONE = "done"
MODES = {1: "L", 3: "RGB"}


@dataclass(frozen=True)
class DecodeSettings:
    """How every image is decoded: converted to ``channels`` (1: grayscale, 3: RGB) and, when
    ``resize`` is ``(height, width)``, resized to it (bilinear); when None, all images must
    already have one size."""

    channels: int
    resize: tuple[int, int] | None


@dataclass(frozen=True)
class DecodedImages:
    """The decoded images of a list of files, and what they came from.

    Attributes:
        pixels: uint8 ``(N, C, H, W)`` in file order; a read-only memory map when cached.
        digest: sha256 of the pixels (and their shape): changes exactly when what a model
            sees changes, and not when a file is only touched or copied.
        origin: "cache" (read from an entry), "decoded" (decoded into a new entry) or
            "memory" (decoded, no cache directory).
    """

    pixels: np.ndarray
    digest: str
    origin: str


def load_images(
    files: Sequence[Path], folder: Path, settings: DecodeSettings, cache_dir: Path | None
) -> DecodedImages:
    """The images in ``files`` (all below ``folder``), from the cache entry of their current
    state, or decoded (into a new entry when there is a ``cache_dir``)."""
    if cache_dir is None:
        pixels, digest = decode_images(files, settings, _in_memory)
        return DecodedImages(pixels, digest, "memory")
    entry = cache_dir.expanduser() / entry_key(files, folder, settings)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        allowed = f"a writable folder ({error})"
        raise ConfigError("data.cache_dir", str(cache_dir), allowed) from error
    with exclusive_lock(entry.parent / f".{entry.name}.lock"):
        remove_abandoned_staging(entry)
        origin = "cache"
        if not (entry / DONE).is_file():
            origin = "decoded"
            log.info("Decoding %d images of %s into %s", len(files), folder, entry)
            _decode_into_entry(files, settings, entry)
    digest = json.loads((entry / META).read_text())["digest"]
    return DecodedImages(np.load(entry / PIXELS, mmap_mode="r"), digest, origin)


def entry_key(files: Sequence[Path], folder: Path, settings: DecodeSettings) -> str:
    """The cache key of ``files`` as they are now: names, sizes, modification times (not the
    folder's own path: a copy that keeps times, ``cp -p`` or ``rsync -a``, reuses the entry)."""
    stats = []
    for path in files:
        status = path.stat()
        stats.append([path.relative_to(folder).as_posix(), status.st_size, status.st_mtime_ns])
    material = {
        "format": CACHE_FORMAT,
        "pillow": PIL.__version__,  # resampling and decoders change between releases
        "channels": settings.channels,
        "resize": settings.resize,
        "files": stats,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:20]


def decode_image(path: Path, settings: DecodeSettings) -> np.ndarray:
    """One image as uint8 ``(channels, height, width)``; a file Pillow cannot read is refused
    with a ConfigError naming it."""
    try:
        with Image.open(path) as image:
            converted = image.convert(MODES[settings.channels])
            if settings.resize is not None:
                height, width = settings.resize
                if converted.size != (width, height):
                    converted = converted.resize((width, height), Image.Resampling.BILINEAR)
            pixels = np.asarray(converted, dtype=np.uint8)
    except Exception as error:  # a damaged file fails in many ways; all mean "unreadable"
        raise ConfigError(
            "data.root",
            str(path),
            f"image files Pillow can read; this one is not ({type(error).__name__}: {error}): "
            "replace or remove it",
        ) from error
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def decode_images(
    files: Sequence[Path],
    settings: DecodeSettings,
    allocate: Callable[[tuple[int, ...]], np.ndarray],
) -> tuple[np.ndarray, str]:
    """Decode ``files`` one by one into the array ``allocate(shape)`` returns (sized from the
    first image); returns it and the sha256 of its pixels. Images of different sizes (possible
    only without a resize) are refused, naming the first file and the first that differs."""
    first = decode_image(files[0], settings)
    shape = (len(files), *first.shape)
    pixels = allocate(shape)
    digest = hashlib.sha256(repr(shape).encode())
    for index, path in enumerate(files):
        image = first if index == 0 else decode_image(path, settings)
        if image.shape != first.shape:
            raise ConfigError(
                "data.image_size",
                None,
                "[height, width] to resize every image to: the images differ in size "
                f"({files[0]} is {_size(first)}, {path} is {_size(image)}; height x width)",
            )
        pixels[index] = image
        digest.update(image.tobytes())
    return pixels, digest.hexdigest()


def _in_memory(shape: tuple[int, ...]) -> np.ndarray:
    return np.empty(shape, dtype=np.uint8)


def _size(image: np.ndarray) -> str:
    return f"{image.shape[1]}x{image.shape[2]}"


def _decode_into_entry(files: Sequence[Path], settings: DecodeSettings, entry: Path) -> None:
    # Decoded straight into a memory-mapped file in a staging folder (a large set never sits in
    # RAM), which is renamed into place with its meta and `done` marker only when whole.
    staging = new_staging_dir(entry.parent, prefix=f".{entry.name}.")
    try:

        def allocate(shape: tuple[int, ...]) -> np.ndarray:
            return np.lib.format.open_memmap(staging / PIXELS, "w+", np.uint8, shape)

        pixels, digest = decode_images(files, settings, allocate)
        cast(np.memmap, pixels).flush()
        del pixels  # the map is closed before the rename
        meta = {"digest": digest, "files": len(files), "pillow": PIL.__version__}
        (staging / META).write_text(json.dumps(meta, indent=2) + "\n")
        (staging / DONE).write_text("complete\n")
        if entry.exists():  # without its `done` marker: never trusted
            shutil.rmtree(entry)
        os.replace(staging, entry)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
