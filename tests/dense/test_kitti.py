"""KITTI depth: a tiny fixture in the official raw + depth-benchmark layout, Velodyne projection against a hand
computation, the split-list formats, the Garg/Eigen crops, the 80 m cap, median scaling and one fit + test."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from densecnn.data import DataError
from densecnn.data.dense import DenseAugment
from densecnn.data.kitti import (
    KittiDepthDataset,
    KittiTransform,
    collate_kitti,
    project_points,
    read_calib_file,
    read_split_list,
    velodyne_depth,
    velodyne_projection,
)
from densecnn.metrics import DepthMetrics
from densecnn.metrics.dense import depth_crop_mask, depth_errors

SMALL_HEAD = dict(coarse_pool=[2, 3], coarse_hidden=16, coarse_channels=4, coarse_size=[3, 4],
                  scale2_image_channels=8, scale2_widths=[8], scale3_image_channels=8, scale3_widths=[8])

# Two drives of two dates, of different frame sizes as KITTI's are (375x1242 vs 370x1226, here 12x40 vs 11x38).
DRIVES = {("2011_09_26", "2011_09_26_drive_0001_sync"): ((12, 40), 4, "train"),
          ("2011_09_28", "2011_09_28_drive_0002_sync"): ((11, 38), 3, "val")}
# A calibration in the official files' format; hand-computable values: R_rect_00 identity, f = 20 px,
# principal point (20, 6), the right camera 8 px * f to the side (P_rect_03's tx = -8), Velodyne -> camera the
# usual axis change (camera x = -velo y, y = -velo z, z = velo x) with T = (0, -0.1, -0.5).
CAM_TO_CAM = """calib_time: 09-Jan-2012 13:57:47
corner_dist: 9.950000e-02
S_00: 1.392000e+03 5.120000e+02
K_00: 9.842439e+02 0.000000e+00 6.900000e+02 0.000000e+00 9.808141e+02 2.331966e+02 0.000000e+00 0.000000e+00 1.000000e+00
R_rect_00: 1.000000e+00 0.000000e+00 0.000000e+00 0.000000e+00 1.000000e+00 0.000000e+00 0.000000e+00 0.000000e+00 1.000000e+00
P_rect_00: 2.000000e+01 0.000000e+00 2.000000e+01 0.000000e+00 0.000000e+00 2.000000e+01 6.000000e+00 0.000000e+00 0.000000e+00 0.000000e+00 1.000000e+00 0.000000e+00
S_rect_02: {w}.000000e+00 {h}.000000e+00
R_rect_02: 9.998817e-01 1.511453e-02 -2.841595e-03 -1.511724e-02 9.998853e-01 -9.338510e-04 2.827154e-03 9.766976e-04 9.999955e-01
P_rect_02: 2.000000e+01 0.000000e+00 2.000000e+01 1.000000e+00 0.000000e+00 2.000000e+01 6.000000e+00 0.000000e+00 0.000000e+00 0.000000e+00 1.000000e+00 0.000000e+00
S_rect_03: {w}.000000e+00 {h}.000000e+00
P_rect_03: 2.000000e+01 0.000000e+00 2.000000e+01 -8.000000e+00 0.000000e+00 2.000000e+01 6.000000e+00 0.000000e+00 0.000000e+00 0.000000e+00 1.000000e+00 0.000000e+00
"""
VELO_TO_CAM = """calib_time: 15-Mar-2012 11:37:16
R: 0.000000e+00 -1.000000e+00 0.000000e+00 0.000000e+00 0.000000e+00 -1.000000e+00 1.000000e+00 0.000000e+00 0.000000e+00
T: 0.000000e+00 -1.000000e-01 -5.000000e-01
delta_f: 0.000000e+00 0.000000e+00
delta_c: 0.000000e+00 0.000000e+00
"""
# Velodyne points (x forward, y left, z up, reflectance) and, by hand, where they land in camera 2:
# cam = (-y, -z - 0.1, x - 0.5); (u, v, d) = (20 cam_x + 20 cam_z + 1, 20 cam_y + 6 cam_z, cam_z);
# pixel = round(u / d) - 1, round(v / d) - 1 (the reference code's MATLAB legacy).
POINTS = np.array([
    [20.5, 1.0, -0.9, 0.3],   # C: cam (-1, 0.8, 20): u = 381/20 = 19.05 -> col 18, v = 136/20 = 6.8 -> row 6, 20 m
    [10.5, 0.5, -0.4, 0.5],   # A: cam (-0.5, 0.3, 10): u = 191/10 = 19.1 -> col 18, v = 66/10 = 6.6 -> row 6, 10 m
    [20.5, -2.0, 0.9, 0.1],   # B: cam (2, -1, 20): u = 441/20 = 22.05 -> col 21, v = 100/20 = 5 -> row 4, 20 m
    [-5.0, 0.0, 0.0, 0.9],    # behind the scanner: dropped
    [5.5, -20.0, -0.1, 0.2],  # cam (20, 0, 5): u = 501/5 = 100.2: outside the 40 columns
    [10.5, 10.0, -0.1, 0.2],  # cam (-10, 0, 10): u = 1/10 = 0.1 -> round 0 -> -1: outside (the -1 shift)
], dtype=np.float32)
# A and C share pixel (6, 18): the nearest, A at 10 m, is kept even though C comes first.
EXPECTED_LEFT = {(6, 18): 10.0, (4, 21): 20.0}
# camera 3 (tx = -8): A: u = (-10 + 200 - 8) / 10 = 18.2 -> col 17; C: (-20 + 400 - 8) / 20 = 18.6 -> col 18;
# B: (40 + 400 - 8) / 20 = 21.6 -> col 21; rows as camera 2 (ty = 0)
EXPECTED_RIGHT = {(6, 17): 10.0, (6, 18): 20.0, (4, 21): 20.0}


def _code(row, col):
    """Each pixel's depth encodes its frame coordinates: value = 1000 + 64 row + col (value / 256 = metres)."""
    return 1000 + 64 * row + col


