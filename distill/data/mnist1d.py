"""MNIST-1D, generated offline: 10 classes of 40-step 1-D signals.

Greydanus & Kobak, "Scaling Down Deep Learning with MNIST-1D", ICML 2024.
"""

from __future__ import annotations

import functools
import random
import threading
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from distill.data.base import ClassificationDataModule, TensorClassificationDataset
from distill.errors import ConfigError
from distill.validate import require_int, require_real

NUM_CLASSES = 10
SEQUENCE_LENGTH = 40

# mnist1d reseeds the process-wide RNGs; two threads generating at once would interleave them.
_GENERATION_LOCK = threading.Lock()


class MNIST1DDataModule(ClassificationDataModule):
    """MNIST-1D generated in-process with the reference generator; nothing is downloaded.

    Inputs are float32 of shape ``(1, 40)``, labels 0-9.

    Args:
        num_samples: samples to generate in total (train + test); rounded down to a
            multiple of 10, since the generator makes equally many per class.
        train_split: share of the generated samples that forms the training set.
        generation_seed: seed of the generator; 42 reproduces the published dataset.
        num_classes: declared number of classes (checked against the data; 10).
        input_shape: declared input shape (checked against the data; ``(1, 40)``).
        **kwargs: the other arguments of :class:`ClassificationDataModule`.
    """

    def __init__(
        self,
        num_samples: int = 5000,
        train_split: float = 0.8,
        generation_seed: int = 42,
        num_classes: int = NUM_CLASSES,
        input_shape: tuple[int, ...] = (1, SEQUENCE_LENGTH),
        **kwargs: Any,
    ) -> None:
        super().__init__(num_classes=num_classes, input_shape=input_shape, **kwargs)
        num_samples = require_int("data.num_samples", num_samples, minimum=20)
        train_split = require_real("data.train_split", train_split, allowed="a number in (0, 1)")
        num_generated = (num_samples // NUM_CLASSES) * NUM_CLASSES
        num_train = int(num_generated * train_split)  # how make_dataset splits
        if not 0 < train_split < 1 or num_train == 0 or num_train == num_generated:
            raise ConfigError(
                "data.train_split", train_split, "a number in (0, 1) leaving train and test samples"
            )
        self.generation_seed = require_int(
            "data.generation_seed",
            generation_seed,
            minimum=0,
            maximum=2**32 - 1,  # what numpy's global seed accepts
            allowed="an integer in [0, 2**32)",
        )
        self.num_samples = num_samples
        self.train_split = train_split

    def load_datasets(self) -> tuple[Dataset, Dataset]:
        """Generate (or reuse) the arrays and wrap them as datasets."""
        train_x, train_y, test_x, test_y = generate_mnist1d(
            self.num_samples, self.train_split, self.generation_seed
        )
        return _to_dataset(train_x, train_y), _to_dataset(test_x, test_y)


@functools.lru_cache(maxsize=8)
def generate_mnist1d(
    num_samples: int, train_split: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Generate MNIST-1D as read-only arrays ``(train_x, train_y, test_x, test_y)``.

    ``*_x`` has shape ``(n, 40)``, ``*_y`` shape ``(n,)``. Memoized per argument tuple
    (generation takes seconds); the arrays are read-only because every caller shares them.
    The global ``random`` and NumPy RNG states are the same after the call as before.
    """
    # Imported here so that importing distill.data stays cheap (mnist1d pulls in requests).
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    args.train_split = train_split
    args.seed = seed
    with _GENERATION_LOCK:
        # make_dataset seeds the global RNGs for its own reproducibility; put them back so
        # that generating data does not silently change the randomness of everything after.
        python_state = random.getstate()
        numpy_state = np.random.get_state()
        try:
            dataset = make_dataset(args)
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)
    arrays = (
        np.asarray(dataset["x"], dtype=np.float32),
        np.asarray(dataset["y"], dtype=np.int64),
        np.asarray(dataset["x_test"], dtype=np.float32),
        np.asarray(dataset["y_test"], dtype=np.int64),
    )
    for array in arrays:
        array.setflags(write=False)
    return arrays


def _to_dataset(inputs: np.ndarray, labels: np.ndarray) -> TensorClassificationDataset:
    # torch.tensor copies, so the tensors are writable without touching the shared arrays.
    return TensorClassificationDataset(
        torch.tensor(inputs).unsqueeze(1),  # add the channel dimension: (n, 1, 40)
        torch.tensor(labels),
    )
