"""scikit-learn's bundled 8x8 handwritten digits: tiny, offline, good for fast runs."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from distill.data.base import ClassificationDataModule, TensorClassificationDataset
from distill.errors import ConfigError
from distill.validate import require_real

NUM_CLASSES = 10
IMAGE_SIZE = 8
MAX_PIXEL_VALUE = 16.0  # the dataset's pixels are counts in [0, 16]


class DigitsDataModule(ClassificationDataModule):
    """The UCI optical digits shipped with scikit-learn (1797 images, 10 classes).

    Inputs are float32 of shape ``(1, 8, 8)`` scaled to ``[0, 1]``. The test set is a
    stratified split seeded by ``seed``, so it is the same on every run.

    Args:
        test_fraction: share of the 1797 images held out as the test set, in ``(0, 1)``.
        num_classes: declared number of classes (checked against the data; 10).
        input_shape: declared input shape (checked against the data; ``(1, 8, 8)``).
        **kwargs: the other arguments of :class:`ClassificationDataModule`.
    """

    def __init__(
        self,
        test_fraction: float = 0.2,
        num_classes: int = NUM_CLASSES,
        input_shape: tuple[int, ...] = (1, IMAGE_SIZE, IMAGE_SIZE),
        **kwargs: Any,
    ) -> None:
        super().__init__(num_classes=num_classes, input_shape=input_shape, **kwargs)
        self.test_fraction = require_real(
            "data.test_fraction",
            test_fraction,
            minimum=0,
            maximum=1,
            min_inclusive=False,
            max_inclusive=False,
            allowed="a number in (0, 1)",
        )

    def load_datasets(self) -> tuple[Dataset, Dataset]:
        """Load the bundled digits and split off the test set."""
        # Imported here so that importing distill.data does not load scikit-learn.
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        inputs = torch.tensor(digits.data, dtype=torch.float32) / MAX_PIXEL_VALUE
        inputs = inputs.reshape(-1, 1, IMAGE_SIZE, IMAGE_SIZE)
        labels = torch.tensor(digits.target, dtype=torch.int64)
        indices = list(range(len(labels)))
        try:
            # Stratified, so every class keeps its share in both sets even for small splits.
            train_indices, test_indices = train_test_split(
                indices,
                test_size=self.test_fraction,
                stratify=labels.numpy(),
                random_state=self.seed,
            )
        except ValueError as error:  # a split too small to hold every class
            raise ConfigError(
                "data.test_fraction",
                self.test_fraction,
                f"a share that leaves every class in both sets ({error})",
            ) from error
        train_indices = torch.tensor(sorted(train_indices))
        test_indices = torch.tensor(sorted(test_indices))
        return (
            TensorClassificationDataset(inputs[train_indices], labels[train_indices]),
            TensorClassificationDataset(inputs[test_indices], labels[test_indices]),
        )
