"""Small helpers shared by the Lightning layer."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger


def local_log_dir(trainer: pl.Trainer) -> Path:
    """The run's own directory for files (``metrics.json``, ``pictures/``, ``predictions/``), without a
    collective call.

    TensorBoard and CSV have their ``version_N`` folder. For other loggers (W&B, MLflow, ...) it is
    ``<save_dir>/<name>/<version>``, where Lightning's ``ModelCheckpoint`` puts their checkpoints; Lightning's
    own ``Trainer.log_dir`` would be the bare ``save_dir``, shared by every run (or the working directory).
    ``Trainer.log_dir`` is also a collective, which deadlocks DDP when only rank zero calls it; rank zero's own
    answer is the authoritative one.
    """
    if trainer.loggers:
        logger = trainer.loggers[0]
        if isinstance(logger, (TensorBoardLogger, CSVLogger)):
            return Path(logger.log_dir)
        if logger.save_dir is not None:
            version = logger.version
            version = version if isinstance(version, str) else f"version_{version}"
            return Path(str(logger.save_dir).removeprefix("file:"), str(logger.name), version)
    return Path(trainer.default_root_dir)


def send_picture_to_loggers(loggers: list, tag: str, picture: Any, step: int) -> None:
    """An HxWx3 uint8 picture to every logger that takes images: TensorBoard's ``add_image``, ``log_image`` of
    W&B/Neptune, MLflow's ``log_image`` (with a tag it accepts), at ``step``."""
    for logger in loggers:
        experiment = getattr(logger, "experiment", None)
        if hasattr(experiment, "add_image"):  # TensorBoard
            experiment.add_image(tag, picture, step, dataformats="HWC")
        elif hasattr(logger, "log_image"):  # W&B, Neptune, ...
            logger.log_image(key=tag, images=[picture], step=step)
        elif hasattr(experiment, "log_image") and getattr(logger, "run_id", None):  # MLflow
            experiment.log_image(logger.run_id, picture, key=re.sub(r"[^A-Za-z0-9_./-]+", "_", tag), step=step)
