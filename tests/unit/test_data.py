"""DataModules: shapes, splits, RNG isolation, the CIFAR file format, and config errors."""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from distill.data import (
    CIFARDataModule,
    ClassificationDataModule,
    DigitsDataModule,
    MNIST1DDataModule,
    write_cifar_batches,
)
from distill.data.cifar import CHANNEL_STATS, random_crop_flip
from distill.data.mnist1d import generate_mnist1d
from distill.errors import ConfigError

DOWNLOAD_PAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"
SMALL_MNIST1D = 500

# Small enough for fast tests; every class appears, so the largest label is num_classes - 1.
CIFAR_SIZES = {"cifar10": (40, 20), "cifar100": (120, 100)}


def fake_cifar(variant: str, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    num_train, num_test = CIFAR_SIZES[variant]
    num_classes = 10 if variant == "cifar10" else 100
    return {
        "train_images": torch.randint(0, 256, (num_train, 3, 32, 32), generator=generator).byte(),
        "train_labels": torch.arange(num_train) % num_classes,
        "test_images": torch.randint(0, 256, (num_test, 3, 32, 32), generator=generator).byte(),
        "test_labels": torch.arange(num_test) % num_classes,
    }


def normalize(images: torch.Tensor, variant: str) -> torch.Tensor:
    """Reference: scale to [0, 1], subtract the channel mean, divide by the channel std."""
    mean, std = (torch.tensor(stat).reshape(3, 1, 1) for stat in CHANNEL_STATS[variant])
    return (images.float() / 255 - mean) / std


@pytest.fixture(scope="module")
def cifar_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict]]:
    dirs = {}
    for variant in CIFAR_SIZES:
        root = tmp_path_factory.mktemp(variant)
        data = fake_cifar(variant)
        write_cifar_batches(root, variant, **data)
        dirs[variant] = (root, data)
    return dirs


def make_datamodule(name: str, cifar_dirs: dict, **kwargs) -> ClassificationDataModule:
    if name == "mnist1d":
        return MNIST1DDataModule(num_samples=SMALL_MNIST1D, **kwargs)
    if name == "digits":
        return DigitsDataModule(**kwargs)
    return CIFARDataModule(data_dir=str(cifar_dirs[name][0]), variant=name, **kwargs)


# name -> (num_classes, input_shape, number of train + val samples, number of test samples)
SETTINGS = {
    "mnist1d": (10, (1, 40), 400, 100),
    "digits": (10, (1, 8, 8), 1437, 360),
    "cifar10": (10, (3, 32, 32), 40, 20),
    "cifar100": (100, (3, 32, 32), 120, 100),
}


@pytest.mark.parametrize("name", list(SETTINGS))
def test_loaders_yield_declared_shapes_dtypes_and_labels(name: str, cifar_dirs: dict) -> None:
    num_classes, input_shape, num_train, num_test = SETTINGS[name]
    datamodule = make_datamodule(name, cifar_dirs, batch_size=16, eval_batch_size=7)
    datamodule.setup()
    assert datamodule.num_classes == num_classes
    assert datamodule.input_shape == input_shape
    assert len(datamodule.train_dataset) + len(datamodule.val_dataset) == num_train
    assert len(datamodule.test_dataset) == num_test
    loaders = {
        "train": datamodule.train_dataloader(),
        "val": datamodule.val_dataloader(),
        "test": datamodule.test_dataloader(),
    }
    for split, loader in loaders.items():
        assert loader.drop_last is False
        assert loader.batch_size == (16 if split == "train" else 7)
        inputs, labels = next(iter(loader))
        assert inputs.dtype == torch.float32
        assert tuple(inputs.shape[1:]) == input_shape
        assert labels.dtype == torch.int64
    all_labels = torch.cat([labels for _, labels in loaders["test"]])
    assert all_labels.min() >= 0 and all_labels.max() < num_classes
    assert datamodule.example_input_batch(3).shape == (3, *input_shape)


@pytest.mark.parametrize("name", ["mnist1d", "digits"])
def test_val_split_is_deterministic_and_disjoint(name: str, cifar_dirs: dict) -> None:
    first, second = (make_datamodule(name, cifar_dirs, seed=3) for _ in range(2))
    other_seed = make_datamodule(name, cifar_dirs, seed=4)
    for datamodule in (first, second, other_seed):
        datamodule.setup()
    val_indices = set(first.val_dataset.indices)
    train_indices = set(first.train_dataset.indices)
    assert val_indices == set(second.val_dataset.indices)
    assert val_indices != set(other_seed.val_dataset.indices)
    assert not val_indices & train_indices
    assert len(val_indices | train_indices) == len(first.train_dataset.dataset)
    assert len(val_indices) == int(len(first.train_dataset.dataset) * 0.1)


def test_train_shuffle_is_seeded() -> None:
    orders = []
    for _ in range(2):
        datamodule = DigitsDataModule(batch_size=32, seed=5)
        datamodule.setup()
        orders.append(next(iter(datamodule.train_dataloader()))[1])
    assert torch.equal(orders[0], orders[1])


