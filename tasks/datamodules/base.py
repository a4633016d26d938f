"""What every densecnn DataModule shares: reproducible, resumable loaders and a DDP-correct evaluation sampler.

* Every item is produced under a seed of its own (``densecnn.data.seeding``): the run's seed, the epoch and the
  index fix the data order and every augmentation draw, for any ``num_workers``.
* The training loader is resumable: its position in the epoch is saved in Lightning checkpoints (Lightning's
  ``state_dict``/``load_state_dict`` protocol for data loaders) and a run resumed mid-epoch continues with the
  next batch it would have trained on.
* Each loader has a generator of its own, so creating loaders and iterators never draws from torch's global
  generator (which the model's dropout and sampling use, and checkpoints restore).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterator

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from densecnn.data import DataError
from densecnn.data.seeding import EpochSampler, SeededDataset
from densecnn.data.streaming import StreamingRecords, expect_format, normalise_root, read_meta


def run_seed() -> int:
    """The run's seed: what ``seed_everything`` (the CLI's ``seed_everything``) set, else 0."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` over an ``EpochSampler`` that knows how far into its epoch it is.

    Lightning saves ``state_dict()`` with the fit loop's state and calls ``load_state_dict`` on resume; the next
    iteration then skips the batches already trained on. Iteration starts lazily, at the first batch: Lightning
    creates the iterator of a resumed epoch before it sets the sampler's epoch.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._batches_done = 0

    def __iter__(self) -> Iterator[Any]:
        sampler = self.sampler
        self._batches_done = sampler.skip // self.batch_size if isinstance(sampler, EpochSampler) else 0
        for batch in super().__iter__():
            self._batches_done += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(getattr(self.sampler, "epoch", 0)), "batches": self._batches_done,
                "batch_size": int(self.batch_size or 1)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if not isinstance(self.sampler, EpochSampler):
            return
        if state.get("batch_size") != self.batch_size:
            raise DataError(f"data.init_args.batch_size is {self.batch_size} but the checkpoint's run used "
                            f"{state.get('batch_size')}: a run resumed mid-epoch must keep its batch size")
        self.sampler.set_epoch(int(state["epoch"]))
        self.sampler.skip = int(state["batches"]) * self.batch_size


class EvalDistributedSampler(DistributedSampler):
    """Rank r evaluates samples r, r + W, r + 2W, ...: every sample exactly once (Lightning's default
    ``DistributedSampler`` pads with duplicates, which would skew validation and test metrics). Its length is
    at least one on every rank: Lightning skips the evaluation loop of a rank whose loader is empty, epoch-end
    hooks included, and the other ranks would then wait for it forever in the metrics' synchronisation. A
    rank without samples runs the loop over no batch instead."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        self.indices = list(range(rank, len(dataset), num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return max(1, len(self.indices))


class BaseDataModule(pl.LightningDataModule):
    """The LightningDataModule of every task: folder or streaming (LitData) data, loaders whose sampler seeds
    each sample from (run seed, epoch, index), evaluation samplers that visit every sample once under DDP, and a
    loader position saved in checkpoints for mid-epoch resumption.
    """
    def __init__(self, root: str, batch_size: int = 32, num_workers: int = 0, pin_memory: bool = False,
                 collate_fn: Callable | None = None, drop_last: bool | None = None, streaming: bool = False,
                 streaming_cache_dir: str | None = None):
        """
        Args:
            drop_last: drop the last incomplete training batch; ``None`` (default) drops it only when it would
                hold a single sample and the model has batch norm (whose statistics are undefined for one sample).
            streaming: ``root`` is a dataset converted by ``python -m densecnn.data.convert`` (a local folder,
                ``file://``, ``s3://`` or ``gs://`` URL; ``densecnn.data.streaming``), read by index through the
                same seeded samplers, transforms and DDP sharding as the folder path.
            streaming_cache_dir: where LitData caches the chunks of a remote root (default: its own).
        """
        super().__init__()
        self.root = Path(root)
        self.streaming = streaming
        self.stream_root = normalise_root(root)  # Path() would fold an s3:// URL's double slash
        self.streaming_cache_dir = streaming_cache_dir
        self._stream_meta: dict | None = None
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.collate_fn = collate_fn
        self.drop_last = drop_last

    def stream_meta(self, *formats: str) -> dict:
        """The converted root's ``densecnn_stream.json`` (read once), checked to hold one of ``formats``."""
        if self._stream_meta is None:
            self._stream_meta = read_meta(self.stream_root, self.streaming_cache_dir)
        expect_format(self._stream_meta, formats, self.stream_root)
        return self._stream_meta

    def stream_records(self, split: str) -> StreamingRecords:
        meta = self._stream_meta or read_meta(self.stream_root, self.streaming_cache_dir)
        return StreamingRecords(self.stream_root, split, meta, cache_dir=self.streaming_cache_dir)

    def check_root(self, hint: str = "") -> None:
        if self.streaming:
            return  # stream_meta checks a streaming root, local or remote
        if not self.root.is_dir():
            raise DataError(f"data.init_args.root: {self.root} does not exist{hint}")

    def _loader(self, dataset: Dataset, *, sampler, drop_last: bool = False, cls: type = DataLoader) -> DataLoader:
        seed = run_seed()
        return cls(SeededDataset(dataset, seed), batch_size=self.batch_size, sampler=sampler,
                   num_workers=self.num_workers, pin_memory=self.pin_memory, drop_last=drop_last,
                   persistent_workers=self.num_workers > 0, collate_fn=self.collate_fn,
                   generator=torch.Generator().manual_seed(seed))

    def _model_has_batchnorm(self) -> bool:
        model = getattr(self.trainer, "lightning_module", None) if self.trainer is not None else None
        return model is not None and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())

    def train_loader(self, dataset: Dataset) -> DataLoader:
        world_size, rank = _world()
        sampler = EpochSampler(dataset, shuffle=True, seed=run_seed(), num_replicas=world_size, rank=rank)
        drop_last = self.drop_last
        if drop_last is None:
            drop_last = len(sampler) % self.batch_size == 1 and self._model_has_batchnorm()
        return self._loader(dataset, sampler=sampler, drop_last=drop_last, cls=ResumableDataLoader)

    def eval_loader(self, dataset: Dataset) -> DataLoader:
        """Under DDP every sample is evaluated exactly once (``EvalDistributedSampler``)."""
        world_size, rank = _world()
        if world_size > 1:
            sampler = EvalDistributedSampler(dataset, num_replicas=world_size, rank=rank)
        else:
            sampler = torch.utils.data.SequentialSampler(dataset)
        return self._loader(dataset, sampler=sampler)

    # Subclasses build ``train_set``, ``val_set``, ``test_set`` and ``predict_set`` in ``setup``.
    def train_dataloader(self) -> DataLoader:
        return self.train_loader(self.train_set)

    def val_dataloader(self) -> DataLoader:
        return self.eval_loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self.eval_loader(self.test_set)

    def predict_dataloader(self) -> DataLoader:
        return self.eval_loader(self.predict_set)
