"""Checkpoints a killed run can trust: atomic writes, mid-epoch saves, the RNG states an exact resume needs,
finding the newest readable ``last.ckpt``, and reading any checkpoint with errors that name it."""
from __future__ import annotations

import os
import random
import time
import warnings
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.trainer.states import TrainerFn

from densecnn.errors import UserError


class CheckpointError(UserError):
    """A checkpoint that cannot be read, or does not belong to the task (class count, backbone) it is given to."""


def is_local(path: Any) -> bool:
    """Whether a checkpoint path is on the local filesystem (a plain path or ``file://``).

    Args:
        path: a path or URL.
    """
    return "://" not in str(path) or str(path).startswith("file://")


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A Lightning checkpoint (local path, fsspec URL or http URL) read without unpickling arbitrary objects;
    a missing, truncated or foreign file raises ``CheckpointError`` naming it."""
    from lightning_fabric.utilities.cloud_io import _load

    try:
        if is_local(path):
            local = str(path).removeprefix("file://")
            if not Path(local).is_file():
                raise CheckpointError(f"{path}: checkpoint not found")
            checkpoint = torch.load(local, map_location="cpu", weights_only=True, mmap=True)
        else:
            checkpoint = _load(str(path), map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as err:  # noqa: BLE001  (a truncated zip, a pickle, HTML: the same clear message)
        raise CheckpointError(f"{path}: not a readable densecnn/Lightning checkpoint (truncated or another "
                              f"format: {str(err).splitlines()[0] if str(err) else type(err).__name__})") from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path}: not a Lightning checkpoint (no 'state_dict'); to start a task from plain "
                              f"backbone weights pass them as model.init_args.weights")
    return checkpoint


# ---- finding the checkpoint to resume from ------------------------------------------------------------------------
def last_checkpoint_candidates(dirs: Iterable[str | os.PathLike]) -> list[Path]:
    """Every ``last*.ckpt`` under ``dirs``, newest first."""
    found = {p.resolve() for d in dirs if d and Path(d).is_dir() for p in Path(d).rglob("last*.ckpt") if p.is_file()}
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def find_last_checkpoint(dirs: Iterable[str | os.PathLike]) -> Path | None:
    """The newest readable ``last*.ckpt`` under ``dirs``; an unreadable newer one is skipped with a warning."""
    for candidate in last_checkpoint_candidates(dirs):
        try:
            read_checkpoint(candidate)
        except CheckpointError as err:
            warnings.warn(f"skipping an unreadable checkpoint, falling back to an older one: {err}", stacklevel=2)
            continue
        return candidate
    return None


# ---- writing -----------------------------------------------------------------------------------------------------
class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a local checkpoint to a temporary file beside it, flushes it to disk and renames it over the old
    one, so a kill during a save leaves the previous checkpoint intact (Lightning's fsspec transaction writes
    in the temp folder and moves across filesystems, which is a plain copy). Remote paths use Lightning's."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if not is_local(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(str(path).removeprefix("file://"))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        """Lightning unpickles remote (http) checkpoints with ``weights_only=False`` unless told otherwise;
        a ``--ckpt_path`` URL must not run code, so ``weights_only`` is on unless the caller turns it off."""
        kwargs = {} if map_location is None else {"map_location": map_location}
        return super().load_checkpoint(path, weights_only=True if weights_only is None else weights_only, **kwargs)


def use_atomic_checkpoint_io(trainer: pl.Trainer) -> None:
    """Swap the strategy's default checkpoint writer for ``AtomicCheckpointIO`` (a user's own plugin stays)."""
    strategy = trainer.strategy
    if type(strategy.checkpoint_io) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()


# ---- default checkpoint callbacks ------------------------------------------------------------------------------
def is_lightning_default_checkpoint(callback: Any) -> bool:
    """Whether ``callback`` is the plain ``ModelCheckpoint()`` Lightning adds when the user configured none."""
    return (type(callback) is ModelCheckpoint and callback.monitor is None and callback.dirpath is None
            and callback.filename is None and callback.save_last is None and callback.save_top_k == 1
            and callback._every_n_train_steps == 0 and callback._train_time_interval is None
            and callback._every_n_epochs == 1)


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt``, always current: rewritten at the end of every training epoch (after its validation) and,
    inside an epoch, every ``every_n_minutes`` of training and/or every ``every_n_steps`` optimizer steps, so a
    killed run resumed with ``--ckpt_path last`` loses at most that much.

    It is the only writer of ``last.ckpt``. Lightning's own ``save_last`` rewrites it at a validation only
    when a new top-k checkpoint was saved (a run that stops improving keeps an old one), and once more at the
    end of training, after weight averaging (EMA) has swapped the average into the model, so a resume would
    continue from the average instead of the trained weights.
    """

    def __init__(self, every_n_minutes: float | None = None, every_n_steps: int | None = None,
                 dirpath: str | None = None):
        super().__init__(dirpath=dirpath, save_top_k=0, save_last=True, enable_version_counter=False)
        self.every_n_seconds = every_n_minutes * 60 if every_n_minutes else None
        self.every_n_steps = every_n_steps
        self._last_save_time = time.monotonic()
        self._last_saved_step = -1

    @property
    def state_key(self) -> str:
        return self._generate_state_key(every_n_seconds=self.every_n_seconds, every_n_steps=self.every_n_steps)

    def _fitting(self, trainer: pl.Trainer) -> bool:
        return trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking and not trainer.fast_dev_run

    def _save(self, trainer: pl.Trainer) -> None:
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        self._last_save_time = time.monotonic()
        self._last_saved_step = trainer.global_step

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_save_time = time.monotonic()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if not self._fitting(trainer) or trainer.global_step == self._last_saved_step:
            return  # (a batch that only accumulated gradients did not step)
        due = bool(self.every_n_steps) and trainer.global_step % self.every_n_steps == 0
        if self.every_n_seconds is not None:
            due = due or time.monotonic() - self._last_save_time >= self.every_n_seconds
            due = trainer.strategy.broadcast(due)  # clocks differ between ranks; all of them join a save
        if due:
            self._save(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._fitting(trainer):
            self._save(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The epoch's end saves (a validation inside an epoch is no reason to)."""

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The last epoch's end saved already, before any weight averaging swapped the average in."""


class BestCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` for which a monitored value of -1, the metrics' "undefined" (an epoch without any
    ground truth: ``densecnn.metrics.detection.UNDEFINED``), ranks worst, as NaN does in Lightning, instead of
    best for an error that is minimised (depth rmse, normals angle)."""

    def _monitor_candidates(self, trainer: pl.Trainer) -> dict[str, torch.Tensor]:
        from densecnn.metrics.detection import UNDEFINED

        candidates = super()._monitor_candidates(trainer)
        value = candidates.get(self.monitor)
        if isinstance(value, torch.Tensor) and value.numel() == 1 and float(value) == UNDEFINED:
            candidates[self.monitor] = torch.tensor(float("nan"))
        return candidates


def default_checkpoints(monitor: str, mode: str, every_n_minutes: float | None,
                        every_n_steps: int | None) -> list[ModelCheckpoint]:
    """The best checkpoint by ``monitor``, and ``last.ckpt`` kept current by ``LastCheckpoint``."""
    return [BestCheckpoint(monitor=monitor, mode=mode, filename="best-epoch{epoch:03d}",
                           auto_insert_metric_name=False),
            LastCheckpoint(every_n_minutes, every_n_steps)]


# ---- random states -----------------------------------------------------------------------------------------------
def collect_rng_states() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and Python global generator states, as tensors and plain types that
    ``torch.load(weights_only=True)`` reads back."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                              "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                                        "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Restore the torch, Python, numpy (and CUDA) generator states saved in a checkpoint, so a resumed run
    continues with the same random draws as the uninterrupted one.

    Args:
        states: the saved states.
    """
    torch.set_rng_state(states["torch"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
