"""Reproducible data: every random draw made while producing sample ``i`` of epoch ``e`` comes from a seed derived
from ``(run seed, e, i)`` alone.

A DataLoader worker's random state depends on how many workers there are and which of them gets an item, so
augmentations drawn from it change with ``num_workers``. Here the sampler hands each index to the dataset with
its own seed (``EpochSampler`` yields ``(index, seed)`` pairs), and ``SeededDataset`` produces the item with
torch's, numpy's and Python's global generators and the albumentations pipelines seeded from it. The result is
the same for any ``num_workers``, for persistent workers (the epoch travels with the index, not in worker
state), and when a run resumes in the middle of an epoch (``EpochSampler.skip``).

The global generators are restored after each item, so loading data in the main process (``num_workers: 0``)
does not shift the draws the model makes (dropout, region sampling).
"""
from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset
from torch.utils.data.distributed import DistributedSampler


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for sample ``index`` in ``epoch`` of a run seeded with ``seed`` (numpy's SeedSequence mixes
    the three, so neighbouring indices or epochs give unrelated streams)."""
    state = np.random.SeedSequence([seed % 2**64, epoch % 2**64, index % 2**64]).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))


@contextmanager
def seeded_global_rngs(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator, numpy's and Python's global generators with ``seed``; restore them after."""
    saved = torch.get_rng_state(), np.random.get_state(), random.getstate()
    torch.default_generator.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(saved[0])
        np.random.set_state(saved[1])
        random.setstate(saved[2])


def _pipelines(dataset: Any) -> list[Any]:
    """The dataset's albumentations pipelines (they carry generators of their own): attributes with
    ``set_random_seed``, looked up on the dataset and on datasets it wraps."""
    found, seen, todo = [], set(), [dataset]
    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        for value in vars(obj).values() if hasattr(obj, "__dict__") else ():
            if callable(getattr(value, "set_random_seed", None)):
                found.append(value)
            elif isinstance(value, Dataset):
                todo.append(value)
    return found


class SeededDataset(Dataset):
    """``dataset`` whose item ``(index, seed)`` is produced under ``seed``; a plain ``index`` uses the seed of
    ``(base_seed, epoch 0, index)``. Other attributes are those of the wrapped dataset."""

    def __init__(self, dataset: Dataset, base_seed: int = 0):
        self.dataset = dataset
        self.base_seed = int(base_seed)
        self._pipelines = _pipelines(dataset)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: int | tuple[int, int]) -> Any:
        index, seed = item if isinstance(item, tuple) else (item, sample_seed(self.base_seed, 0, item))
        with seeded_global_rngs(seed):
            for pipeline in self._pipelines:
                pipeline.set_random_seed(seed % 2**32)
            return self.dataset[index]

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)


class EpochSampler(DistributedSampler):
    """``DistributedSampler`` (its shuffle is a function of ``seed + epoch``; one replica when not distributed)
    that yields ``(index, sample_seed(seed, epoch, index))`` and can start part-way into an epoch: ``skip``
    drops the first samples of the next iteration (a run resumed mid-epoch), once."""

    def __init__(self, dataset: Dataset, *, shuffle: bool, seed: int, num_replicas: int = 1, rank: int = 0,
                 drop_last: bool = False):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.skip = 0  # a skip belongs to the epoch it was loaded for
        super().set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(super().__iter__())
        skip, self.skip = self.skip, 0
        for index in indices[skip:]:
            yield index, sample_seed(self.seed, self.epoch, index)
