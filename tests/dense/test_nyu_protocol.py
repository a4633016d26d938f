"""The standard NYU depth evaluation (Eigen et al. 2014 as BTS / monodepth2 score it) on an NYU-layout file,
the Eigen crop's placement on centre-cropped maps, and the NYU normals cache."""
from __future__ import annotations

import cv2
import h5py
import numpy as np
import pytest
import torch

from densecnn.metrics import eigen_crop_mask
from tasks import DensePredictionTask

H, W, N = 480, 640, 2  # the real frame size: the crop is rows 45:471, columns 41:601 of it
SMALL_HEAD = dict(coarse_pool=[2, 3], coarse_hidden=16, coarse_channels=4, coarse_size=[3, 4],
                  scale2_image_channels=8, scale2_widths=[8], scale3_image_channels=8, scale3_widths=[8])


def _write_nyu(root, height=H, width=W, frames=N):
    """Frames in the official layout (MATLAB column-major: every array transposed), and a split with all of
    them in test."""
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    depths = rng.uniform(0.5, 12.0, size=(frames, height, width)).astype(np.float32)  # some beyond the 10 m cap
    depths[:, 100:140, 200:260] = 0.0  # missing
    with h5py.File(root / "nyu_depth_v2_labeled.mat", "w") as f:
        f["images"] = rng.integers(0, 256, size=(frames, 3, width, height), dtype=np.uint8)
        f["depths"] = depths.transpose(0, 2, 1)
        f["labels"] = np.zeros((frames, width, height), dtype=np.uint16)
    ids = np.arange(1, frames + 1)[:, None]
    savemat(root / "splits.mat", {"trainNdxs": ids, "testNdxs": ids})
    return depths


def _reference_errors(pred, gt):
    """BTS's ``compute_errors`` (eval_with_pngs.py) on the Eigen crop with the [1e-3, 10] cap, per image."""
    valid = (gt > 1e-3) & (gt < 10.0)
    crop = np.zeros_like(valid)
    crop[45:471, 41:601] = True
    valid &= crop
    g, p = gt[valid].astype(np.float64), np.clip(pred[valid], 1e-3, 10.0).astype(np.float64)
    thresh = np.maximum(g / p, p / g)
    d = np.log(p) - np.log(g)
    return {"delta1": (thresh < 1.25).mean(), "delta2": (thresh < 1.25 ** 2).mean(),
            "delta3": (thresh < 1.25 ** 3).mean(), "abs_rel": np.mean(np.abs(g - p) / g),
            "sq_rel": np.mean((g - p) ** 2 / g), "rmse": np.sqrt(np.mean((g - p) ** 2)),
            "rmse_log": np.sqrt(np.mean(d ** 2)), "log10": np.mean(np.abs(np.log10(p) - np.log10(g))),
            "silog": np.sqrt(np.mean(d ** 2) - np.mean(d) ** 2)}


def test_standard_protocol_scores_the_upsampled_prediction_on_the_full_resolution_crop(tmp_path):
    """The NYU default: the network sees 320x240, its prediction is upsampled (bilinear) to the 640x480 ground
    truth and scored inside the Eigen crop with the 10 m cap; oracle: cv2's bilinear resize and BTS's errors
    in numpy on the full-resolution file."""
    from tasks.datamodules.dense import NYUDepthV2DataModule

    depths = _write_nyu(tmp_path)
    dm = NYUDepthV2DataModule(str(tmp_path), batch_size=N, classes="894", maps=["depth"])
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert batch["depth"].shape == (N, 240, 320) and batch["depth_full"].shape == (N, H, W)
    torch.testing.assert_close(batch["depth_full"], torch.from_numpy(depths))
    torch.testing.assert_close(batch["depth_window"], torch.tensor([[0.0, 480.0, 0.0, 640.0]] * N))

    yy, xx = np.mgrid[0:240, 0:320].astype(np.float32)
    pred = np.stack([1.0 + 0.03 * xx + 0.01 * yy, 11.0 - 0.02 * xx]).astype(np.float32)  # known, > 10 m in part
    task = DensePredictionTask(backbone="cifar_resnet20", targets=["depth"], **SMALL_HEAD)
    task.update_metrics("test", {"depth": torch.from_numpy(np.log(pred))[:, None]}, batch)
    got = {k.split("/")[-1]: float(v) for k, v in task.metrics_for("test").compute().items()}

    per_image = [_reference_errors(cv2.resize(pred[i], (W, H), interpolation=cv2.INTER_LINEAR), depths[i])
                 for i in range(N)]
    expected = {k: np.mean([e[k] for e in per_image]) for k in per_image[0]}
    assert got == pytest.approx(expected, rel=2e-4, abs=1e-5)
    # not what the old resized protocol gives: the nearest-neighbour 240x320 ground truth scores differently
    resized = [_reference_errors(cv2.resize(pred[i], (W, H), interpolation=cv2.INTER_NEAREST),
                                 cv2.resize(depths[i], (320, 240), interpolation=cv2.INTER_NEAREST).repeat(2, 0).repeat(2, 1))
               for i in range(N)]
    assert abs(np.mean([e["rmse"] for e in resized]) - got["rmse"]) > 1e-3


