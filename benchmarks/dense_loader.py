"""Dense loader throughput with normals computed from depth: samples/s without the normals cache (the plane
fits run on every visit), with a cold cache (first epoch: computed and written) and a warm one (later epochs:
read back), side by side on generated 640x480 frames (NYU's size) through the evaluation transform.

    python benchmarks/dense_loader.py                  # 6 generated samples in a temp folder
    python benchmarks/dense_loader.py --samples 12 --size 480 640

Figures compare with each other; absolute numbers depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from densecnn.data.dense import DenseAugment, DenseFolderDataset, write_depth_png


def write_samples(split: Path, count: int, height: int, width: int) -> None:
    (split / "rgb").mkdir(parents=True)
    (split / "depth").mkdir()
    rng = np.random.default_rng(0)
    v, u = np.mgrid[0:height, 0:width]
    for i in range(count):
        depth = 1.5 + 2.0 * v / height + 0.5 * np.sin(u / 40.0 + i) + rng.uniform(0, 0.01, (height, width))
        write_depth_png(depth, split / "depth" / f"{i:04d}.png")
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(split / "rgb" / f"{i:04d}.png")


def samples_per_second(dataset) -> float:
    start = time.perf_counter()
    for i in range(len(dataset)):
        dataset[i]
    return len(dataset) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=6)
    parser.add_argument("--size", type=int, nargs=2, default=(480, 640), metavar=("HEIGHT", "WIDTH"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        split = Path(tmp) / "train"
        write_samples(split, args.samples, *args.size)
        transform = DenseAugment((240, 320), train=False)

        def dataset(cache: bool):
            return DenseFolderDataset(split, maps=["depth", "normals"], transform=transform, cache_normals=cache,
                                      normals_cache_dir=Path(tmp) / "cache")

        rows = [("no cache (before)", samples_per_second(dataset(False))),
                ("cold cache (1st epoch)", samples_per_second(dataset(True))),
                ("warm cache (later epochs)", samples_per_second(dataset(True)))]
    print(f"{args.samples} samples of {args.size[1]}x{args.size[0]}, maps depth+normals, 1 process")
    for name, rate in rows:
        print(f"  {name:<26} {rate:8.2f} samples/s")


if __name__ == "__main__":
    main()
