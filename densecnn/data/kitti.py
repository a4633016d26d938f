"""KITTI depth: the raw recordings with the Eigen split lists, ground truth from the depth benchmark's annotated
maps or projected Velodyne scans, and BTS's bottom-centre crop.

Layout (the official downloads, unpacked under one ``root``)::

    root/<date>/calib_cam_to_cam.txt, calib_velo_to_cam.txt
    root/<date>/<date>_drive_<NNNN>_sync/image_02/data/<frame:010d>.png     left colour camera (image_03: right)
    root/<date>/<date>_drive_<NNNN>_sync/velodyne_points/data/<frame:010d>.bin   float32 (x, y, z, reflectance)
    root/data_depth_annotated/{train,val}/<drive>/proj_depth/groundtruth/image_02/<frame:010d>.png
        the depth benchmark's annotated maps (Uhrig et al. 2017): uint16, depth = value / 256 m, 0 = invalid

Ground truth (``ground_truth``): ``annotated`` reads the benchmark's maps (``read_depth_png`` with scale 256);
``velodyne`` projects the frame's scan into the camera as Eigen et al. 2014 do (``velodyne_depth``, the
algorithm of monodepth2's ``generate_depth_map``). The annotated maps exist for 652 of the 697 Eigen test
frames (the "improved ground truth" subset); rows without ground truth are an error naming the list and line,
or are skipped, counted and reported with ``skip_missing_gt``.

Split lists, one sample per line, in either of the two formats in use (detected per line):

* monodepth2's ``<date>/<drive> <frame> <l|r>`` (``splits/eigen/test_files.txt``, 697 lines; ``eigen_zhou``
  and ``eigen_full`` training lists): ``l`` is ``image_02``, ``r`` is ``image_03``; the image is ``.png`` or,
  for lists made for monodepth2's jpeg conversion, ``.jpg``.
* BTS's ``<image path> <depth path | None> <focal>`` (``eigen_test_files_with_gt.txt``): paths relative to
  ``root`` and to the annotated folder (``data_depth_annotated/``, also looked up in its ``train/`` and
  ``val/``); ``None`` = no ground truth.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch
from torch.utils.data import default_collate

from .dense import (
    DEPTH_SCALE_KITTI,
    DenseAugment,
    DenseSample,
    DenseSampleDataset,
    check_sample,
    read_depth_png,
    sample_to_tensors,
)
from .image_folder import DataError, read_rgb
from .transforms import IMAGENET_MEAN, IMAGENET_STD

#: monodepth2's side letters -> the raw recordings' camera folders
KITTI_SIDES = {"l": "image_02", "r": "image_03"}
#: BTS's crop of every KITTI frame (``do_kb_crop``): the bottom 352 rows, the centre 1216 columns, the largest
#: window all raw frame sizes (370x1224 to 376x1242) share, so frames of every drive batch together unresized
KB_CROP = (352, 1216)
GroundTruth = Literal["annotated", "velodyne"]


# ---- calibration and Velodyne projection -----------------------------------------------------------------------
def read_calib_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A KITTI calibration file (``key: v1 v2 ...`` lines) as float arrays; lines whose values are not numbers
    (``calib_time: 09-Jan-2012 13:57:47``) are left out, as in the devkit."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: calibration file not found (the raw data's {path.name} in the date folder)")
    values: dict[str, np.ndarray] = {}
    for line in path.read_text().splitlines():
        key, sep, rest = line.partition(":")
        if not sep:
            continue
        try:
            values[key.strip()] = np.array([float(v) for v in rest.split()], dtype=np.float64)
        except ValueError:
            continue
    return values


def _calib_entry(calib: dict[str, np.ndarray], key: str, size: int, path: Path) -> np.ndarray:
    if key not in calib or calib[key].size != size:
        raise DataError(f"{path}: no {key} with {size} numbers")
    return calib[key]


def velodyne_projection(date_dir: str | os.PathLike, camera: int = 2) -> tuple[np.ndarray, tuple[int, int]]:
    """The 3x4 matrix from homogeneous Velodyne points to camera ``camera``'s rectified image,
    ``P_rect_0c @ R_rect_00 @ [R | T]_velo->cam``, and that image's (height, width) (``S_rect_0c``)."""
    date_dir = Path(date_dir)
    cam_path, velo_path = date_dir / "calib_cam_to_cam.txt", date_dir / "calib_velo_to_cam.txt"
    cam, velo = read_calib_file(cam_path), read_calib_file(velo_path)
    velo_to_cam = np.eye(4)
    velo_to_cam[:3, :3] = _calib_entry(velo, "R", 9, velo_path).reshape(3, 3)
    velo_to_cam[:3, 3] = _calib_entry(velo, "T", 3, velo_path)
    rect = np.eye(4)
    rect[:3, :3] = _calib_entry(cam, "R_rect_00", 9, cam_path).reshape(3, 3)  # every camera is rectified to 0's plane
    projection = _calib_entry(cam, f"P_rect_0{camera}", 12, cam_path).reshape(3, 4)
    width, height = _calib_entry(cam, f"S_rect_0{camera}", 2, cam_path)
    return projection @ rect @ velo_to_cam, (int(height), int(width))