def test_setup_loads_once() -> None:
    class CountingDigits(DigitsDataModule):
        loads = 0

        def load_datasets(self):
            CountingDigits.loads += 1
            return super().load_datasets()

    datamodule = CountingDigits()
    datamodule.setup("fit")
    train = datamodule.train_dataset
    datamodule.setup("test")
    assert CountingDigits.loads == 1
    assert datamodule.train_dataset is train


def test_digits_pixels_lie_in_unit_interval() -> None:
    datamodule = DigitsDataModule()
    datamodule.setup()
    inputs = datamodule.test_dataset.inputs
    assert inputs.min() == 0.0 and inputs.max() == 1.0


def test_mnist1d_generation_leaves_global_rng_untouched() -> None:
    random.seed(123)
    np.random.seed(123)
    python_state, numpy_state = random.getstate(), np.random.get_state()
    generate_mnist1d.cache_clear()  # make sure the generator really runs
    MNIST1DDataModule(num_samples=SMALL_MNIST1D).setup()
    assert random.getstate() == python_state
    restored = np.random.get_state()
    assert restored[0] == numpy_state[0] and np.array_equal(restored[1], numpy_state[1])
    assert restored[2:] == numpy_state[2:]


def test_mnist1d_is_memoized_and_read_only() -> None:
    first = generate_mnist1d(SMALL_MNIST1D, 0.8, 42)
    assert generate_mnist1d(SMALL_MNIST1D, 0.8, 42) is first
    train_x, train_y, _, test_y = first
    assert train_x.shape == (400, 40) and test_y.shape == (100,)
    assert set(np.unique(train_y)) == set(range(10))
    with pytest.raises(ValueError, match="read-only"):
        train_x[0, 0] = 1.0
    # The datasets get their own copies, so writing to them cannot corrupt the cache.
    datamodule = MNIST1DDataModule(num_samples=SMALL_MNIST1D)
    datamodule.setup()
    datamodule.test_dataset.inputs.zero_()
    assert np.abs(generate_mnist1d(SMALL_MNIST1D, 0.8, 42)[2]).sum() > 0


@pytest.mark.parametrize("variant", list(CIFAR_SIZES))
def test_cifar_round_trip_is_exact(variant: str, cifar_dirs: dict) -> None:
    root, data = cifar_dirs[variant]
    datamodule = CIFARDataModule(data_dir=str(root), variant=variant, augment=False)
    datamodule.setup()
    full_train = datamodule.train_dataset.dataset
    for index in (0, len(full_train) - 1):
        image, label = full_train[index]
        assert torch.allclose(image, normalize(data["train_images"][index], variant), atol=1e-6)
        assert label == data["train_labels"][index]
    test_inputs = torch.stack([image for image, _ in datamodule.test_dataset])
    assert torch.allclose(test_inputs, normalize(data["test_images"], variant), atol=1e-6)
    assert torch.equal(datamodule.test_dataset.images, data["test_images"])
    assert torch.equal(datamodule.test_dataset.labels, data["test_labels"])


def test_cifar10_files_follow_the_published_format(cifar_dirs: dict) -> None:
    root, data = cifar_dirs["cifar10"]
    folder = root / "cifar-10-batches-py"
    assert sorted(path.name for path in folder.iterdir()) == [
        *(f"data_batch_{i}" for i in range(1, 6)),
        "test_batch",
    ]
    with open(folder / "data_batch_1", "rb") as file:
        batch = pickle.load(file, encoding="bytes")
    assert {b"batch_label", b"labels", b"data", b"filenames"} <= set(batch)
    assert batch[b"data"].dtype == np.uint8 and batch[b"data"].shape == (8, 3072)
    assert isinstance(batch[b"labels"], list) and len(batch[b"labels"]) == 8
    # Row layout: the full red plane, then green, then blue, each row-major.
    first_image = data["train_images"][0].numpy()
    assert np.array_equal(batch[b"data"][0, :1024].reshape(32, 32), first_image[0])
    assert np.array_equal(batch[b"data"][0, 2048:].reshape(32, 32), first_image[2])


def test_cifar_accepts_the_batches_folder_itself(cifar_dirs: dict) -> None:
    root, _ = cifar_dirs["cifar100"]
    datamodule = CIFARDataModule(data_dir=str(root / "cifar-100-python"), variant="cifar100")
    datamodule.setup()
    assert len(datamodule.test_dataset) == CIFAR_SIZES["cifar100"][1]


def test_cifar_augmentation_is_random_but_seedable(cifar_dirs: dict) -> None:
    root, data = cifar_dirs["cifar10"]
    datamodule = CIFARDataModule(data_dir=str(root), augment=True)
    assert datamodule.has_random_augmentation
    assert not CIFARDataModule(data_dir=str(root), augment=False).has_random_augmentation
    datamodule.setup()
    train = datamodule.train_dataset
    draws = [train[0][0] for _ in range(10)]
    assert all(draw.shape == (3, 32, 32) for draw in draws)
    assert any(not torch.equal(draws[0], draw) for draw in draws[1:])
    torch.manual_seed(7)
    first = train[0][0]
    torch.manual_seed(7)
    assert torch.equal(first, train[0][0])
    # Validation and the example batch read the plain images.
    val_index = datamodule.val_dataset.indices[0]
    expected = normalize(data["train_images"][val_index], "cifar10")
    assert torch.allclose(datamodule.val_dataset[0][0], expected, atol=1e-6)
    assert torch.allclose(datamodule.val_dataset[0][0], datamodule.val_dataset[0][0])


