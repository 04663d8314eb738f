"""A shuffled training loader that a checkpoint can stop and resume in the middle of an epoch.

Lightning saves the `state_dict()` of a train loader that has one and restores it before it
iterates again. Without this, a run resumed from a mid-epoch checkpoint restarts the epoch with
a different order, and the resumed run drifts from the uninterrupted one (weights, and with
them pruning masks). The state is the shuffle generator as it was when the epoch began plus the
number of batches already trained on; resuming replays the same order and skips those.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader


class ResumableDataLoader(DataLoader):
    def __init__(
        self, *args: Any, generator: torch.Generator, shuffle: bool = True, **kwargs: Any
    ) -> None:
        # `shuffle` stays an argument: under DDP Lightning rebuilds the loader with a
        # DistributedSampler (which shuffles by seed and epoch) and shuffle=False.
        super().__init__(*args, shuffle=shuffle, generator=generator, **kwargs)
        self._epoch_start_state = generator.get_state()
        self._yielded = 0
        self._exhausted = False
        self._skip = 0

    def __iter__(self) -> Iterator[Any]:
        # The sampler and the worker seeds draw from the generator when iteration starts, so
        # its state here fixes the whole epoch.
        self._epoch_start_state = self.generator.get_state()
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
        if self._exhausted or self._yielded >= len(self):
            # The epoch is complete: the next one starts from the generator as it is now.
            return {"generator": self.generator.get_state(), "skip": 0}
        return {"generator": self._epoch_start_state, "skip": self._yielded}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self._skip = int(state["skip"])
