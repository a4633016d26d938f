"""Soak: does memory grow over a long run? Trains the classification quickstart for ``--steps`` optimizer steps
through the CLI (DataLoader workers, per-sample seeding, validation every epoch, checkpoints, TensorBoard,
pictures) and samples the resident memory of the main process plus its worker processes every ``--every``
steps. Reports the growth from the end of the warm-up to the end (target: under 5%).

    python benchmarks/soak.py                      # 1,200 steps, 2 workers
    python benchmarks/soak.py --steps 5000 --workers 4
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import pytorch_lightning as pl

PAGE = os.sysconf("SC_PAGE_SIZE")


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found + [g for c in found for g in _children(c)]


def rss_mib(pid: int | None = None) -> float:
    """Resident memory of ``pid`` (default: this process) and all its descendants, in MiB."""
    pid = pid or os.getpid()
    total = 0
    for p in [pid, *_children(pid)]:
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * PAGE
        except OSError:
            continue  # a worker that just exited
    return total / 2**20


class MemorySampler(pl.Callback):
    def __init__(self, every: int):
        self.every = every
        self.samples: list[tuple[int, float]] = []

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step % self.every == 0:
            self.samples.append((trainer.global_step, rss_mib()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--warmup", type=int, default=200, help="steps before the reference measurement")
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--images-per-class", type=int, default=100)
    args = parser.parse_args()

    from densecnn.data.synthetic import write_classification_dataset
    from tasks.cli import DenseCNNCLI

    work = Path(tempfile.mkdtemp(prefix="densecnn-soak-"))
    write_classification_dataset(work / "data", image_size=32,
                                 per_class={"train": args.images_per_class, "val": 10, "test": 2})
    sampler = MemorySampler(args.every)
    run = DenseCNNCLI(trainer_defaults={"callbacks": [sampler]}, args=["fit", "--config", "configs/quickstart/classification.yaml", "--data.init_args.root",
               str(work / "data"), "--data.init_args.num_workers", str(args.workers), "--data.init_args.batch_size",
               "16", "--trainer.default_root_dir", str(work / "runs"), "--trainer.max_steps", str(args.steps),
               "--trainer.max_epochs", "-1", "--trainer.enable_progress_bar", "false", "--trainer.accelerator",
               "cpu", "--model.init_args.checkpoint_every_n_steps", "100"])
    del run  # keep the trainer from holding the loaders while we report
    print("step   RSS (MiB, main + workers)")
    for step, mib in sampler.samples:
        print(f"{step:5d}  {mib:8.1f}")
    reference = next(mib for step, mib in sampler.samples if step >= args.warmup)
    final = sampler.samples[-1][1]
    print(f"\nRSS after {args.warmup} warm-up steps: {reference:.1f} MiB; after {sampler.samples[-1][0]} steps: "
          f"{final:.1f} MiB; growth {100 * (final - reference) / reference:+.2f}% (target < 5%)")


if __name__ == "__main__":
    main()
