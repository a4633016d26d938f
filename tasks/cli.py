"""``python -m densecnn {fit,validate,test,predict} --config C.yaml``: stock LightningCLI.

Model and data are chosen in YAML by class (``class_path: ClassificationTask``; short names resolve among
the classes ``tasks`` exports). Defaults added here: seed 42, the resolved config saved in each run
directory, and ``fit --ckpt_path last`` resuming from the newest ``last.ckpt`` under the run root.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.cli import LightningCLI

import tasks  # noqa: F401  (registers the task and DataModule classes for short class names)
from tasks.base import BaseTask


def find_last_checkpoint(root: str | Path) -> Path | None:
    """The most recently written ``last*.ckpt`` below ``root`` (each run writes to a new version folder)."""
    candidates = [p for p in Path(root).rglob("last*.ckpt") if p.is_file()]
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None


class DenseCNNCLI(LightningCLI):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("seed_everything_default", 42)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("parser_kwargs", {"description": "densecnn: train, evaluate and predict with the papers' CNNs."})
        super().__init__(BaseTask, pl.LightningDataModule, *args, **kwargs)

    def before_fit(self) -> None:
        config = self.config_init[self.subcommand]
        if config.get("ckpt_path") == "last":
            last = find_last_checkpoint(self.trainer.default_root_dir)
            if last is not None:
                print(f"resuming from {last}")
                config["ckpt_path"] = str(last)


def main(args: list[str] | None = None) -> DenseCNNCLI:
    return DenseCNNCLI(args=args if args is not None else sys.argv[1:])
