"""Dense data: file formats, normals from depth, joint augmentation, the synthetic rooms and bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from densecnn.data import DataError
from densecnn.data.dense import (DenseAugment, DenseFolderDataset, DenseSample, Intrinsics, decode_normals,
                                 encode_normals, hflip_sample, normals_from_depth, read_depth_png, read_labels_png,
                                 rotate_normals, write_depth_png, write_labels_png)
from densecnn.data.synthetic.dense import DENSE_CLASSES, DENSE_PALETTE, render_room, write_dense_dataset

CAM = Intrinsics(fx=60.0, fy=60.0, cx=31.5, cy=23.5, width=64, height=48)  # principal point at the centre


def plane_depth(normal, distance, cam=CAM):
    """Depth of the plane n.p = -distance (n facing the camera) seen through ``cam``."""
    u, v = np.meshgrid(np.arange(cam.width), np.arange(cam.height))
    rays = np.stack([(u - cam.cx) / cam.fx, (v - cam.cy) / cam.fy, np.ones_like(u, dtype=float)], -1)
    return (-distance / (rays @ np.asarray(normal, dtype=float))).astype(np.float32)


def test_depth_png_is_uint16_millimetres_with_zero_missing(tmp_path):
    depth = np.array([[0.0, 1.2344, np.nan], [65.6, 3.0, 0.0004]], dtype=np.float32)
    write_depth_png(depth, tmp_path / "d.png")
    raw = np.asarray(Image.open(tmp_path / "d.png"))
    assert raw.dtype == np.uint16 and raw.tolist() == [[0, 1234, 0], [65535, 3000, 0]]
    np.testing.assert_allclose(read_depth_png(tmp_path / "d.png"), raw / 1000.0, rtol=1e-6)


def test_normals_rgb_encoding_round_trip_and_missing():
    normals = np.zeros((1, 3, 3), dtype=np.float32)
    normals[0, 0] = [0, 0, -1]
    normals[0, 1] = np.array([1, -1, 0.5]) / np.linalg.norm([1, -1, 0.5])
    rgb = encode_normals(normals)
    assert rgb[0, 2].tolist() == [0, 0, 0] and rgb[0, 0].tolist() == [128, 128, 0]
    back = decode_normals(rgb)
    assert np.abs(back[0, :2] - normals[0, :2]).max() < 0.01 and (back[0, 2] == 0).all()


def test_labels_png_with_palette_reads_back_indices(tmp_path):
    labels = np.array([[0, 1, 4], [255, 2, 3]])
    write_labels_png(labels, tmp_path / "l.png", DENSE_PALETTE)
    assert Image.open(tmp_path / "l.png").mode == "P"
    assert read_labels_png(tmp_path / "l.png").tolist() == labels.tolist()


@pytest.mark.parametrize("normal", [[0.0, 0.0, -1.0], [0.3, -0.5, -0.81], [-0.6, 0.2, -0.77]])
def test_normals_from_depth_recovers_a_plane(normal):
    normal = np.asarray(normal) / np.linalg.norm(normal)
    depth = plane_depth(normal, 2.0)
    depth[10:14, 20:26] = 0  # a hole: no normal there, neighbours still fit
    estimated = normals_from_depth(depth, CAM, window=5)
    valid = depth > 0
    assert (np.linalg.norm(estimated[~valid], axis=-1) == 0).all()
    assert np.abs(estimated[valid] - normal).max() < 1e-3


def test_normals_from_depth_do_not_mix_surfaces_across_a_depth_edge():
    depth = plane_depth([0, 0, -1], 2.0)
    depth[:, 32:] = plane_depth([0, 0, -1], 4.0)[:, 32:]  # a step: two fronto-parallel planes
    estimated = normals_from_depth(depth, CAM, window=7)
    assert np.abs(estimated[5:-5, 5:-5] - np.array([0, 0, -1])).max() < 1e-3


def _patterned_sample(height=48, width=64) -> DenseSample:
    """Maps that are functions of position so alignment can be checked after augmentation."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.repeat(rng.integers(0, 5, size=(height // 8, width // 8)), 8, 0), 8, 1)
    rgb = DENSE_PALETTE[labels].copy()
    depth = (1.0 + labels).astype(np.float32)
    normals = np.zeros((height, width, 3), dtype=np.float32)
    normals[..., 0] = np.where(labels % 2 == 0, 0.6, -0.6)
    normals[..., 2] = -0.8
    return DenseSample(rgb, depth, normals, labels.astype(np.int64))


