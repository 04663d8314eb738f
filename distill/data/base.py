"""The shared shape of every classification DataModule: validation, split, loaders, checks."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence, Sized
from typing import Any, TypeVar, cast

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from distill.data.resumable import ResumableDataLoader
from distill.errors import ConfigError
from distill.validate import require_fraction, require_int, require_ints

DatasetT = TypeVar("DatasetT", bound=Dataset)


class TensorClassificationDataset(Dataset):
    """Inputs and labels already in memory: ``dataset[i] == (inputs[i], labels[i])``.

    Args:
        inputs: float32 tensor, one sample per row of the first dimension.
        labels: int64 tensor of shape ``(len(inputs),)``.
    """

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        if len(inputs) != len(labels):
            raise ValueError(f"{len(inputs)} inputs but {len(labels)} labels")
        self.inputs = inputs
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs[index], self.labels[index]


class ClassificationDataModule(pl.LightningDataModule, ABC):
    """Train / validation / test loaders for a classification dataset.

    Subclasses implement :meth:`load_datasets`; this class holds the rest: it checks the
    settings, splits a validation set off the training set (same split on every run for a
    given ``seed``), checks the declared ``num_classes`` and ``input_shape`` against the data,
    and builds the loaders.

    Args:
        num_classes: number of classes; must equal the largest label in the data plus one.
        input_shape: shape of one input sample, without the batch dimension.
        batch_size: training batch size.
        eval_batch_size: batch size for validation and test; defaults to ``batch_size``.
        num_workers: DataLoader worker processes; 0 loads in the main process.
        val_fraction: share of the training set held out for validation, in ``[0, 1)``.
        seed: seeds the validation split and the training shuffle order.
    """

    def __init__(
        self,
        num_classes: int,
        input_shape: Sequence[int],
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self._num_classes = require_int("data.num_classes", num_classes, minimum=2)
        self._input_shape = require_ints(
            "data.input_shape",
            input_shape,
            allowed="a non-empty sequence of positive integers, e.g. [3, 32, 32]",
        )
        self.batch_size = require_int("data.batch_size", batch_size, minimum=1)
        self.eval_batch_size = (
            self.batch_size
            if eval_batch_size is None
            else require_int("data.eval_batch_size", eval_batch_size, minimum=1)
        )
        self.num_workers = require_int("data.num_workers", num_workers, minimum=0)
        self.seed = require_int("data.seed", seed, minimum=0)
        self.val_fraction = require_fraction("data.val_fraction", val_fraction)
        # Set by a run whose loss keeps per-sample state (CRD's memory bank): training batches
        # then carry each sample's position in the training set as a third element.
        self.return_indices = False
        self._train_dataset: Subset | None = None
        self._val_dataset: Subset | None = None
        self._test_dataset: Dataset | None = None
        self._full_train_dataset: Dataset | None = None
        # Reset at every setup() (Lightning calls it at the start of each fit), so a fit's
        # shuffle order depends on the seed alone and not on earlier fits (a teacher trained
        # first in the same process); a train loader reloaded within a fit continues the
        # sequence instead of replaying the first epoch's order.
        self._shuffle_generator = torch.Generator().manual_seed(seed)

    @abstractmethod
    def load_datasets(self) -> tuple[Dataset, Dataset]:
        """Return ``(train_dataset, test_dataset)``, each yielding ``(input, label)``.

        Inputs are float32 tensors of shape ``input_shape``, labels int64 scalars. The train
        dataset must be free of random augmentation (validation is split off it); add
        augmentation in :meth:`train_view`. A dataset with a ``labels`` tensor attribute is
        checked without iterating over its inputs.
        """

    def train_view(self, train_dataset: Dataset) -> Dataset:
        """The training set as the model sees it in training (e.g. randomly augmented).

        Must hold the same samples in the same order as ``train_dataset``. Subclasses that
        add random augmentation override this and :attr:`has_random_augmentation`.
        """
        return train_dataset

    @property
    def has_random_augmentation(self) -> bool:
        """True when training inputs change from one epoch to the next."""
        return False

    def content_fingerprint(self) -> str | None:
        """A hash of the data itself, for data its settings do not pin down (files a user can
        change in place, such as an image folder); None when the settings alone decide it.
        Called after :meth:`setup`; the teacher caches key on it (`data_fingerprint`)."""
        return None

    @property
    def num_classes(self) -> int:
        """Number of classes; labels lie in ``[0, num_classes)``."""
        return self._num_classes

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input sample, without the batch dimension."""
        return self._input_shape

    @property
    def train_dataset(self) -> Subset:
        """Training samples after :meth:`setup`; ``.dataset`` is the whole training view."""
        return self._require(self._train_dataset)

    @property
    def val_dataset(self) -> Subset:
        """Validation samples after :meth:`setup`, never augmented."""
        return self._require(self._val_dataset)

    @property
    def test_dataset(self) -> Dataset:
        """Test samples after :meth:`setup`."""
        return self._require(self._test_dataset)

    def setup(self, stage: str | None = None) -> None:
        """Load, check and split the data once; later calls reuse it."""
        self._shuffle_generator = torch.Generator().manual_seed(self.seed)
        if self._train_dataset is not None:
            return
        train_dataset, test_dataset = self.load_datasets()
        self._check_against_data(train_dataset, test_dataset)
        train_indices, val_indices = self._split_indices(_size(train_dataset))
        self._full_train_dataset = train_dataset
        self._train_dataset = Subset(self.train_view(train_dataset), train_indices)
        # Validation reads the plain training set: augmented validation would be noisy.
        self._val_dataset = Subset(train_dataset, val_indices)
        self._test_dataset = test_dataset

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches; the order is fixed by ``seed``."""
        dataset: Dataset = self.train_dataset
        if self.return_indices:
            dataset = IndexedDataset(dataset)
        return self._loader(dataset, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches in a fixed order (empty when ``val_fraction`` is 0)."""
        return self._loader(self.val_dataset, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test batches in a fixed order."""
        return self._loader(self.test_dataset, self.eval_batch_size, shuffle=False)

    def example_input_batch(self, n: int = 2) -> torch.Tensor:
        """Up to ``n`` un-augmented training inputs stacked into a batch, for a dummy forward.

        Calls :meth:`setup` if needed. Useful to check that a model accepts this data.
        """
        n = require_int("n", n, minimum=1)
        self.setup()
        dataset = self._require(self._full_train_dataset)
        count = min(n, _size(dataset))
        return torch.stack([dataset[index][0] for index in range(count)])

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        common: dict[str, Any] = {
            "batch_size": batch_size,
            "drop_last": False,
            "num_workers": self.num_workers,
            "persistent_workers": self.num_workers > 0,
        }
        if not shuffle:
            return DataLoader(dataset, **common)
        # Worker seeds are drawn from this generator too, so augmentation inside workers is
        # reproducible as well; the loader resumes mid-epoch from a checkpoint.
        return ResumableDataLoader(dataset, generator=self._shuffle_generator, **common)

    def _split_indices(self, num_samples: int) -> tuple[list[int], list[int]]:
        # A fresh generator per split: the split depends on the seed alone, not on what
        # else drew random numbers before.
        generator = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(num_samples, generator=generator).tolist()
        num_val = int(num_samples * self.val_fraction)
        if self.val_fraction > 0:
            num_val = max(num_val, 1)
        if num_val >= num_samples:
            raise ConfigError(
                "data.val_fraction",
                self.val_fraction,
                f"a share that leaves training samples; the training set has {num_samples}",
            )
        return sorted(order[num_val:]), sorted(order[:num_val])

    def _check_against_data(self, train_dataset: Dataset, test_dataset: Dataset) -> None:
        # The declared values feed model construction (e.g. the classifier width) before any
        # data is read, so a wrong value would otherwise surface as a cryptic shape or
        # index error deep inside training.
        if _size(train_dataset) == 0:
            raise ConfigError("data", type(self).__name__, "a dataset with training samples")
        labels = torch.cat([_labels_of(train_dataset), _labels_of(test_dataset)])
        smallest, largest = int(labels.min()), int(labels.max())
        if smallest < 0:
            raise ConfigError("data.labels", smallest, "labels >= 0")
        if largest + 1 != self._num_classes:
            raise ConfigError(
                "data.num_classes",
                self._num_classes,
                f"{largest + 1}: the data's labels run from {smallest} to {largest}",
            )
        sample_shape = tuple(train_dataset[0][0].shape)
        if sample_shape != self._input_shape:
            raise ConfigError(
                "data.input_shape",
                self._input_shape,
                f"{sample_shape}: the shape of one sample in the data",
            )

    @staticmethod
    def _require(dataset: DatasetT | None) -> DatasetT:
        if dataset is None:
            raise RuntimeError("call setup() first: the data is loaded there")
        return dataset


def _size(dataset: Dataset) -> int:
    # Every dataset here is map-style and has a length; torch's `Dataset` type does not declare
    # `__len__` (iterable datasets may lack one), so the type checker is told.
    return len(cast(Sized, dataset))


def _labels_of(dataset: Dataset) -> torch.Tensor:
    labels = getattr(dataset, "labels", None)
    if isinstance(labels, torch.Tensor):
        return labels.reshape(-1).long()
    # Fallback for datasets without a labels tensor: reads every sample once.
    return torch.as_tensor([int(dataset[index][1]) for index in range(_size(dataset))])


class IndexedDataset(Dataset):
    """`(input, label, index)`: the sample's position, for terms with per-sample state."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return _size(self.dataset)

    def __getitem__(self, index: int) -> tuple:
        inputs, label = self.dataset[index]
        return inputs, label, index