def test_random_crop_flip_is_a_shift_or_a_mirrored_shift() -> None:
    image = torch.arange(1, 3 * 6 * 6 + 1, dtype=torch.int64).reshape(3, 6, 6)
    padded = torch.nn.functional.pad(image, (2, 2, 2, 2))
    candidates = []
    for top in range(5):
        for left in range(5):
            crop = padded[:, top : top + 6, left : left + 6]
            candidates += [crop, crop.flip(-1)]
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        augmented = random_crop_flip(image, padding=2, generator=generator)
        assert any(torch.equal(augmented, candidate) for candidate in candidates)
    replay = [
        random_crop_flip(image, padding=2, generator=torch.Generator().manual_seed(1))
        for _ in range(2)
    ]
    assert torch.equal(replay[0], replay[1])
    unpadded = random_crop_flip(image, padding=0)
    assert torch.equal(unpadded, image) or torch.equal(unpadded, image.flip(-1))


def test_missing_cifar_dir_says_where_to_get_the_data(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    datamodule = CIFARDataModule(data_dir=str(missing))
    with pytest.raises(ConfigError) as error:
        datamodule.setup()
    assert error.value.field == "data.data_dir"
    message = str(error.value)
    assert str(missing) in message
    assert DOWNLOAD_PAGE in message and "cifar-10-python.tar.gz" in message


def test_corrupt_cifar_file_is_named(tmp_path: Path) -> None:
    folder = write_cifar_batches(tmp_path, "cifar10", **fake_cifar("cifar10"))
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(ConfigError, match="data_batch_3") as error:
        CIFARDataModule(data_dir=str(tmp_path)).setup()
    assert error.value.field == "data.data_dir"


def test_cifar_pickle_cannot_run_code(tmp_path: Path) -> None:
    folder = write_cifar_batches(tmp_path, "cifar10", **fake_cifar("cifar10"))
    # A pickle that names an arbitrary callable; a plain pickle.load would import it.
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": random.getstate}))
    with pytest.raises(ConfigError, match="refusing to load"):
        CIFARDataModule(data_dir=str(tmp_path)).setup()


def test_declared_num_classes_is_checked_against_the_labels(cifar_dirs: dict) -> None:
    root, _ = cifar_dirs["cifar10"]
    with pytest.raises(ConfigError) as error:
        CIFARDataModule(data_dir=str(root), num_classes=100).setup()
    assert error.value.field == "data.num_classes"
    assert "10" in error.value.allowed


def test_declared_input_shape_is_checked_against_the_data() -> None:
    with pytest.raises(ConfigError) as error:
        DigitsDataModule(input_shape=(1, 64)).setup()
    assert error.value.field == "data.input_shape"
    assert "(1, 8, 8)" in error.value.allowed


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("batch_size", 0),
        ("batch_size", -4),
        ("batch_size", 2.5),
        ("batch_size", True),
        ("eval_batch_size", 0),
        ("num_workers", -1),
        ("val_fraction", 1.0),
        ("val_fraction", -0.1),
        ("num_classes", 1),
        ("input_shape", []),
        ("input_shape", (1, 0)),
        ("test_fraction", 0.0),
    ],
)
def test_bad_settings_raise_config_error_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as error:
        DigitsDataModule(**{field: value})
    assert error.value.field == f"data.{field}"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"variant": "cifar1000"}, "data.variant"),
        ({"augment": "yes"}, "data.augment"),
        ({"data_dir": ""}, "data.data_dir"),
    ],
)
def test_bad_cifar_settings(kwargs: dict, field: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        CIFARDataModule(**{"data_dir": str(tmp_path), **kwargs})
    assert error.value.field == field
    if field == "data.variant":
        assert "cifar10" in error.value.allowed and "cifar100" in error.value.allowed


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"num_samples": 5}, "data.num_samples"),
        ({"train_split": 1.0}, "data.train_split"),
        ({"generation_seed": -1}, "data.generation_seed"),
    ],
)
def test_bad_mnist1d_settings(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError) as error:
        MNIST1DDataModule(**kwargs)
    assert error.value.field == field


def test_loaders_need_setup_first() -> None:
    with pytest.raises(RuntimeError, match="setup"):
        DigitsDataModule().train_dataloader()


def test_each_fit_starts_the_same_shuffle_order():
    # setup() runs at every fit: a teacher trained first must not change the student's order.
    datamodule = DigitsDataModule(batch_size=32)
    datamodule.setup("fit")
    first = [batch[1] for batch in datamodule.train_dataloader()]
    datamodule.setup("fit")
    again = [batch[1] for batch in datamodule.train_dataloader()]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
