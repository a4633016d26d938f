"""Shared by the synthetic generators: atomic writing and textured backgrounds."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterable

import numpy as np


def has_files(root: str | os.PathLike, suffixes: Iterable[str]) -> bool:
    """True when ``root`` holds at least one file with one of ``suffixes`` (searched recursively)."""
    root = Path(root)
    suffixes = {s.lower() for s in suffixes}
    return root.is_dir() and any(p.suffix.lower() in suffixes for p in root.rglob("*") if p.is_file())


def write_atomically(root: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp_dir)`` and move the result to ``root`` only once it is complete, so an interrupted
    generation never leaves a half-written dataset behind. ``root`` may exist but must be empty."""
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root}: refusing to write a synthetic dataset into a non-empty folder")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        write(tmp)
        if root.exists():
            root.rmdir()
        tmp.rename(root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def textured_background(rng: np.random.Generator, height: int, width: int, base: np.ndarray) -> np.ndarray:
    """A smooth random texture around colour ``base`` (uint8 HxWx3): low-frequency blobs plus pixel noise,
    so that a model cannot find objects by looking for a flat background."""
    coarse = rng.normal(0.0, 28.0, size=(max(2, height // 8), max(2, width // 8), 3))
    ys = np.linspace(0, coarse.shape[0] - 1, height)
    xs = np.linspace(0, coarse.shape[1] - 1, width)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, coarse.shape[0] - 1), np.minimum(x0 + 1, coarse.shape[1] - 1)
    wy, wx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    smooth = ((1 - wy) * ((1 - wx) * coarse[y0][:, x0] + wx * coarse[y0][:, x1])
              + wy * ((1 - wx) * coarse[y1][:, x0] + wx * coarse[y1][:, x1]))
    noise = rng.normal(0.0, 8.0, size=(height, width, 3))
    return np.clip(base[None, None, :] + smooth + noise, 0, 255).astype(np.uint8)


def contrasting_colours(rng: np.random.Generator, min_distance: float = 120.0) -> tuple[np.ndarray, np.ndarray]:
    """A random background and foreground colour at least ``min_distance`` apart in RGB, so colour alone
    never tells a class (every class uses every colour)."""
    while True:
        bg, fg = rng.integers(0, 256, size=3), rng.integers(0, 256, size=3)
        if np.linalg.norm(bg - fg) >= min_distance:
            return bg.astype(np.float64), fg.astype(np.uint8)
