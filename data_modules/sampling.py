"""The training order: a function of (seed, epoch), and a loader Lightning checkpoints mid-epoch, so a
resumed run sees exactly the batches the interrupted one would have seen."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler


def rank_seed(seed: int, rank: int) -> int:
    """A 63-bit seed for process `rank` of a run seeded with `seed` (independent streams per rank)."""
    return int(np.random.SeedSequence([int(seed), int(rank)]).generate_state(1, dtype=np.uint64)[0] >> 1)


def global_seed() -> int:
    """The run's seed as `seed_everything` recorded it (PL_GLOBAL_SEED), 0 if it was never called."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


class EpochRandomSampler(RandomSampler):
    """A random order that is a function of (seed, epoch): the permutation `DistributedSampler` uses with
    one process (`randperm(n)` from a generator seeded with seed + epoch).

    Lightning calls `set_epoch` at every epoch start; under DDP it swaps this sampler for a
    `DistributedSampler` with the same seed (it is a `RandomSampler`), which is deterministic too.

    Args:
        data_source: the dataset.
        seed: default: the run's seed (`PL_GLOBAL_SEED`, set by `seed_everything`), read when built.
    """

    def __init__(self, data_source, seed: int | None = None):
        super().__init__(data_source)
        self.seed = global_seed() if seed is None else int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(len(self.data_source), generator=g).tolist())


class ResumableDataLoader(DataLoader):
    """A DataLoader whose position inside an epoch is saved in checkpoints and restored on resume.

    Lightning stores `state_dict()` (the epoch and the number of batches served in it) in the fit loop's
    checkpoint state and calls `load_state_dict` before iterating again; the next pass over the same
    epoch then skips the batches already served. With `shuffle=True` (and no sampler) the order comes
    from an `EpochRandomSampler`, so the skipped prefix is the one the interrupted run consumed.
    Skipping draws the batches and drops them: cheap for index datasets (`IndexDataset`), a full read
    otherwise. Only the training loader needs this (Lightning does not resume evaluation loaders).

    Args:
        seed: seeds the order and the worker base seeds; default: the run's seed (`PL_GLOBAL_SEED`).
        Others: as `DataLoader` (`shuffle=True` without a sampler uses an `EpochRandomSampler`).
    """

    def __init__(self, dataset, batch_size: int | None = 1, shuffle: bool | None = None, sampler=None,
                 *, seed: int | None = None, **kwargs):
        self.seed = global_seed() if seed is None else int(seed)
        if shuffle and sampler is None:
            sampler, shuffle = EpochRandomSampler(dataset, self.seed), None
        super().__init__(dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler, **kwargs)
        self._served = 0
        self._resume: tuple[int | None, int] | None = None

    def _epoch(self) -> int | None:
        epoch = getattr(self.sampler, "epoch", None)
        return int(epoch) if epoch is not None else None

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self._epoch(), "served": self._served}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume = (state["epoch"], int(state["served"]))

    def __iter__(self):
        return self._batches()

    def _batches(self):
        # a generator: runs at the first next(), after Lightning has called set_epoch
        skip, self._served = 0, 0
        if self._resume is not None:
            epoch, served = self._resume
            self._resume = None
            if epoch == self._epoch() and served < len(self):
                skip = served
        # A DataLoader iterator draws a worker base seed from `self.generator`, or else from the global
        # RNG, which would shift the model's random stream by one draw on resume: seed it per epoch.
        self.generator = torch.Generator().manual_seed(rank_seed(self.seed, self._epoch() or 0))
        for batch in super().__iter__():
            self._served += 1
            if self._served > skip:
                yield batch