def test_augmentation_keeps_image_and_maps_aligned_and_divides_depth_by_the_scale():
    sample = _patterned_sample()
    aug = DenseAugment((48, 64), (40, 56), scale=(1.2, 1.2), rotation=4.0, flip_p=0.0, colour=(1.0, 1.0), seed=3)
    out = aug(sample)
    assert out.rgb.shape == (40, 56, 3) and out.depth.shape == (40, 56) and out.semantic.shape == (40, 56)
    inside = out.semantic != 255  # pixels that came from inside the image
    # away from region borders (where bilinear RGB blends), the RGB colour tells the label ...
    colour_of = {tuple(c): k for k, c in enumerate(DENSE_PALETTE)}
    agree = [colour_of.get(tuple(out.rgb[y, x])) == out.semantic[y, x]
             for y in range(40) for x in range(56) if inside[y, x] and tuple(out.rgb[y, x]) in colour_of]
    assert len(agree) > 1000 and np.mean(agree) > 0.99
    # ... and the depth the label (divided by the zoom of 1.2), the missing border is 0 in depth and normals
    np.testing.assert_allclose(out.depth[inside], (1.0 + out.semantic[inside]) / 1.2, rtol=1e-6)
    assert (out.depth[~inside] == 0).all() and (np.abs(out.normals[~inside]).sum(-1) == 0).all()


def test_horizontal_flip_negates_the_normals_x_component():
    sample = _patterned_sample()
    flipped = hflip_sample(sample)
    np.testing.assert_array_equal(flipped.rgb, sample.rgb[:, ::-1])
    np.testing.assert_array_equal(flipped.semantic, sample.semantic[:, ::-1])
    np.testing.assert_allclose(flipped.normals[..., 0], -sample.normals[:, ::-1, 0])
    np.testing.assert_allclose(flipped.normals[..., 1:], sample.normals[:, ::-1, 1:])
    aug = DenseAugment((48, 64), scale=(1.0, 1.0), rotation=0.0, flip_p=1.0, colour=(1.0, 1.0), seed=0)
    np.testing.assert_allclose(aug(sample).normals, flipped.normals)


@pytest.mark.parametrize("flip", [False, True])
def test_augmented_normals_agree_with_normals_recomputed_from_the_augmented_depth(flip):
    """Rotating/flipping the image must transform the normals the way the geometry does."""
    normal = np.array([0.5, -0.3, -0.8]) / np.linalg.norm([0.5, -0.3, -0.8])
    depth = plane_depth(normal, 2.0)
    sample = DenseSample(np.zeros((48, 64, 3), np.uint8), depth, np.broadcast_to(normal, (48, 64, 3)).astype(np.float32))
    aug = DenseAugment((48, 64), scale=(1.0, 1.0), rotation=10.0, flip_p=1.0 if flip else 0.0, colour=(1.0, 1.0),
                       seed=5)
    out = aug(sample)
    # nearest-neighbour resampling keeps small patches of the unrotated depth, so fit over a wide window
    recomputed = normals_from_depth(out.depth, CAM, window=11)
    both = (np.linalg.norm(recomputed, axis=-1) > 0) & (np.linalg.norm(out.normals, axis=-1) > 0)
    both[:6], both[-6:], both[:, :6], both[:, -6:] = False, False, False, False
    cosine = (recomputed[both] * out.normals[both]).sum(-1)
    # the turn here is 6.2 degrees: turning the normals the wrong way would leave cosines near 0.993
    assert both.sum() > 1000 and np.median(cosine) > 0.9993
    if not flip:  # without the flip the rotation alone must have changed the normals
        assert np.abs(out.normals[both] - normal).max() > 0.05


def test_rotate_normals_turns_x_and_y_only():
    n = np.array([[[1.0, 0.0, 0.0]]])
    np.testing.assert_allclose(rotate_normals(n, 90.0), [[[0.0, -1.0, 0.0]]], atol=1e-12)  # right -> up on screen


