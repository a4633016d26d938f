"""Time per training step: ClassificationTask under the Lightning Trainer vs a hand-written PyTorch loop.

Same model, data, optimizer and batch size; the two alternate in one process, round after round, and the
ratio of median step times is printed (target: <= 1.05 on CPU). Each timed span starts at a batch after
the warm-up and ends after the last optimizer step, so it includes data loading and everything either loop
does between steps (for Lightning: the task's loss/accuracy metrics and logging). On a GPU both sides wait for
the device at the same two points only: before the start timestamp (the warm-up's queued kernels are not
counted) and after the last step (all timed work is finished); a wait after every step would stop the CPU from
queueing the next step while the GPU runs, and it would be charged to one side only. The first timed batch is
already on the device on both sides when the clock starts.

    python benchmarks/trainer_overhead.py --threads 1          # CPU
    python benchmarks/trainer_overhead.py --device cuda --precision bf16-mixed --channels-last
"""
from __future__ import annotations

import argparse
import statistics
import time

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from tasks import ClassificationTask


class RandomImages(Dataset):
    def __init__(self, n: int, size: int, num_classes: int):
        g = torch.Generator().manual_seed(0)
        self.images = torch.randn(n, 3, size, size, generator=g)
        self.labels = torch.randint(0, num_classes, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": self.labels[i]}


class StepTimer(pl.Callback):
    """Lightning's side of the clock: starts at batch ``warmup`` (after Lightning moved it to the device), stops
    after batch ``last``'s optimizer step, with a device synchronisation before each timestamp and nowhere else,
    as the plain loop does."""

    def __init__(self, warmup: int, last: int):
        self.warmup, self.last = warmup, last
        self.start = self.end = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup:
            self._sync(pl_module)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == self.last:
            self._sync(pl_module)
            self.end = time.perf_counter()

    @staticmethod
    def _sync(pl_module):
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()


def make_task(args) -> ClassificationTask:
    torch.manual_seed(0)
    return ClassificationTask(backbone=args.backbone, num_classes=args.num_classes, lr=0.01, momentum=0.9,
                              weight_decay=5e-4, channels_last=args.channels_last)


def loader(args) -> DataLoader:
    data = RandomImages(args.batch_size * (args.warmup + args.steps), args.image_size, args.num_classes)
    return DataLoader(data, batch_size=args.batch_size, shuffle=True, num_workers=0, drop_last=True)


def time_lightning(args) -> float:
    task = make_task(args)
    timer = StepTimer(args.warmup, args.warmup + args.steps - 1)
    trainer = pl.Trainer(max_epochs=1, accelerator=args.device, devices=1, precision=args.precision, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, callbacks=[timer])
    # channels_last: the task's option converts the weights and, on the device, each batch (as the plain loop does)
    trainer.fit(task, train_dataloaders=loader(args))
    return (timer.end - timer.start) / args.steps


def time_plain(args) -> float:
    device = torch.device("cuda" if args.device == "cuda" else "cpu")
    model = make_task(args).backbone.to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    criterion = torch.nn.CrossEntropyLoss()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16-mixed")
    model.train()
    start = 0.0
    for i, batch in enumerate(loader(args)):
        images = batch["image"].to(device, non_blocking=True)
        if args.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = batch["label"].to(device, non_blocking=True)
        if i == args.warmup:  # as StepTimer: the batch is on the device, the warm-up's kernels are finished
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        with autocast:
            loss = criterion(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / args.steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (1 gives stable figures on a loaded machine)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pl.seed_everything(0, verbose=False)

    lightning, plain = [], []
    for round_ in range(args.rounds):
        # alternate which goes first, so drift in machine load hits both equally
        order = [(time_lightning, lightning), (time_plain, plain)]
        for fn, store in (order if round_ % 2 == 0 else order[::-1]):
            store.append(fn(args))
        print(f"round {round_ + 1}: lightning {lightning[-1] * 1e3:.1f} ms/step, plain {plain[-1] * 1e3:.1f} ms/step")
    lm, pm = statistics.median(lightning), statistics.median(plain)
    images_per_s = args.batch_size / lm
    print(f"\n{args.backbone} {args.image_size}px batch {args.batch_size} on {args.device} ({args.precision}"
          f"{', channels_last' if args.channels_last else ''}), torch threads {torch.get_num_threads()}")
    print(f"median step: lightning {lm * 1e3:.2f} ms, plain loop {pm * 1e3:.2f} ms")
    print(f"fastest step: lightning {min(lightning) * 1e3:.2f} ms, plain loop {min(plain) * 1e3:.2f} ms")
    # The fastest round is the least disturbed by other load on the machine; both ratios are printed.
    print(f"overhead ratio (lightning / plain): fastest {min(lightning) / min(plain):.3f}, "
          f"median {lm / pm:.3f}   (target <= 1.05)")
    print(f"lightning throughput: {images_per_s:.1f} images/s")


if __name__ == "__main__":
    main()