def write_kitti(root):
    """The fixture: raw images (left and right), calibration, Velodyne scans and annotated maps; the first drive's
    annotated maps are dense coordinate codes with a hole, the last frame of the second drive has none."""
    for (date, drive), ((h, w), frames, part) in DRIVES.items():
        (root / date).mkdir(parents=True, exist_ok=True)
        (root / date / "calib_cam_to_cam.txt").write_text(CAM_TO_CAM.format(w=w, h=h))
        (root / date / "calib_velo_to_cam.txt").write_text(VELO_TO_CAM)
        rows, cols = np.mgrid[0:h, 0:w]
        for frame in range(frames):
            name = f"{frame:010d}"
            for camera in ("image_02", "image_03"):
                folder = root / date / drive / camera / "data"
                folder.mkdir(parents=True, exist_ok=True)
                rgb = np.stack([cols * 5, rows * 20, np.full_like(rows, 10 * frame + (camera == "image_03"))], -1)
                Image.fromarray(rgb.astype(np.uint8)).save(folder / f"{name}.png")
            velo = root / date / drive / "velodyne_points" / "data"
            velo.mkdir(parents=True, exist_ok=True)
            POINTS.tofile(velo / f"{name}.bin")
            if part == "val" and frame == frames - 1:
                continue  # no annotated map, as for the first and last 5 frames of every real drive
            gt = root / "data_depth_annotated" / part / drive / "proj_depth" / "groundtruth" / "image_02"
            gt.mkdir(parents=True, exist_ok=True)
            values = _code(rows, cols).astype(np.uint16)
            values[0, :] = 0  # invalid
            Image.fromarray(values).save(gt / f"{name}.png")
    return root


@pytest.fixture
def kitti(tmp_path):
    root = write_kitti(tmp_path / "kitti")
    (root / "train_files.txt").write_text(  # monodepth2 format, frames written with and without zero padding
        "2011_09_26/2011_09_26_drive_0001_sync 0 l\n2011_09_26/2011_09_26_drive_0001_sync 0000000001 l\n"
        "2011_09_26/2011_09_26_drive_0001_sync 2 l\n2011_09_26/2011_09_26_drive_0001_sync 3 l\n")
    (root / "test_files.txt").write_text(  # BTS format, with a row without ground truth
        "2011_09_26/2011_09_26_drive_0001_sync/image_02/data/0000000003.png "
        "2011_09_26_drive_0001_sync/proj_depth/groundtruth/image_02/0000000003.png 721.5377\n"
        "2011_09_28/2011_09_28_drive_0002_sync/image_02/data/0000000000.png "
        "2011_09_28_drive_0002_sync/proj_depth/groundtruth/image_02/0000000000.png 707.0493\n"
        "2011_09_28/2011_09_28_drive_0002_sync/image_02/data/0000000002.png None 707.0493\n")
    return root


