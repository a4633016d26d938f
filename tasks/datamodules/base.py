"""What every densecnn DataModule shares: the loaders and a DDP-correct evaluation sampler."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytorch_lightning as pl
import torch.distributed as dist
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset

from densecnn.data import DataError


class BaseDataModule(pl.LightningDataModule):
    def __init__(self, root: str, batch_size: int = 32, num_workers: int = 0, pin_memory: bool = False,
                 collate_fn: Callable | None = None):
        super().__init__()
        self.root = Path(root)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.collate_fn = collate_fn

    def check_root(self, hint: str = "") -> None:
        if not self.root.is_dir():
            raise DataError(f"data.init_args.root: {self.root} does not exist{hint}")

    def _loader(self, dataset: Dataset, *, shuffle: bool, sampler=None) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle if sampler is None else False,
                          sampler=sampler, num_workers=self.num_workers, pin_memory=self.pin_memory,
                          persistent_workers=self.num_workers > 0, collate_fn=self.collate_fn)

    def train_loader(self, dataset: Dataset) -> DataLoader:
        return self._loader(dataset, shuffle=True)

    def eval_loader(self, dataset: Dataset) -> DataLoader:
        """Under DDP every sample is evaluated exactly once: Lightning's default DistributedSampler pads the
        dataset with duplicates to divide it evenly, which would skew validation and test metrics."""
        sampler = None
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            sampler = UnrepeatedDistributedSampler(dataset, num_replicas=dist.get_world_size(),
                                                   rank=dist.get_rank(), shuffle=False)
        return self._loader(dataset, shuffle=False, sampler=sampler)

    # Subclasses build ``train_set``, ``val_set``, ``test_set`` and ``predict_set`` in ``setup``.
    def train_dataloader(self) -> DataLoader:
        return self.train_loader(self.train_set)

    def val_dataloader(self) -> DataLoader:
        return self.eval_loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self.eval_loader(self.test_set)

    def predict_dataloader(self) -> DataLoader:
        return self.eval_loader(self.predict_set)
