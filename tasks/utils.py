"""Small helpers shared by the Lightning layer."""
from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger


def local_log_dir(trainer: pl.Trainer) -> Path:
    """The run's log directory as this process sees it, without a collective call.

    ``Trainer.log_dir`` broadcasts rank zero's value, so calling it from code that only rank zero runs
    deadlocks DDP. Rank zero's own answer is the authoritative one; use this wherever only rank zero writes.
    """
    if trainer.loggers:
        logger = trainer.loggers[0]
        path = logger.log_dir if isinstance(logger, (TensorBoardLogger, CSVLogger)) else logger.save_dir
        if path is not None:
            return Path(path)
    return Path(trainer.default_root_dir)