# ---- ground truth ------------------------------------------------------------------------------------------------
def test_calibration_file_is_read_as_the_devkit_does(kitti):
    calib = read_calib_file(kitti / "2011_09_26" / "calib_cam_to_cam.txt")
    assert "calib_time" not in calib  # not numbers
    np.testing.assert_array_equal(calib["S_rect_02"], [40.0, 12.0])
    assert calib["P_rect_02"].shape == (12,) and calib["P_rect_02"][3] == 1.0


def test_velodyne_projection_matches_the_hand_computation(kitti):
    bin_path = kitti / "2011_09_26" / "2011_09_26_drive_0001_sync" / "velodyne_points" / "data" / "0000000000.bin"
    for camera, expected in ((2, EXPECTED_LEFT), (3, EXPECTED_RIGHT)):
        depth = velodyne_depth(bin_path, kitti / "2011_09_26", camera)
        assert depth.shape == (12, 40) and depth.dtype == np.float32
        got = {(int(r), int(c)): float(depth[r, c]) for r, c in zip(*np.nonzero(depth))}
        assert got == pytest.approx(expected)
    # the second date's calibration says 11x38
    _, shape = velodyne_projection(kitti / "2011_09_28", 2)
    assert shape == (11, 38)


def test_projection_keeps_the_nearest_point_whatever_the_order():
    matrix = np.array([[20.0, 0, 20, 1], [0, 20, 6, 0], [0, 0, 1, 0]]) @ np.array(
        [[0, -1, 0, 0], [0, 0, -1, -0.1], [1, 0, 0, -0.5], [0, 0, 0, 1]])
    for order in (POINTS, POINTS[::-1]):
        assert project_points(order, matrix, (12, 40))[6, 18] == pytest.approx(10.0)


def test_annotated_map_is_value_over_256(kitti):
    dataset = KittiDepthDataset(kitti, kitti / "train_files.txt")
    depth = dataset.load(1).depth
    assert depth[0].max() == 0  # invalid stays 0
    assert depth[5, 7] == pytest.approx(_code(5, 7) / 256)
    assert depth[11, 39] == pytest.approx((1000 + 64 * 11 + 39) / 256)


def test_velodyne_ground_truth_for_left_and_right_rows(kitti):
    (kitti / "stereo.txt").write_text("2011_09_26/2011_09_26_drive_0001_sync 1 l\n"
                                      "2011_09_26/2011_09_26_drive_0001_sync 1 r\n")
    dataset = KittiDepthDataset(kitti, kitti / "stereo.txt", ground_truth="velodyne")
    left, right = dataset.load(0), dataset.load(1)
    assert left.rgb[0, 0, 2] == 10 and right.rgb[0, 0, 2] == 11  # image_02 and image_03
    assert {(int(r), int(c)) for r, c in zip(*np.nonzero(left.depth))} == set(EXPECTED_LEFT)
    assert {(int(r), int(c)) for r, c in zip(*np.nonzero(right.depth))} == set(EXPECTED_RIGHT)


# ---- split lists -------------------------------------------------------------------------------------------------
def test_split_lists_in_both_formats(kitti):
    mono = read_split_list(kitti / "train_files.txt", kitti)
    assert [i.image.name for i in mono] == [f"{k:010d}.png" for k in range(4)]
    assert mono[1].depth == (kitti / "data_depth_annotated" / "train" / "2011_09_26_drive_0001_sync" / "proj_depth"
                             / "groundtruth" / "image_02" / "0000000001.png")
    assert mono[0].camera == 2 and mono[0].where == f"{kitti / 'train_files.txt'}:1"
    with pytest.warns(UserWarning, match=r"1 of 3 listed samples have no annotated ground truth"):
        bts = read_split_list(kitti / "test_files.txt", kitti, skip_missing_gt=True)
    assert [i.name for i in bts] == ["2011_09_26_drive_0001_sync_0000000003_2", "2011_09_28_drive_0002_sync_0000000000_2"]
    assert bts[1].depth.parent.parts[-5:-3] == ("val", "2011_09_28_drive_0002_sync")  # found in val/


