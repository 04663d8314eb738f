"""data=image_folder: decoding, normalization, the split, augmentation, the decode cache, the data
fingerprint, and every refusal. Tiny PNG folders written with Pillow into tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from distill.config import build
from distill.data import ImageFolderDataModule
from distill.data.image_cache import PIXELS
from distill.errors import ConfigError
from distill.teachers import data_fingerprint

CLASSES = ("ant", "bee", "cat")
PER_CLASS = 6


def write_images(
    folder: Path,
    classes: tuple[str, ...] = CLASSES,
    per_class: int = PER_CLASS,
    size: tuple[int, int] = (8, 8),
    seed: int = 0,
) -> dict[Path, np.ndarray]:
    """`per_class` random RGB PNGs of `size` (height, width) in `folder/<class>/`; returns each
    file's pixels as written, (height, width, 3) uint8, in the order the data module reads."""
    generator = np.random.default_rng(seed)
    written = {}
    for name in classes:
        (folder / name).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            pixels = generator.integers(0, 256, (*size, 3), dtype=np.uint8)
            path = folder / name / f"{index:02d}.png"
            Image.fromarray(pixels).save(path)
            written[path] = pixels
    return written


def write_split(root: Path, **kwargs) -> dict[str, dict[Path, np.ndarray]]:
    """root/train and root/test, different images in each."""
    return {
        "train": write_images(root / "train", seed=0, **kwargs),
        "test": write_images(root / "test", seed=1, **kwargs),
    }


def channels_first(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels).permute(2, 0, 1)


def labels_of(written: dict[Path, np.ndarray]) -> list[int]:
    return [CLASSES.index(path.parent.name) for path in written]


def plain(root: Path, **kwargs) -> ImageFolderDataModule:
    """Pixels scaled to [0, 1] and nothing else: no augmentation, mean 0, std 1."""
    settings = {
        "num_classes": 3,
        "input_shape": (3, 8, 8),
        "mean": (0.0, 0.0, 0.0),
        "std": (1.0, 1.0, 1.0),
        "augment": False,
        "val_fraction": 0.0,
        "batch_size": 4,
        **kwargs,
    }
    return ImageFolderDataModule(root, **settings)


