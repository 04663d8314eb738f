"""A shuffled training loader whose order a resumed run replays exactly.

Each epoch's order (and the worker seeds) comes from the shuffle generator reseeded with
(seed, epoch index), so the order is a function of the epoch alone. Resuming has two cases:

- from a mid-epoch checkpoint, Lightning restores this loader's `state_dict()` (the epoch index
  and the number of batches already trained on): the epoch is replayed and those batches
  skipped, and from then on the loader counts epochs itself;
- from a checkpoint taken at an epoch's end, Lightning restores no loader state but calls
  `set_epoch` on the sampler, which gives the index.

Without this, a resumed run trains on a different order than the uninterrupted one and drifts
from it (weights, and with them pruning masks and quantization ranges).
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import Any, cast

import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

_EPOCH_STRIDE = 1_000_003  # seeds of consecutive epochs stay far apart


class EpochRandomSampler(RandomSampler):
    """RandomSampler that takes Lightning's epoch number (`set_epoch`) unless a restored
    loader state already says which epoch this is."""

    def __init__(self, dataset: Dataset, generator: torch.Generator) -> None:
        super().__init__(cast(Sized, dataset), generator=generator)  # map-style: has a len
        self.epoch = 0
        self.follow_set_epoch = True

    def set_epoch(self, epoch: int) -> None:
        # After a restore from a checkpoint written when a fit stopped mid-epoch, Lightning
        # counts that epoch as finished and its numbers run one ahead of the order's.
        if self.follow_set_epoch:
            self.epoch = epoch


class ResumableDataLoader(DataLoader):
    def __init__(
        self,
        dataset: Dataset,
        *args: Any,
        generator: torch.Generator,
        shuffle: bool = True,
        **kwargs: Any,
    ) -> None:
        # `shuffle` stays an argument: under DDP Lightning rebuilds the loader with a
        # DistributedSampler (which shuffles by seed and epoch) and shuffle=False.
        if shuffle and kwargs.get("sampler") is None and kwargs.get("batch_sampler") is None:
            kwargs["sampler"] = EpochRandomSampler(dataset, generator)
            shuffle = False
        kwargs.update(shuffle=shuffle, generator=generator)
        super().__init__(dataset, *args, **kwargs)
        self.seed = int(generator.initial_seed())
        self._yielded = 0
        self._exhausted = False
        self._skip = 0
        self._epoch: int | None = None  # the epoch being iterated

    @property
    def _epoch_sampler(self) -> EpochRandomSampler | None:
        return self.sampler if isinstance(self.sampler, EpochRandomSampler) else None

    # A generator, not a `_BaseDataLoaderIter`: it wraps the parent's iterator to count and skip
    # batches, and Lightning only iterates it.
    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        sampler = self._epoch_sampler
        if sampler is not None:
            # The sampler and the worker seeds draw from the generator when iteration starts,
            # so reseeding here fixes the whole epoch. Lightning stops at len() without
            # exhausting the iterator, so the next epoch's index is set now.
            self._epoch = sampler.epoch
            sampler.epoch += 1
            self.generator.manual_seed(self.seed + _EPOCH_STRIDE * self._epoch)
        skip, self._skip = self._skip, 0
        self._yielded, self._exhausted = skip, False
        for index, batch in enumerate(super().__iter__()):
            if index < skip:
                continue
            self._yielded += 1
            yield batch
        self._exhausted = True

    def state_dict(self) -> dict[str, Any]:
        # Lightning takes the next batch only when it trains on it (it knows the epoch's end
        # from len()), so every batch yielded so far has been trained on.
        finished = self._exhausted or self._yielded >= len(self)
        skip = 0 if finished else self._yielded
        sampler = self._epoch_sampler
        if sampler is None:  # DDP: the DistributedSampler orders by its own seed and epoch
            return {"skip": skip}
        if self._epoch is None:
            return {"epoch": sampler.epoch, "skip": 0}
        return {"epoch": self._epoch + 1 if finished else self._epoch, "skip": skip}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._skip = int(state["skip"])
        sampler = self._epoch_sampler
        if sampler is not None and "epoch" in state:  # older checkpoints only had "skip"
            sampler.epoch = int(state["epoch"])
            sampler.follow_set_epoch = False
