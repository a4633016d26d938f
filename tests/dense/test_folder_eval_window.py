"""Folder-format data with ``eval_crop``: the samples carry ``depth_window`` (the part of the 640x480 frame the
centre crop covers), so the Eigen crop is scored on the same frame pixels as on the whole frame."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from densecnn.data.dense import DenseAugment, DenseFolderDataset, write_depth_png
from densecnn.metrics import eigen_crop_mask
from tasks import DensePredictionTask
from tasks.datamodules.dense import DenseDataModule

H, W, N = 480, 640, 2  # NYU's frame, on which the Eigen crop is rows 45:471, columns 41:601
SMALL_HEAD = dict(coarse_pool=[2, 3], coarse_hidden=16, coarse_channels=4, coarse_size=[3, 4],
                  scale2_image_channels=8, scale2_widths=[8], scale3_image_channels=8, scale3_widths=[8])


def _write_folder(split_dir, height=H, width=W, frames=N) -> np.ndarray:
    rng = np.random.default_rng(0)
    depths = np.round(rng.uniform(0.5, 9.0, size=(frames, height, width)), 3).astype(np.float32)  # whole mm
    for folder in ("rgb", "depth"):
        (split_dir / folder).mkdir(parents=True)
    for i in range(frames):
        rgb = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(split_dir / "rgb" / f"{i}.png")
        write_depth_png(depths[i], split_dir / "depth" / f"{i}.png")
    return depths


def _frame_mask() -> np.ndarray:
    mask = np.zeros((H, W), bool)
    mask[45:471, 41:601] = True  # Eigen et al. 2014's crop, by hand
    return mask


def test_full_resolution_centre_crop_scores_the_frames_eigen_crop_cut_to_the_window(tmp_path):
    """456x608 centre crop of the 480x640 frame: frame rows 12:468, columns 16:624; the mask the task scores
    with is exactly the full frame's Eigen mask cut to that window, and the errors are those over it."""
    depths = _write_folder(tmp_path / "test")
    dm = DenseDataModule(str(tmp_path), batch_size=N, maps=["depth"], image_size=[H, W], crop_size=[456, 608],
                         eval_crop=True)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert batch["depth"].shape == (N, 456, 608)
    torch.testing.assert_close(batch["depth_window"], torch.tensor([[12.0, 468.0, 16.0, 624.0]] * N))
    expected_mask = _frame_mask()[12:468, 16:624]
    np.testing.assert_array_equal(eigen_crop_mask(456, 608, window=batch["depth_window"][0].tolist()).numpy(),
                                  expected_mask)

    task = DensePredictionTask(backbone="cifar_resnet20", targets=["depth"], eigen_crop=True, **SMALL_HEAD)
    pred = np.full((N, 456, 608), 3.0, dtype=np.float32)
    task.update_metrics("test", {"depth": torch.from_numpy(np.log(pred))[:, None]}, batch)
    got = float(task.metrics_for("test").compute()["test/depth/abs_rel"])
    gt = depths[:, 12:468, 16:624]
    expected = np.mean([np.mean(np.abs(3.0 - g[expected_mask]) / g[expected_mask]) for g in gt])
    assert got == pytest.approx(expected, rel=1e-5)


def test_the_default_half_resolution_crop_places_the_mask_by_the_window(tmp_path):
    """The NYU sizes (320x240 frame, 304x228 centre crop) on a folder of 640x480 frames: the same window as the
    NYU reader gives, and the mask rows 16:228 / columns 12:292 of the crop (frame rows 45:471, columns 41:601
    halved, less the crop's 6-row / 8-column offset, cut at the crop's edge), not the proportional mask."""
    _write_folder(tmp_path / "test", frames=1)
    transform = DenseAugment((240, 320), (228, 304), train=False, eval_crop=True)
    sample = DenseFolderDataset(tmp_path / "test", ["depth"], transform)[0]
    assert sample["depth"].shape == (228, 304)
    window = sample["depth_window"].tolist()
    assert window == [12.0, 468.0, 16.0, 624.0]
    mask = eigen_crop_mask(228, 304, window=window).numpy()
    by_hand = np.zeros((228, 304), bool)
    by_hand[16:228, 12:292] = True
    np.testing.assert_array_equal(mask, by_hand)
    assert not np.array_equal(mask, eigen_crop_mask(228, 304).numpy())


def test_without_eval_crop_the_window_is_the_whole_frame_and_training_has_none(tmp_path):
    _write_folder(tmp_path / "test", height=240, width=320, frames=1)  # a folder of frames at half size
    whole = DenseFolderDataset(tmp_path / "test", ["depth"], DenseAugment((240, 320), train=False))[0]
    assert whole["depth_window"].tolist() == [0.0, 480.0, 0.0, 640.0]
    np.testing.assert_array_equal(eigen_crop_mask(240, 320, window=whole["depth_window"].tolist()).numpy(),
                                  eigen_crop_mask(240, 320).numpy())  # as without a window
    cropped = DenseFolderDataset(tmp_path / "test", ["depth"],
                                 DenseAugment((240, 320), (228, 304), train=False, eval_crop=True))[0]
    assert cropped["depth_window"].tolist() == [12.0, 468.0, 16.0, 624.0]  # in the 640x480 frame's pixels
    train = DenseFolderDataset(tmp_path / "test", ["depth"], DenseAugment((240, 320), (228, 304), seed=0))[0]
    assert "depth_window" not in train  # a random crop has no fixed place