def test_colour_jitter_touches_rgb_only():
    sample = _patterned_sample()
    aug = DenseAugment((48, 64), scale=(1.0, 1.0), rotation=0.0, flip_p=0.0, colour=(0.5, 1.5), brightness=0.2,
                       seed=1)
    out = aug(sample)
    assert not np.array_equal(out.rgb, sample.rgb)
    np.testing.assert_array_equal(out.depth, sample.depth)
    np.testing.assert_array_equal(out.semantic, sample.semantic)


def test_synthetic_rooms_are_deterministic_and_geometrically_exact(tmp_path):
    a = render_room(np.random.default_rng(7), 48, 64, CAM)
    b = render_room(np.random.default_rng(7), 48, 64, CAM)
    np.testing.assert_array_equal(a.rgb, b.rgb)
    assert set(np.unique(a.semantic)) <= set(range(len(DENSE_CLASSES)))
    missing = a.depth == 0
    assert 0.001 < missing.mean() < 0.3
    np.testing.assert_allclose(np.linalg.norm(a.normals, axis=-1), 1.0, atol=1e-5)
    # normals point towards the camera, and agree with plane fits of the depth on planar surfaces
    u, v = np.meshgrid(np.arange(64), np.arange(48))
    rays = np.stack([(u - CAM.cx) / CAM.fx, (v - CAM.cy) / CAM.fy, np.ones(u.shape)], -1)
    assert ((a.normals * rays).sum(-1) < 1e-6).all()
    fitted = normals_from_depth(a.depth, CAM, window=3, min_points=9)
    ok = (np.linalg.norm(fitted, axis=-1) > 0) & (a.semantic != 4)  # spheres are curved
    assert np.median((fitted[ok] * a.normals[ok]).sum(-1)) > 0.999
    root = write_dense_dataset(tmp_path / "rooms", height=24, width=32, splits={"train": 2, "val": 1})
    root2 = write_dense_dataset(tmp_path / "rooms2", height=24, width=32, splits={"train": 2, "val": 1})
    for path in sorted(root.rglob("*.png")):
        assert path.read_bytes() == (root2 / path.relative_to(root)).read_bytes()
    assert (root / "classes.txt").read_text().split() == list(DENSE_CLASSES)


@pytest.fixture()
def rooms(tmp_path):
    return write_dense_dataset(tmp_path / "rooms", height=24, width=32, splits={"train": 3, "val": 2})


def test_folder_dataset_reads_every_map(rooms):
    ds = DenseFolderDataset(rooms / "train", num_classes=5)
    item = ds[0]
    assert ds.maps == ["depth", "normals", "semantic"]
    assert item["image"].shape == (3, 24, 32) and item["depth"].shape == (24, 32)
    assert item["normals"].shape == (3, 24, 32) and item["semantic"].dtype == torch.int64
    assert item["name"] == "train_00000"


def test_folder_dataset_computes_normals_from_depth_when_absent(rooms):
    import shutil

    shutil.rmtree(rooms / "train" / "normals")
    ds = DenseFolderDataset(rooms / "train", maps=["depth", "normals"])
    assert ds.derive_normals
    normals = ds[0]["normals"]
    assert normals.shape == (3, 24, 32) and float(normals.norm(dim=0).max()) == pytest.approx(1.0, abs=1e-4)
    shutil.rmtree(rooms / "train" / "labels")
    with pytest.raises(DataError, match="no labels/ folder"):
        DenseFolderDataset(rooms / "train", maps=["semantic"])


def test_bad_inputs_name_the_sample(rooms):
    split = rooms / "train"
    Image.fromarray(np.zeros((10, 10), np.uint16)).save(split / "depth" / "train_00000.png")  # wrong size
    (split / "normals" / "train_00001.png").write_bytes(b"not a png")                          # unreadable
    Image.fromarray(np.full((24, 32), 7, np.uint8)).save(split / "labels" / "train_00002.png")  # class 7 of 5
    ds = DenseFolderDataset(split, num_classes=5)
    with pytest.raises(DataError, match=r"train_00000.*depth map is 10x10 but the RGB image is 32x24"):
        ds[0]
    with pytest.raises(DataError, match=r"train_00001\.png: cannot decode"):
        ds[1]
    with pytest.raises(DataError, match=r"train_00002.*label values \[7\] are outside the 5 classes"):
        ds[2]
    (split / "depth" / "train_00001.png").unlink()
    with pytest.raises(DataError, match="train_00001.*is missing"):
        DenseFolderDataset(split, maps=["depth"])[1]
