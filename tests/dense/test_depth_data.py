"""Depth PNG units (``depth_scale``), 8-bit depth refused, and EXIF orientation of dense maps."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from densecnn.data import DataError
from densecnn.data.dense import (
    DenseFolderDataset,
    decode_normals,
    encode_normals,
    read_depth_png,
    read_normals_png,
    rotate_normals,
)
from tasks.datamodules.dense import DenseDataModule

RAW = np.array([[0, 256, 512, 1000], [2560, 5120, 20000, 65535]], dtype=np.uint16)


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def _split(root, name="a", rgb_size=(2, 4), depth=RAW, rgb_suffix=".png", rgb_exif=None, depth_exif=None):
    split = root / "val"
    (split / "rgb").mkdir(parents=True, exist_ok=True)
    (split / "depth").mkdir(exist_ok=True)
    rgb = np.random.default_rng(0).integers(0, 255, (*rgb_size, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(split / "rgb" / f"{name}{rgb_suffix}", **({"exif": _exif(rgb_exif)} if rgb_exif else {}))
    Image.fromarray(depth).save(split / "depth" / f"{name}.png", **({"exif": _exif(depth_exif)} if depth_exif else {}))
    return split


def test_depth_scale_default_millimetres_and_kitti_256(tmp_path):
    Image.fromarray(RAW).save(tmp_path / "d.png")
    # hand computation: KITTI's devkit reads depth as value / 256 metres, NYU-style PNGs as value / 1000
    np.testing.assert_allclose(read_depth_png(tmp_path / "d.png"), RAW / 1000.0, rtol=1e-6)
    kitti = read_depth_png(tmp_path / "d.png", 256.0)
    assert kitti[0, 1] == 1.0 and kitti[1, 1] == 20.0
    np.testing.assert_allclose(kitti, RAW / 256.0, rtol=1e-6)


def test_datamodule_depth_scale_reaches_the_samples(tmp_path):
    _split(tmp_path)
    for scale in (1000.0, 256.0):
        dm = DenseDataModule(str(tmp_path), maps=["depth"], image_size=(2, 4), depth_scale=scale)
        dm.setup("validate")
        np.testing.assert_allclose(dm.val_set[0]["depth"].numpy(), RAW / scale, rtol=1e-6)


def test_depth_scale_must_be_positive(tmp_path):
    with pytest.raises(DataError, match="depth_scale"):
        DenseFolderDataset(_split(tmp_path), maps=["depth"], depth_scale=0)


def test_uint8_depth_png_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "eight_bit.png"
    Image.fromarray(np.full((3, 3), 200, dtype=np.uint8)).save(path)
    with pytest.raises(DataError, match=r"eight_bit\.png.*16-bit.*uint8.*8-bit"):
        read_depth_png(path)


def test_exif_rotated_jpeg_and_tagged_depth_stay_aligned(tmp_path):
    # a phone photo stored 4 wide x 2 high with orientation 6 ("turn 90 degrees clockwise to display"), its
    # depth PNG stored in the same layout with the same tag
    split = _split(tmp_path, rgb_size=(2, 4), rgb_suffix=".jpg", rgb_exif=6, depth_exif=6)
    sample = DenseFolderDataset(split, maps=["depth"]).load(0)
    assert sample.rgb.shape[:2] == (4, 2)
    np.testing.assert_allclose(sample.depth, np.rot90(RAW, -1) / 1000.0, rtol=1e-6)


@pytest.mark.parametrize("size", [(4, 4), (2, 4)])
def test_exif_rotated_jpeg_with_untagged_depth_is_refused(tmp_path, size):
    depth = np.ones(size, dtype=np.uint16) * 1000
    split = _split(tmp_path, rgb_size=size, depth=depth, rgb_suffix=".jpg", rgb_exif=6)
    with pytest.raises(DataError, match=r"a\.jpg: EXIF orientation 6 .*depth/a\.png has orientation 1"):
        DenseFolderDataset(split, maps=["depth"])[0]


def test_exif_rotated_normals_turn_their_vectors(tmp_path):
    rng = np.random.default_rng(1)
    normals = rng.normal(size=(3, 5, 3)).astype(np.float32)
    normals[..., 2] = -np.abs(normals[..., 2]) - 0.5
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    stored = encode_normals(normals)
    Image.fromarray(stored).save(tmp_path / "n.png", exif=_exif(6))
    # orientation 6 shows the pixels turned 90 degrees clockwise, i.e. -90 in rotate_normals' convention
    expected = rotate_normals(np.rot90(decode_normals(stored), -1), -90.0)
    np.testing.assert_allclose(read_normals_png(tmp_path / "n.png"), expected, atol=1e-6)