def project_points(points: np.ndarray, velo_to_image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A sparse (H, W) depth map from Velodyne points (N, >=3), as Eigen et al. 2014 build KITTI's ground truth
    (monodepth2's ``generate_depth_map``, whose maps every published Eigen-split number is scored on):

    * points behind the scanner (x < 0, x points forward) are dropped;
    * each point is projected, ``(u, v, d) = P (x, y, z, 1)``, pixel ``(u/d, v/d)`` rounded and moved by -1
      (the reference code's MATLAB legacy, kept so the maps match theirs), depth ``d`` (metres along the
      rectified optical axis);
    * points outside the image are dropped, and where several land on one pixel the nearest is kept.
    """
    height, width = shape
    points = np.asarray(points, dtype=np.float64)
    points = points[points[:, 0] >= 0]
    homogeneous = np.concatenate([points[:, :3], np.ones((len(points), 1))], axis=1)
    projected = homogeneous @ velo_to_image.T
    depth = projected[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.round(projected[:, 0] / depth) - 1
        v = np.round(projected[:, 1] / depth) - 1
    keep = (u >= 0) & (v >= 0) & (u < width) & (v < height) & (depth > 0)
    u, v, depth = u[keep].astype(np.int64), v[keep].astype(np.int64), depth[keep]
    out = np.full(height * width, np.inf)
    np.minimum.at(out, v * width + u, depth)  # the nearest point per pixel
    out[np.isinf(out)] = 0.0
    return out.reshape(height, width).astype(np.float32)


def read_velodyne(path: str | os.PathLike) -> np.ndarray:
    """A Velodyne scan: float32 (x, y, z, reflectance) records."""
    path = Path(path)
    raw = np.fromfile(path, dtype=np.float32)
    if raw.size % 4:
        raise DataError(f"{path}: {raw.size * 4} bytes is not a whole number of (x, y, z, reflectance) float32 records")
    return raw.reshape(-1, 4)


def velodyne_depth(bin_path: str | os.PathLike, date_dir: str | os.PathLike, camera: int = 2) -> np.ndarray:
    """The ground-truth depth of camera ``camera`` (2 left, 3 right) from one scan (``project_points``)."""
    velo_to_image, shape = velodyne_projection(date_dir, camera)
    return project_points(read_velodyne(bin_path), velo_to_image, shape)


# ---- split lists -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KittiItem:
    """One listed sample: its image, its ground-truth file (None when there is none), camera and origin."""

    image: Path
    depth: Path | None
    camera: int
    name: str
    where: str  # "<list>:<line>", for messages


def _frame_name(frame: str, where: str) -> str:
    try:
        return f"{int(frame):010d}"
    except ValueError:
        raise DataError(f"{where}: frame {frame!r} is not a number") from None


def _annotated_map(annotated: Path, relative: str) -> Path | None:
    """``relative`` (``<drive>/proj_depth/groundtruth/image_0c/<frame>.png``) in the annotated folder itself or
    in its official ``train/`` and ``val/`` parts."""
    for base in (annotated, annotated / "train", annotated / "val"):
        if (base / relative).is_file():
            return base / relative
    return None


def _parse_line(tokens: list[str], where: str, root: Path, annotated: Path,
                ground_truth: GroundTruth) -> KittiItem:
    if len(tokens) != 3:
        raise DataError(f"{where}: expected 3 fields (monodepth2 '<date>/<drive> <frame> <l|r>' or BTS '<image> "
                        f"<depth|None> <focal>'), got {len(tokens)}: {' '.join(tokens)!r}")
    if tokens[2] in KITTI_SIDES:  # monodepth2
        folder, frame, side = tokens
        frame = _frame_name(frame, where)
        drive_dir = root / folder
        camera_dir = KITTI_SIDES[side]
        image = drive_dir / camera_dir / "data" / f"{frame}.png"
        if not image.is_file() and (image.with_suffix(".jpg")).is_file():
            image = image.with_suffix(".jpg")
        annotated_rel = f"{drive_dir.name}/proj_depth/groundtruth/{camera_dir}/{frame}.png"
    else:  # BTS
        image_rel, depth_rel, focal = tokens
        try:
            float(focal)
        except ValueError:
            raise DataError(f"{where}: the third field must be l/r (monodepth2) or the focal length (BTS), got "
                            f"{focal!r}") from None
        image = root / image_rel
        parts = Path(image_rel).parts
        if len(parts) < 4 or parts[-3] not in KITTI_SIDES.values():
            raise DataError(f"{where}: {image_rel!r} is not a raw KITTI image path "
                            f"(<date>/<drive>/image_0[23]/data/<frame>.png)")
        drive_dir, camera_dir, frame = image.parents[2], parts[-3], Path(image_rel).stem
        annotated_rel = None if depth_rel == "None" else depth_rel
    if not image.is_file():
        raise DataError(f"{where}: image {image} not found")
    if ground_truth == "velodyne":
        depth = drive_dir / "velodyne_points" / "data" / f"{frame}.bin"
        depth = depth if depth.is_file() else None
    else:
        depth = None if annotated_rel is None else _annotated_map(annotated, annotated_rel)
    camera = 2 if camera_dir == "image_02" else 3
    return KittiItem(image, depth, camera, f"{drive_dir.name}_{frame}_{camera_dir[-1]}", where)


def read_split_list(list_path: str | os.PathLike, root: str | os.PathLike, *,
                    ground_truth: GroundTruth = "annotated", annotated_dir: str | os.PathLike = "data_depth_annotated",
                    skip_missing_gt: bool = False) -> list[KittiItem]:
    """The samples of a split list in monodepth2's or BTS's format (module docstring), checked as they are read:
    a malformed line, a missing image or, without ``skip_missing_gt``, a row without ground truth raises a
    DataError naming ``list:line``. With ``skip_missing_gt`` such rows are left out, counted and reported in a
    warning (e.g. 45 of the 697 Eigen test frames have no annotated map). Blank lines and ``#`` comments are
    ignored."""
    list_path, root = Path(list_path), Path(root)
    annotated = Path(annotated_dir) if Path(annotated_dir).is_absolute() else root / annotated_dir
    if not list_path.is_file():
        raise DataError(f"{list_path}: split list not found")
    if ground_truth not in ("annotated", "velodyne"):
        raise DataError(f"ground_truth must be annotated or velodyne, got {ground_truth!r}")
    items, missing = [], []
    for number, line in enumerate(list_path.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        item = _parse_line(line.split(), f"{list_path}:{number}", root, annotated, ground_truth)
        if item.depth is None:
            if not skip_missing_gt:
                source = ("velodyne_points/data/<frame>.bin" if ground_truth == "velodyne"
                          else f"an annotated map under {annotated}")
                raise DataError(f"{item.where}: no ground truth for {item.image} ({source}); set skip_missing_gt: "
                                f"true to leave such rows out (the Eigen 'improved ground truth' subset)")
            missing.append(item.where)
            continue
        items.append(item)
    if missing:
        warnings.warn(f"{list_path}: {len(missing)} of {len(missing) + len(items)} listed samples have no "
                      f"{ground_truth} ground truth and are skipped (first: {missing[0]})", stacklevel=2)
    if not items:
        raise DataError(f"{list_path}: no sample with ground truth")
    return items


# ---- transform and dataset ---------------------------------------------------------------------------------------
class KittiTransform:
    """BTS's bottom-centre crop (``kb_crop`` (height, width): top = H - height, left = (W - width) // 2), then
    ``DenseAugment``: resize to ``image_size`` (default: keep the crop's size) and, for training, the random
    crop, rotation, flip and colour it is given. The crop needs no resampling, so the sparse ground truth stays
    exact; ``kb_crop`` None resizes the whole frame instead (monodepth2's 192x640 protocol)."""

    def __init__(self, augment: DenseAugment, kb_crop: Sequence[int] | None = KB_CROP):
        self.augment = augment
        self.kb_crop = None if kb_crop is None else (int(kb_crop[0]), int(kb_crop[1]))

    def box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) of the frame the bottom-centre crop keeps."""
        if self.kb_crop is None:
            return 0, height, 0, width
        ch, cw = self.kb_crop
        if ch > height or cw > width:
            raise DataError(f"kb_crop {ch}x{cw} (height x width) is larger than the {height}x{width} frame")
        top, left = height - ch, (width - cw) // 2
        return top, height, left, left + cw

    def window(self, height: int, width: int) -> tuple[float, float, float, float] | None:
        """The part of the frame an evaluation output covers (the crop box); None for training (random)."""
        return None if self.augment.train else tuple(float(v) for v in self.box(height, width))

    def __call__(self, sample: DenseSample) -> DenseSample:
        top, bottom, left, right = self.box(*sample.rgb.shape[:2])
        cut = (lambda a: None if a is None else a[top:bottom, left:right].copy())
        return self.augment(DenseSample(cut(sample.rgb), cut(sample.depth), cut(sample.normals), cut(sample.semantic)))


class KittiDepthDataset(DenseSampleDataset):
    """The samples of a split list (``read_split_list``) as ``{"image", "depth", "name", "path"}``; with
    ``full_depth`` (evaluation) also ``depth_full`` (the frame's ground truth at full resolution),
    ``depth_full_size`` (its height, width), ``depth_window`` (the part of the frame the image covers),
    ``depth_crop`` (the evaluation crop's name) and ``depth_max`` (the cap), which ``DensePredictionTask``
    scores by (the prediction upsampled to the full-resolution ground truth, as monodepth2 and BTS do).

    Args:
        root: the raw data's root (date folders, ``annotated_dir``).
        list_path: a split list (monodepth2 or BTS format).
        ground_truth: ``annotated`` (the depth benchmark's maps, value / 256 m) or ``velodyne`` (projected scans).
        transform: a ``KittiTransform``.
        eval_crop: ``kitti_garg`` (default), ``kitti_eigen`` or ``none``; max_depth: 80 m (or 50 m).
    """

    def __init__(self, root: str | os.PathLike, list_path: str | os.PathLike, *, ground_truth: GroundTruth = "annotated",
                 annotated_dir: str | os.PathLike = "data_depth_annotated", skip_missing_gt: bool = False,
                 transform: KittiTransform | None = None, full_depth: bool = False,
                 eval_crop: Literal["kitti_garg", "kitti_eigen", "none"] = "kitti_garg", max_depth: float = 80.0,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        if eval_crop not in ("kitti_garg", "kitti_eigen", "none"):
            raise DataError(f"eval_crop must be kitti_garg, kitti_eigen or none, got {eval_crop!r}")
        if not max_depth > 0:
            raise DataError(f"max_depth must be positive (80 or 50 m for KITTI), got {max_depth}")
        self.root = Path(root)
        self.items = read_split_list(list_path, root, ground_truth=ground_truth, annotated_dir=annotated_dir,
                                     skip_missing_gt=skip_missing_gt)
        self.ground_truth, self.transform, self.full_depth = ground_truth, transform, full_depth
        if full_depth and (transform is None or transform.augment.train):
            raise DataError("full_depth (the evaluation protocol) needs a non-random evaluation transform")
        self.eval_crop, self.max_depth = eval_crop, float(max_depth)
        self.mean, self.std = tuple(mean), tuple(std)
        self.maps = ["depth"]

    def __len__(self) -> int:
        return len(self.items)

    def read_depth(self, item: KittiItem) -> np.ndarray:
        if self.ground_truth == "velodyne":
            # <root>/<date>/<drive>/velodyne_points/data/<frame>.bin: the calibration sits in <date>
            return velodyne_depth(item.depth, item.depth.parents[3], item.camera)
        return read_depth_png(item.depth, DEPTH_SCALE_KITTI)

    def load(self, index: int) -> DenseSample:
        item = self.items[index]
        sample = DenseSample(read_rgb(item.image), self.read_depth(item))
        check_sample(sample, f"{item.where} ({item.image}, ground truth {item.depth})")
        return sample

    def __getitem__(self, index: int) -> dict:
        sample = self.load(index)
        frame_depth = sample.depth
        transformed = self.transform(sample) if self.transform is not None else sample
        out = sample_to_tensors(transformed, self.mean, self.std)
        out["name"], out["path"] = self.sample_id(index)
        window = self.transform.window(*frame_depth.shape) if self.transform is not None else None
        if window is not None:
            out["depth_window"] = torch.tensor(window, dtype=torch.float32)
        if self.full_depth:
            out["depth_full"] = torch.from_numpy(np.ascontiguousarray(frame_depth, dtype=np.float32))
            out["depth_full_size"] = torch.tensor(frame_depth.shape, dtype=torch.long)
            out["depth_crop"] = self.eval_crop
            out["depth_max"] = torch.tensor(self.max_depth)
        return out

    def sample_id(self, index: int) -> tuple[str, str]:
        item = self.items[index]
        return item.name, str(item.image)


def collate_kitti(samples: list[dict]) -> dict:
    """``default_collate``, with the full-resolution ground truths of frames of different sizes (KITTI's drives
    are 370x1224 to 376x1242) padded with 0 (invalid) at the bottom and right to the largest;
    ``depth_full_size`` keeps each frame's own size, on which its evaluation crop is computed."""
    if samples and "depth_full" in samples[0]:
        height = max(s["depth_full"].shape[0] for s in samples)
        width = max(s["depth_full"].shape[1] for s in samples)
        padded = []
        for s in samples:
            depth = s["depth_full"]
            s = dict(s)
            s["depth_full"] = torch.nn.functional.pad(depth, (0, width - depth.shape[1], 0, height - depth.shape[0]))
            padded.append(s)
        samples = padded
    return default_collate(samples)