def test_split_list_errors_name_the_list_and_line(kitti):
    with pytest.raises(DataError, match=r"test_files.txt:3: no ground truth .*skip_missing_gt"):
        read_split_list(kitti / "test_files.txt", kitti)
    bad = kitti / "bad.txt"
    bad.write_text("2011_09_26/2011_09_26_drive_0001_sync 0 l\n2011_09_26/2011_09_26_drive_0001_sync 1\n")
    with pytest.raises(DataError, match=r"bad.txt:2: expected 3 fields"):
        read_split_list(bad, kitti)
    bad.write_text("2011_09_26/2011_09_26_drive_0001_sync first l\n")
    with pytest.raises(DataError, match=r"bad.txt:1: frame 'first' is not a number"):
        read_split_list(bad, kitti)
    bad.write_text("\n# a comment\n2011_09_26/2011_09_26_drive_0001_sync 9 l\n")
    with pytest.raises(DataError, match=r"bad.txt:3: image .*0000000009.png not found"):
        read_split_list(bad, kitti)
    bad.write_text("2011_09_26/2011_09_26_drive_0001_sync/image_02/data/0000000000.png None f\n")
    with pytest.raises(DataError, match=r"bad.txt:1: the third field must be l/r .* or the focal length"):
        read_split_list(bad, kitti)
    with pytest.raises(DataError, match="split list not found"):
        read_split_list(kitti / "missing.txt", kitti)


# ---- protocol ----------------------------------------------------------------------------------------------------
def test_kitti_crops_on_a_full_size_frame_match_the_hand_computed_bounds():
    # garg: int(0.40810811 * 375) = int(153.04) = 153, int(0.99189189 * 375) = int(371.96) = 371,
    #       int(0.03594771 * 1242) = int(44.65) = 44, int(0.96405229 * 1242) = int(1197.35) = 1197
    # eigen: int(0.3324324 * 375) = int(124.66) = 124, int(0.91351351 * 375) = int(342.57) = 342, columns as garg
    for crop, (top, bottom, left, right) in (("kitti_garg", (153, 371, 44, 1197)), ("kitti_eigen", (124, 342, 44, 1197))):
        expected = torch.zeros(375, 1242, dtype=torch.bool)
        expected[top:bottom, left:right] = True
        assert torch.equal(depth_crop_mask(crop, 375, 1242), expected)
    assert depth_crop_mask("none", 375, 1242) is None
    with pytest.raises(ValueError, match="kitti_garg"):
        depth_crop_mask("garg", 375, 1242)


def test_median_scaling_matches_a_hand_computation():
    target = torch.zeros(2, 1, 4)
    pred = torch.ones(2, 1, 4)
    target[0, 0] = torch.tensor([2.0, 4.0, 6.0, 8.0])
    pred[0, 0] = torch.tensor([1.0, 1.0, 3.0, 5.0])       # ratio = median 5 / median 2 = 2.5
    target[1, 0, :3] = 3.0                                # the 4th pixel is invalid (0)
    pred[1, 0] = torch.tensor([1.0, 2.0, 6.0, 100.0])     # ratio = 3 / median(1, 2, 6) = 1.5
    errors, _ = depth_errors(pred, target, max_depth=80.0, median_scaling=True)
    torch.testing.assert_close(errors["scale_ratio"], torch.tensor([2.5, 1.5], dtype=torch.float64))
    # scaled: [2.5, 2.5, 7.5, 12.5] vs [2, 4, 6, 8]: (0.5/2 + 1.5/4 + 1.5/6 + 4.5/8) / 4 = 0.359375
    # scaled: [1.5, 3, 9] vs [3, 3, 3]: (1.5/3 + 0 + 6/3) / 3 = 0.8333
    torch.testing.assert_close(errors["abs_rel"], torch.tensor([0.359375, 2.5 / 3]))
    metrics = DepthMetrics(max_depth=80.0, median_scaling=True)
    metrics.update(pred, target)
    values = metrics.compute()
    assert float(values["scale_ratio_median"]) == pytest.approx(2.0)   # np.median([2.5, 1.5])
    assert float(values["scale_ratio_std"]) == pytest.approx(0.5)      # np.std([2.5, 1.5])
    assert float(values["abs_rel"]) == pytest.approx((0.359375 + 2.5 / 3) / 2)
    assert "scale_ratio_median" not in DepthMetrics()


