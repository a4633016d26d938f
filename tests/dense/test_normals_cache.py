"""Normals from depth are computed once per sample and kept in an atomic on-disk cache."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from densecnn.data import dense
from densecnn.data.dense import (
    DenseFolderDataset,
    Intrinsics,
    file_identity,
    normals_from_depth,
    write_depth_png,
)

CAM = Intrinsics(fx=30.0, fy=30.0, cx=11.5, cy=7.5, width=24, height=16)


def _depth(seed: int) -> np.ndarray:
    # a tilted plane plus a box in front of it, in metres (millimetre-exact so the PNG round trip is lossless)
    v, u = np.mgrid[0:16, 0:24]
    depth = 2.0 + 0.03 * u + 0.01 * seed * v
    depth[4:9, 6:12] -= 0.5
    return np.round(depth * 1000) / 1000


@pytest.fixture
def split(tmp_path):
    split = tmp_path / "train"
    (split / "rgb").mkdir(parents=True)
    (split / "depth").mkdir()
    Image.fromarray(np.zeros((16, 24, 3), dtype=np.uint8)).save(split / "rgb" / "a.png")
    write_depth_png(_depth(1), split / "depth" / "a.png")
    return split


@pytest.fixture
def calls(monkeypatch):
    counter = {"n": 0}
    original = dense.normals_from_depth

    def counted(*args, **kwargs):
        counter["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(dense, "normals_from_depth", counted)
    return counter


def _dataset(split):
    return DenseFolderDataset(split, maps=["depth", "normals"], intrinsics=CAM)


def _entry(ds):
    depth_path = ds.map_path("depth", ds.rgb_paths[0])
    return ds.normals_cache.path_for(f"{file_identity(depth_path)}|scale={ds.depth_scale}")


def test_cached_normals_equal_computed_and_are_not_recomputed(split, calls):
    ds = _dataset(split)
    first = ds.load(0).normals
    np.testing.assert_array_equal(first, normals_from_depth(_depth(1).astype(np.float32), CAM))
    assert calls["n"] == 1
    assert _entry(ds).is_file() and _entry(ds).parent == split / ".normals_cache"
    again = _dataset(split).load(0).normals  # a new dataset (another run or worker) reads the cache
    np.testing.assert_array_equal(again, first)
    assert calls["n"] == 1


def test_changed_depth_file_invalidates_the_cache(split, calls):
    ds = _dataset(split)
    ds.load(0)
    write_depth_png(_depth(5), split / "depth" / "a.png")
    stat = os.stat(split / "depth" / "a.png")
    os.utime(split / "depth" / "a.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10 ** 9))
    changed = ds.load(0).normals
    assert calls["n"] == 2
    np.testing.assert_array_equal(changed, normals_from_depth(_depth(5).astype(np.float32), CAM))


def test_half_written_entry_is_never_read(split, calls, monkeypatch):
    ds = _dataset(split)
    expected = normals_from_depth(_depth(1).astype(np.float32), CAM)

    def killed(src, dst):  # the writer dies after writing the temporary file, before the rename
        raise KeyboardInterrupt

    replace = os.replace
    monkeypatch.setattr(dense.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        ds.load(0)
    monkeypatch.setattr(dense.os, "replace", replace)
    assert not _entry(ds).exists() and list((split / ".normals_cache").glob(".*.tmp.npy"))
    np.testing.assert_array_equal(ds.load(0).normals, expected)
    assert calls["n"] == 2  # recomputed, not taken from the temporary file
    assert _entry(ds).is_file()


def test_truncated_entry_is_recomputed(split, calls):
    ds = _dataset(split)
    good = ds.load(0).normals
    entry = _entry(ds)
    entry.write_bytes(entry.read_bytes()[:200])
    np.testing.assert_array_equal(ds.load(0).normals, good)
    assert calls["n"] == 2
    assert np.load(entry).shape == (16, 24, 3)  # and replaced by a whole one


def test_cache_off_and_cache_dir(split, calls, tmp_path):
    DenseFolderDataset(split, maps=["normals"], intrinsics=CAM, cache_normals=False).load(0)
    DenseFolderDataset(split, maps=["normals"], intrinsics=CAM, cache_normals=False).load(0)
    assert calls["n"] == 2 and not (split / ".normals_cache").exists()
    DenseFolderDataset(split, maps=["normals"], intrinsics=CAM, normals_cache_dir=tmp_path / "c").load(0)
    assert len(list((tmp_path / "c").glob("*.npy"))) == 1