def inputs_and_labels(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    samples = [dataset[index] for index in range(len(dataset))]
    return torch.stack([x for x, _ in samples]), torch.stack([y for _, y in samples])


def test_decoded_images_are_the_pixels_written_labelled_by_sorted_class_folder(tmp_path):
    written = write_split(tmp_path)
    datamodule = plain(tmp_path)
    datamodule.setup()
    assert datamodule.classes == CLASSES
    for dataset, split in ((datamodule.train_dataset, "train"), (datamodule.test_dataset, "test")):
        inputs, labels = inputs_and_labels(dataset)
        expected = torch.stack([channels_first(p) for p in written[split].values()]).float() / 255
        assert torch.equal(inputs, expected)
        assert labels.tolist() == labels_of(written[split])
        assert labels.dtype == torch.int64


def test_inputs_are_normalized_with_the_given_mean_and_std(tmp_path):
    written = write_split(tmp_path)
    mean, std = (0.5, 0.25, 0.125), (0.2, 0.4, 0.5)
    datamodule = plain(tmp_path, mean=mean, std=std)
    datamodule.setup()
    inputs, _ = inputs_and_labels(datamodule.test_dataset)
    pixels = torch.stack([channels_first(p) for p in written["test"].values()]).double() / 255
    reference = (pixels - torch.tensor(mean).reshape(3, 1, 1)) / torch.tensor(std).reshape(3, 1, 1)
    assert torch.allclose(inputs.double(), reference, atol=1e-6)
    assert (datamodule.channel_mean, datamodule.channel_std) == (mean, std)


def test_null_mean_and_std_are_computed_from_the_training_images(tmp_path):
    written = write_split(tmp_path)
    datamodule = plain(tmp_path, mean=None, std=None, val_fraction=0.25)
    datamodule.setup()
    # Every training image (validation included: it is split off the training set later), no
    # test image.
    pixels = np.stack(list(written["train"].values())).astype(np.float64) / 255
    assert datamodule.channel_mean == pytest.approx(pixels.mean(axis=(0, 1, 2)), abs=1e-12)
    assert datamodule.channel_std == pytest.approx(pixels.std(axis=(0, 1, 2)), abs=1e-12)
    inputs, _ = inputs_and_labels(datamodule.val_dataset)
    assert inputs.mean().abs() < 0.5  # normalized with them


def test_grayscale_and_resize_are_pillows(tmp_path):
    written = write_split(tmp_path, size=(8, 10))
    datamodule = plain(tmp_path, input_shape=(1, 4, 6), image_size=(4, 6), mean=(0.0,), std=(1.0,))
    datamodule.setup()
    inputs, _ = inputs_and_labels(datamodule.test_dataset)
    expected = []
    for pixels in written["test"].values():
        gray = Image.fromarray(pixels).convert("L").resize((6, 4), Image.Resampling.BILINEAR)
        expected.append(torch.from_numpy(np.array(gray))[None].float() / 255)
    assert torch.equal(inputs, torch.stack(expected))


def test_the_test_fraction_split_is_per_class_seeded_and_disjoint(tmp_path):
    written = write_images(tmp_path)
    split = {}
    for seed in (0, 0, 1):
        datamodule = plain(tmp_path, test_fraction=1 / 3, seed=seed)
        datamodule.setup()
        train, test = datamodule.train_dataset.dataset, datamodule.test_dataset
        split.setdefault(seed, []).append((train.indices.tolist(), test.indices.tolist()))
        # Disjoint, together every image, and a third of each class (2 of 6) in the test set.
        assert sorted(train.indices.tolist() + test.indices.tolist()) == list(range(18))
        assert torch.bincount(test.labels).tolist() == [2, 2, 2]
        inputs, labels = inputs_and_labels(test)
        files = list(written)
        expected = [channels_first(written[files[i]]).float() / 255 for i in test.indices]
        assert torch.equal(inputs, torch.stack(expected))
        assert labels.tolist() == [labels_of(written)[i] for i in test.indices]
    assert split[0][0] == split[0][1]  # the same seed, the same split
    assert split[0][0] != split[1][0]


def test_augmentation_is_a_crop_or_mirrored_crop_of_the_image_and_seedable(tmp_path):
    written = write_split(tmp_path)
    datamodule = plain(tmp_path, augment=True, crop_padding=2)
    assert datamodule.has_random_augmentation
    assert not plain(tmp_path).has_random_augmentation
    datamodule.setup()
    image = channels_first(next(iter(written["train"].values())))
    padded = torch.nn.functional.pad(image, (2, 2, 2, 2))
    candidates = []
    for top in range(5):
        for left in range(5):
            crop = padded[:, top : top + 8, left : left + 8]
            candidates += [crop, crop.flip(-1)]
    train = datamodule.train_dataset
    draws = [train[0][0] for _ in range(30)]
    for draw in draws:
        pixels = (draw * 255).round().to(torch.uint8)
        assert any(torch.equal(pixels, candidate) for candidate in candidates)
    assert any(not torch.equal(draws[0], draw) for draw in draws[1:])
    torch.manual_seed(7)
    first = train[0][0]
    torch.manual_seed(7)
    assert torch.equal(first, train[0][0])
    # The plain images, for the test set and the example batch (validation reads them too).
    assert torch.equal(datamodule.example_input_batch(1)[0], image.float() / 255)


def test_decoded_images_are_cached_memory_mapped_and_not_decoded_again(tmp_path, monkeypatch):
    written = write_split(tmp_path / "images")
    cache = tmp_path / "cache"
    first = plain(tmp_path / "images", cache_dir=cache)
    first.setup()
    entries = sorted(path.parent for path in cache.glob(f"*/{PIXELS}"))
    assert len(entries) == 2  # train and test
    assert not [path for path in cache.iterdir() if path.name.startswith(".") and path.is_dir()]

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(Image, "open", no_decoding)
    second = plain(tmp_path / "images", cache_dir=cache)
    second.setup()
    pixels = second.test_dataset.pixels
    assert isinstance(pixels, np.memmap) and not pixels.flags.writeable
    expected = np.stack([p.transpose(2, 0, 1) for p in written["test"].values()])
    assert np.array_equal(pixels, expected)
    assert torch.equal(inputs_and_labels(second.test_dataset)[0], torch.from_numpy(expected) / 255)
    assert second.content_fingerprint() == first.content_fingerprint()


def test_a_changed_image_is_decoded_again_and_changes_the_data_fingerprint(
    tmp_path, compose_cfg, monkeypatch
):
    written = write_split(tmp_path / "images")
    cfg = compose_cfg(
        "data=image_folder",
        f"data.root={tmp_path / 'images'}",
        "data.num_classes=3",
        "data.input_shape=[3,8,8]",
    )
    before = build(cfg.data, "data")
    before.setup()
    fingerprint = data_fingerprint(cfg.data, before)
    assert fingerprint["content_fingerprint"] == before.content_fingerprint()
    assert "cache_dir" not in fingerprint  # where the pixels are kept is not what a teacher sees

    # Only touched (a copy that kept its bytes): decoded again, the same data.
    path = next(iter(written["train"]))
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    touched = build(cfg.data, "data")
    touched.setup()
    assert data_fingerprint(cfg.data, touched) == fingerprint

    # One pixel changed: decoded again (Pillow opens files), new pixels, new fingerprint.
    pixels = written["train"][path].copy()
    pixels[0, 0] = 255 - pixels[0, 0]
    Image.fromarray(pixels).save(path)
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    after = build(cfg.data, "data")
    after.setup()
    assert len(opened) == len(written["train"])  # the test folder's entry is still good
    assert data_fingerprint(cfg.data, after) != fingerprint
    assert np.array_equal(after.train_dataset.dataset.pixels[0], pixels.transpose(2, 0, 1))
    assert len(list(Path(cfg.data.cache_dir).glob(f"*/{PIXELS}"))) == 4  # 2 + 1 touched + 1 new


def test_other_data_has_no_content_fingerprint(compose_cfg):
    cfg = compose_cfg("data=digits")
    datamodule = build(cfg.data, "data")
    datamodule.setup()
    assert datamodule.content_fingerprint() is None
    assert "content_fingerprint" not in data_fingerprint(cfg.data, datamodule)
    assert data_fingerprint(cfg.data, datamodule) == data_fingerprint(cfg.data)


# Refusals: (what to write under tmp_path, settings, the exact message). `{tmp}` is tmp_path.
def corrupt(root: Path) -> None:
    write_split(root)
    (root / "train" / "bee" / "03.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")


def mixed_sizes(root: Path) -> None:
    write_split(root)
    Image.new("RGB", (10, 6)).save(root / "train" / "cat" / "02.png")


def empty_class(root: Path) -> None:
    write_split(root)
    for path in (root / "test" / "bee").iterdir():
        path.unlink()
    (root / "test" / "bee" / "notes.txt").write_text("not an image")


def class_only_in_train(root: Path) -> None:
    write_split(root)
    write_images(root / "train", classes=("dog",))


def one_image_class(root: Path) -> None:
    write_images(root)
    write_images(root, classes=("dog",), per_class=1)


REFUSALS = {
    "missing_root": (
        lambda root: None,
        {},
        "data.root='{tmp}/images' is not allowed: an existing folder of class folders (it does "
        "not exist)",
    ),
    "missing_test_folder": (
        lambda root: write_images(root / "train"),
        {},
        "data.root='{tmp}/images' is not allowed: a folder holding train/ and test/ folders of "
        "class folders ({tmp}/images/test does not exist), or set data.test_fraction to split a "
        "test set off one folder of class folders",
    ),
    "empty_class_folder": (
        empty_class,
        {},
        "data.root='{tmp}/images/test/bee' is not allowed: a class folder with at least one "
        "image (.bmp, .gif, .jpeg, .jpg, .pgm, .png, .ppm, .tif, .tiff, .webp); it has none",
    ),
    "corrupt_image": (
        corrupt,
        {},
        "data.root='{tmp}/images/train/bee/03.png' is not allowed: image files Pillow can read; "
        "this one is not (UnidentifiedImageError: cannot identify image file "
        "'{tmp}/images/train/bee/03.png'): replace or remove it",
    ),
    "mixed_sizes_without_resize": (
        mixed_sizes,
        {},
        "data.image_size=None is not allowed: [height, width] to resize every image to: the "
        "images differ in size ({tmp}/images/train/ant/00.png is 8x8, "
        "{tmp}/images/train/cat/02.png is 6x10; height x width)",
    ),
    "class_in_train_not_test": (
        class_only_in_train,
        {},
        "data.root='{tmp}/images' is not allowed: train/ and test/ with the same class folders; "
        "dog is in train/ but not in test/",
    ),
    "test_fraction_on_a_train_test_layout": (
        write_split,
        {"test_fraction": 0.2},
        "data.test_fraction=0.2 is not allowed: null: {tmp}/images holds train and test folders, "
        "read as the train and test sets when data.test_fraction is null (set, it would make "
        "them two classes)",
    ),
    "class_of_one_image_to_split": (
        one_image_class,
        {"test_fraction": 0.5, "num_classes": 4},
        "data.test_fraction=0.5 is not allowed: a split that leaves every class in both sets; "
        "{tmp}/images/dog has one image (or use root/train and root/test, with "
        "data.test_fraction=null)",
    ),
    "num_classes_wrong": (
        write_split,
        {"num_classes": 5},
        "data.num_classes=5 is not allowed: 3: the number of class folders in {tmp}/images/train",
    ),
    "num_classes_missing": (
        write_split,
        {"num_classes": None},
        "data.num_classes=None is not allowed: the number of class folders ({tmp}/images/train "
        "has 3), e.g. data.num_classes=3: the models are built for it before any image is read",
    ),
    "image_size_not_the_input_shape": (
        write_split,
        {"image_size": (16, 16)},
        "data.image_size=[16, 16] is not allowed: [8, 8], the height and width of "
        "data.input_shape=[3, 8, 8] (the models are built for it: change that to resize to "
        "another size), or null to keep the images' own size",
    ),
    "input_shape_not_the_images": (
        write_split,
        {"input_shape": (3, 6, 6)},
        "data.input_shape=(3, 6, 6) is not allowed: (3, 8, 8): the shape of one sample in the data",
    ),
}


@pytest.mark.parametrize(("prepare", "settings", "message"), REFUSALS.values(), ids=REFUSALS)
def test_bad_folders_are_refused_naming_the_field_value_and_what_is_allowed(
    prepare, settings, message, tmp_path
):
    root = tmp_path / "images"
    prepare(root)
    with pytest.raises(ConfigError) as refused:
        plain(root, cache_dir=tmp_path / "cache", **settings).setup()
    assert str(refused.value) == message.replace("{tmp}", str(tmp_path))
    # Nothing half-written is left in the cache: no staging folder, no entry without `done`.
    folders = [path for path in tmp_path.glob("cache/*") if path.is_dir()]
    assert all((folder / "done").is_file() for folder in folders)


def test_layout_refusals_come_before_any_image_is_decoded(tmp_path, monkeypatch):
    class_only_in_train(tmp_path)
    monkeypatch.setattr(Image, "open", lambda *a, **k: pytest.fail("decoded"))
    with pytest.raises(ConfigError, match="dog is in train/ but not in test/"):
        plain(tmp_path).setup()


@pytest.mark.parametrize(
    ("settings", "field", "allowed"),
    [
        ({"test_fraction": 0}, "data.test_fraction", "a number in (0, 1), or null"),
        ({"test_fraction": 1}, "data.test_fraction", "a number in (0, 1), or null"),
        ({"test_fraction": -0.5}, "data.test_fraction", "a number in (0, 1), or null"),
        ({"test_fraction": 1.5}, "data.test_fraction", "a number in (0, 1), or null"),
        ({"test_fraction": "half"}, "data.test_fraction", "a number in (0, 1), or null"),
        ({"channels": 2, "input_shape": (2, 8, 8)}, "data.channels", "1 (grayscale) or 3 (RGB)"),
        ({"channels": 1}, "data.channels", "3, the channels of data.input_shape=[3, 8, 8]"),
        ({"input_shape": (8, 8)}, "data.input_shape", "[channels, height, width] of the inputs"),
        ({"image_size": (8,)}, "data.image_size", "a sequence of 2 integers >= 1"),
        ({"mean": (0.5,)}, "data.mean", "null (computed from the training images) or 3 numbers"),
        ({"std": (1.0, 0.0, 1.0)}, "data.std", "3 numbers, one per channel, each > 0"),
        ({"crop_padding": -1}, "data.crop_padding", "an integer >= 0"),
        ({"augment": "yes"}, "data.augment", "true or false"),
        ({"root": ""}, "data.root", "a path to a folder"),
    ],
)
def test_bad_settings_are_refused_at_construction(settings, field, allowed, tmp_path):
    settings = {"root": tmp_path, **settings}
    with pytest.raises(ConfigError) as refused:
        plain(**settings)
    assert refused.value.field == field
    assert allowed in refused.value.allowed