def test_cap_at_80_and_50_metres():
    # 80.0 = 20480 / 256 is excluded, as BTS and monodepth2 keep gt < max (strictly)
    target = torch.tensor([[[10.0, 60.0, 79.0, 90.0, 20480 / 256]]])
    pred = torch.tensor([[[12.0, 60.0, 100.0, 90.0, 1.0]]])  # 100 clamps to the cap
    at80, _ = depth_errors(pred, target, max_depth=80.0)
    assert float(at80["abs_rel"][0]) == pytest.approx((2 / 10 + 0 + 1 / 79) / 3)
    at50, _ = depth_errors(pred, target, max_depth=50.0)
    assert float(at50["abs_rel"][0]) == pytest.approx(0.2)


# ---- transforms --------------------------------------------------------------------------------------------------
def _decode(sample_rgb, sample_depth):
    """(row, col) from the image's colours and from the depth code at every valid pixel."""
    valid = sample_depth > 0
    from_rgb = np.stack([sample_rgb[..., 1] // 20, sample_rgb[..., 0] // 5], -1)[valid]
    code = np.round(sample_depth[valid] * 256).astype(np.int64) - 1000
    return from_rgb, np.stack([code // 64, code % 64], -1)


def test_training_crop_and_flip_keep_image_and_depth_exactly_aligned(kitti):
    augment = DenseAugment((8, 32), (8, 16), train=True, scale=(1, 1), rotation=0.0, flip_p=0.5, colour=(1, 1))
    transform = KittiTransform(augment, kb_crop=(8, 32))
    dataset = KittiDepthDataset(kitti, kitti / "train_files.txt", transform=transform)
    flipped = unflipped = 0
    for seed in range(12):
        torch.manual_seed(seed)
        sample = transform(dataset.load(seed % 4))
        assert sample.rgb.shape == (8, 16, 3) and sample.depth.shape == (8, 16)
        from_rgb, from_depth = _decode(sample.rgb, sample.depth)
        assert len(from_depth) > 100
        np.testing.assert_array_equal(from_rgb, from_depth)
        cols = sample.rgb[4, :, 0].astype(int) // 5
        assert np.all(np.diff(cols) == (-1 if cols[0] > cols[-1] else 1))
        flipped += cols[0] > cols[-1]
        unflipped += cols[0] < cols[-1]
        assert 4 <= sample.rgb[..., 1].min() // 20 and sample.rgb[..., 1].max() // 20 <= 11  # inside the kb crop
    assert flipped and unflipped


def test_evaluation_batches_carry_the_full_resolution_ground_truth_and_protocol(kitti):
    from tasks.datamodules.dense import KittiDepthDataModule

    # as on real frames (rows 23:375, columns 13:1229 of 375x1242), the kb crop holds the whole Garg and Eigen crops
    dm = KittiDepthDataModule(str(kitti), batch_size=2, test_list="test_files.txt", kb_crop=(9, 38),
                              image_size=(4, 16), skip_missing_gt=True)
    with pytest.warns(UserWarning, match="1 of 3"):
        dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert batch["image"].shape == (2, 3, 4, 16)
    assert batch["depth_full"].shape == (2, 12, 40)  # 11x38 padded with invalid zeros
    assert batch["depth_full"][1, 11:].abs().sum() == 0 and batch["depth_full"][1, :, 38:].abs().sum() == 0
    assert batch["depth_full_size"].tolist() == [[12, 40], [11, 38]]
    # kb crop: top = H - 9, left = (W - 38) // 2
    assert batch["depth_window"].tolist() == [[3.0, 12.0, 1.0, 39.0], [2.0, 11.0, 0.0, 38.0]]
    assert batch["depth_crop"] == ["kitti_garg", "kitti_garg"] and batch["depth_max"].tolist() == [80.0, 80.0]

    from tasks import DensePredictionTask

    yy, xx = np.mgrid[0:4, 0:16].astype(np.float32)
    pred = np.stack([3.0 + 0.4 * xx + 0.5 * yy, 8.0 - 0.2 * xx]).astype(np.float32)
    # the data's protocol (Garg crop, 80 m), then the task's own choice overriding it (Eigen crop, 5 m: the
    # fixture's depths are 3.9-6.8 m, so the cap removes some)
    garg, eigen = (0.40810811, 0.99189189, 0.03594771, 0.96405229), (0.3324324, 0.91351351, 0.0359477, 0.96405229)
    for options, fractions, cap in (({}, garg, 80.0), ({"depth_crop": "kitti_eigen", "eval_max_depth": 5.0}, eigen, 5.0)):
        task = DensePredictionTask(backbone="cifar_resnet20", targets=["depth"], **SMALL_HEAD, **options)
        task.update_metrics("test", {"depth": torch.from_numpy(np.log(pred))[:, None]}, batch)
        got = {k.split("/")[-1]: float(v) for k, v in task.metrics_for("test").compute().items()}

        # oracle: cv2's bilinear upsampling into the window, the crop on each frame's own size, BTS's errors
        per_image = []
        for i, ((h, w), (top, bottom, left, right)) in enumerate(zip(batch["depth_full_size"].tolist(),
                                                                     batch["depth_window"].int().tolist())):
            gt = batch["depth_full"][i, :h, :w].numpy()
            full = np.zeros((h, w), np.float32)
            full[top:bottom, left:right] = cv2.resize(pred[i], (right - left, bottom - top),
                                                      interpolation=cv2.INTER_LINEAR)
            valid = (gt > 1e-3) & (gt < cap)
            crop = np.zeros_like(valid)
            crop[int(fractions[0] * h):int(fractions[1] * h), int(fractions[2] * w):int(fractions[3] * w)] = True
            valid &= crop
            g, p = gt[valid].astype(np.float64), np.clip(full[valid], 1e-3, cap).astype(np.float64)
            per_image.append({"abs_rel": np.mean(np.abs(g - p) / g), "rmse": np.sqrt(np.mean((g - p) ** 2)),
                              "delta1": np.mean(np.maximum(g / p, p / g) < 1.25)})
        for key in ("abs_rel", "rmse", "delta1"):
            assert got[key] == pytest.approx(np.mean([e[key] for e in per_image]), rel=1e-5)


def test_collate_pads_only_the_full_resolution_maps():
    a = {"image": torch.zeros(3, 2, 4), "depth_full": torch.ones(3, 5), "name": "a"}
    b = {"image": torch.zeros(3, 2, 4), "depth_full": torch.ones(2, 6), "name": "b"}
    batch = collate_kitti([a, b])
    assert batch["depth_full"].shape == (2, 3, 6)
    assert batch["depth_full"][0].sum() == 15 and batch["depth_full"][1].sum() == 12


def test_task_option_conflicts_are_config_errors():
    from densecnn.errors import ConfigError
    from tasks import DensePredictionTask

    with pytest.raises(ConfigError, match="depth_crop"):
        DensePredictionTask(backbone="cifar_resnet20", targets=["depth"], depth_crop="garg", **SMALL_HEAD)
    with pytest.raises(ConfigError, match="conflicts"):
        DensePredictionTask(backbone="cifar_resnet20", targets=["depth"], eigen_crop=True, depth_crop="kitti_garg",
                            **SMALL_HEAD)


def test_fit_and_test_on_the_fixture_score_what_the_model_predicts(kitti, tmp_path):
    """One training step and a test run through the Trainer; the test metrics are recomputed here from the
    model's own predictions (median scaling on, as for a monocular model)."""
    import pytorch_lightning as pl

    from tasks import DensePredictionTask
    from tasks.datamodules.dense import KittiDepthDataModule

    pl.seed_everything(0)
    (kitti / "gt_test.txt").write_text("\n".join((kitti / "test_files.txt").read_text().splitlines()[:2]) + "\n")
    # the tiny network needs more than the 8x38 kb crop: resized to 32x64 (depth by nearest neighbour)
    dm = KittiDepthDataModule(str(kitti), batch_size=2, train_list="train_files.txt", test_list="gt_test.txt",
                              kb_crop=(8, 38), image_size=(32, 64), crop_size=(32, 48))
    task = DensePredictionTask(backbone="cifar_resnet20", targets=["depth"], median_scaling=True, **SMALL_HEAD)
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", limit_val_batches=1, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=str(tmp_path), logger=False,
                         enable_checkpointing=False)
    trainer.fit(task, datamodule=dm)
    assert trainer.global_step == 1
    result = trainer.test(task, datamodule=dm, verbose=False)[0]

    batch = next(iter(dm.test_dataloader()))
    task.eval()
    with torch.no_grad():
        pred = task(batch["image"])["depth"].numpy()
    ratios, abs_rel = [], []
    for i, (h, w) in enumerate(batch["depth_full_size"].tolist()):
        top, bottom, left, right = batch["depth_window"][i].int().tolist()
        gt = batch["depth_full"][i, :h, :w].numpy()
        full = np.zeros((h, w), np.float32)
        full[top:bottom, left:right] = cv2.resize(pred[i], (right - left, bottom - top), interpolation=cv2.INTER_LINEAR)
        valid = (gt > 1e-3) & (gt < 80.0)
        crop = np.zeros_like(valid)
        crop[int(0.40810811 * h):int(0.99189189 * h), int(0.03594771 * w):int(0.96405229 * w)] = True
        valid &= crop
        g, p = gt[valid].astype(np.float64), full[valid].astype(np.float64)
        ratio = np.median(g) / np.median(p)
        ratios.append(ratio)
        p = np.clip(p * ratio, 1e-3, 80.0)
        abs_rel.append(np.mean(np.abs(g - p) / g))
    assert result["test/depth/abs_rel"] == pytest.approx(np.mean(abs_rel), rel=1e-4)
    assert result["test/depth/scale_ratio_median"] == pytest.approx(np.median(ratios), rel=1e-4)
    assert result["test/depth/scale_ratio_std"] == pytest.approx(np.std(ratios), rel=1e-4, abs=1e-6)


def test_the_kitti_recipe_runs_through_the_cli_on_the_fixture(kitti, tmp_path):
    """The shipped recipe's data and protocol sections, as written, with a tiny network and the fixture's sizes."""
    from pathlib import Path

    from tasks.cli import main

    config = Path(__file__).resolve().parents[2] / "configs" / "dense" / "kitti_depth_vgg16.yaml"
    (kitti / "gt_test.txt").write_text("\n".join((kitti / "test_files.txt").read_text().splitlines()[:2]) + "\n")
    small = [f"--model.init_args.{k}={v}".replace("'", "") for k, v in SMALL_HEAD.items()]
    cli = main(["fit", "--config", str(config), "--trainer.fast_dev_run", "true", "--trainer.accelerator", "cpu",
          "--trainer.default_root_dir", str(tmp_path / "runs"), "--model.init_args.backbone", "cifar_resnet20",
          "--model.init_args.weights", "null", "--model.init_args.strict_weights", "true", *small,
          "--data.init_args.root", str(kitti), "--data.init_args.train_list", "train_files.txt",
          "--data.init_args.val_list", "gt_test.txt", "--data.init_args.test_list", "gt_test.txt",
          "--data.init_args.kb_crop", "[8, 38]", "--data.init_args.image_size", "[32, 64]",
          "--data.init_args.crop_size", "[32, 64]", "--data.init_args.batch_size", "2",
          "--data.init_args.num_workers", "0"])
    val_set = cli.datamodule.val_set
    assert (len(val_set), val_set.eval_crop, val_set.max_depth, val_set.ground_truth) == (2, "kitti_garg", 80.0,
                                                                                          "annotated")
    assert cli.trainer.global_step == 1
    assert 0 < float(cli.trainer.callback_metrics["val/depth/abs_rel"]) < 10  # scored on the validation frames