def test_eval_crop_scores_only_the_frame_part_the_network_saw(tmp_path):
    """With ``eval_crop`` the 304x228 centre crop of the 320x240 frame covers frame rows 12:468 and columns
    16:624: the prediction is upsampled onto exactly that window and the rest of the Eigen crop is not scored."""
    from tasks.datamodules.dense import NYUDepthV2DataModule

    depths = _write_nyu(tmp_path)
    dm = NYUDepthV2DataModule(str(tmp_path), batch_size=N, classes="894", maps=["depth"], eval_crop=True)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    torch.testing.assert_close(batch["depth_window"], torch.tensor([[12.0, 468.0, 16.0, 624.0]] * N))
    pred = np.full((N, 228, 304), 3.0, dtype=np.float32)
    task = DensePredictionTask(backbone="cifar_resnet20", targets=["depth"], **SMALL_HEAD)
    task.update_metrics("test", {"depth": torch.from_numpy(np.log(pred))[:, None]}, batch)
    got = float(task.metrics_for("test").compute()["test/depth/abs_rel"])
    inside = np.zeros((H, W), bool)
    inside[12:468, 16:624] = True  # the window, intersected with the crop inside _reference_errors
    expected = np.mean([_reference_errors(np.where(inside, 3.0, np.nan), np.where(inside, depths[i], 0))["abs_rel"]
                        for i in range(N)])
    assert got == pytest.approx(expected, rel=1e-5)


def test_eigen_crop_mask_follows_the_window_of_a_centre_cropped_map():
    """The mask covers exactly rows 45:471 / columns 41:601 of the 480x640 frame, wherever the map lies in it."""
    frame = np.zeros((H, W), bool)
    frame[45:471, 41:601] = True
    # full resolution, a window of the frame: the mask is the frame's mask cut to the window
    window = (12, 468, 16, 624)
    np.testing.assert_array_equal(eigen_crop_mask(456, 608, window=window).numpy(), frame[12:468, 16:624])
    np.testing.assert_array_equal(eigen_crop_mask(480, 640).numpy(), frame)  # default: the whole frame
    # half resolution (the 228x304 centre crop of 240x320): every masked pixel is a 2x2 frame block centred
    # inside the crop (boundary pixels half inside go with Python's round, as for the whole frame)
    half = eigen_crop_mask(228, 304, window=window).numpy()
    rows, cols = np.flatnonzero(half.any(1)), np.flatnonzero(half.any(0))
    assert (rows[0], rows[-1] + 1, cols[0], cols[-1] + 1) == (16, 228, 12, 292)
    # row 16 covers frame rows 44:46 (half inside), the last row 227 frame rows 466:468 (inside: 471 lies
    # beyond the window); column 12 covers frame columns 40:42, column 291 frame columns 598:600
    assert int(half.sum()) == (228 - 16) * (292 - 12)
    # the old proportional mask put the crop 6 rows / 8 columns off on this map
    assert not np.array_equal(half, eigen_crop_mask(228, 304).numpy())


def test_nyu_normals_are_computed_once_and_read_from_the_cache(tmp_path, monkeypatch):
    from densecnn.data import dense as data_dense
    from densecnn.data.nyu import NYUDepthV2Dataset

    _write_nyu(tmp_path, height=24, width=32, frames=2)
    mat = tmp_path / "nyu_depth_v2_labeled.mat"
    calls = []
    original = data_dense.normals_from_depth
    monkeypatch.setattr(data_dense, "normals_from_depth", lambda *a, **k: calls.append(1) or original(*a, **k))
    ds = NYUDepthV2Dataset(mat, "all", classes="894", maps=["depth", "normals"], normals_cache_dir=tmp_path / "c")
    first = ds.load(1).normals
    assert len(calls) == 1
    again = NYUDepthV2Dataset(mat, "all", classes="894", maps=["depth", "normals"], normals_cache_dir=tmp_path / "c")
    np.testing.assert_array_equal(again.load(1).normals, first)
    assert len(calls) == 1  # served from the cache
    np.testing.assert_array_equal(first, original(ds.load(1).depth, data_dense.NYU_INTRINSICS))
    raw_key = NYUDepthV2Dataset(mat, "all", classes="894", maps=["normals"], depth_key="depths",
                                normals_cache_dir=tmp_path / "c")
    raw_key.load(0)  # another frame: its own entry
    assert len(calls) == 2
