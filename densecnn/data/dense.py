"""Dense-prediction data: the per-sample folder format, normals from depth, and joint augmentation.

Folder format (DESIGN.md), one file per sample and map, matched by file stem::

    root/<split>/rgb/<name>.png        the image
    root/<split>/depth/<name>.png      uint16 millimetres, 0 = missing
    root/<split>/normals/<name>.png    RGB-encoded unit normals (see ``encode_normals``), (0, 0, 0) = missing
    root/<split>/labels/<name>.png     uint8 (or palette) class ids, 255 = ignore
    root/classes.txt                   optional: one class name per line
    root/camera.json                   optional: {"fx", "fy", "cx", "cy", "width", "height"} for normals from depth

Normals are in the camera frame of the image: x to the right, y down, z forward (along the optical axis),
oriented towards the camera. A horizontal flip therefore negates x, and rotating the image rotates (x, y).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset

from ..constants import IGNORE_LABEL  # defined once for data, losses, metrics and pictures
from .image_folder import DataError, exif_orientation, read_rgb
from .transforms import IMAGENET_MEAN, IMAGENET_STD

MAP_FOLDERS = {"depth": "depth", "normals": "normals", "semantic": "labels"}


# ---- camera ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics in pixels for an image of ``width`` x ``height``."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def scaled(self, height: int, width: int) -> "Intrinsics":
        sx, sy = width / self.width, height / self.height
        return Intrinsics(self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy, width, height)


# The NYU Depth v2 toolbox's colour-camera calibration (camera_params.m: fx_rgb, fy_rgb, cx_rgb, cy_rgb).
NYU_INTRINSICS = Intrinsics(5.1885790117450188e02, 5.1946961112127485e02, 3.2558244941119034e02,
                            2.5373616633400465e02, 640, 480)


def read_intrinsics(path: str | os.PathLike) -> Intrinsics:
    """Read a camera file (JSON with ``fx``, ``fy``, ``cx``, ``cy``, ``width``, ``height``).

    Args:
        path: the JSON file.

    Raises:
        DataError: an unreadable file or a missing or non-numeric key, naming the file.
    """
    try:
        values = json.loads(Path(path).read_text())
        return Intrinsics(*(float(values[k]) for k in ("fx", "fy", "cx", "cy")), int(values["width"]),
                          int(values["height"]))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path}: not a camera file with fx, fy, cx, cy, width, height ({err})") from err


# ---- map files --------------------------------------------------------------------------------------------------
def _read_array(path: str | os.PathLike) -> np.ndarray:
    """The map's pixels as displayed: its EXIF orientation applied, as ``read_rgb`` does for the image, so a
    map that carries the same tag as its image stays aligned with it (``check_orientations``)."""
    try:
        with Image.open(path) as image:
            return np.asarray(ImageOps.exif_transpose(image))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{path}: cannot decode image ({err})") from err


#: depth PNG units: NYU / the folder format store millimetres (value / 1000 = metres), KITTI's depth
#: benchmark stores value / 256 = metres (its devkit's ``depth_read``)
DEPTH_SCALE_MM = 1000.0
DEPTH_SCALE_KITTI = 256.0


def read_depth_png(path: str | os.PathLike, scale: float = DEPTH_SCALE_MM) -> np.ndarray:
    """A 16-bit depth PNG as float32 metres, ``value / scale`` (1000: millimetres, 256: KITTI); 0 stays 0 =
    missing. An 8-bit PNG is refused: read as millimetres it would cap every depth at 0.255 m."""
    if not scale > 0:
        raise DataError(f"{path}: depth_scale must be positive, got {scale}")
    array = _read_array(path)
    if array.ndim != 2 or array.dtype not in (np.uint16, np.int32):
        raise DataError(f"{path}: depth must be a single-channel 16-bit PNG (value / {scale:g} = metres), got "
                        f"{array.dtype} with shape {array.shape}"
                        + ("; an 8-bit PNG cannot hold depth (at most 255 units): was it saved as a "
                           "visualisation?" if array.dtype == np.uint8 else ""))
    return array.astype(np.float32) / np.float32(scale)


def write_depth_png(depth_m: np.ndarray, path: str | os.PathLike) -> None:
    """Metres -> uint16 millimetre PNG; missing (0, NaN, inf) -> 0; clipped at 65.535 m."""
    depth = np.nan_to_num(np.asarray(depth_m, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    Image.fromarray(np.clip(np.round(depth * 1000.0), 0, 65535).astype(np.uint16)).save(path)


def encode_normals(normals: np.ndarray) -> np.ndarray:
    """(H, W, 3) unit vectors -> uint8 RGB with ``rgb = round((n + 1) / 2 * 255)``; missing (zero) -> black,
    which no unit vector encodes to."""
    normals = np.nan_to_num(np.asarray(normals, dtype=np.float32))
    valid = np.linalg.norm(normals, axis=-1) > 0.5
    rgb = np.clip(np.round((normals + 1.0) * 127.5), 0, 255).astype(np.uint8)
    rgb[~valid] = 0
    return rgb


def decode_normals(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB -> (H, W, 3) float32 unit vectors; black pixels -> zero vectors (missing)."""
    normals = rgb.astype(np.float32) / 127.5 - 1.0
    length = np.linalg.norm(normals, axis=-1, keepdims=True)
    missing = (rgb == 0).all(-1, keepdims=True) | (length < 1e-3)
    return np.where(missing, 0.0, normals / np.maximum(length, 1e-6)).astype(np.float32)


# The linear part, in x-right/y-down image coordinates, of the turn or mirror PIL's ``exif_transpose`` applies
# for each EXIF orientation (2 mirror, 3 turn 180, 4 flip, 5 transpose, 6 turn 90 clockwise, 7 transverse,
# 8 turn 90 counter-clockwise). Normals' (x, y) turn with the pixels, as in ``rotate_normals``/``hflip_sample``.
_EXIF_NORMAL_TURNS = {2: ((-1, 0), (0, 1)), 3: ((-1, 0), (0, -1)), 4: ((1, 0), (0, -1)), 5: ((0, 1), (1, 0)),
                      6: ((0, -1), (1, 0)), 7: ((0, -1), (-1, 0)), 8: ((0, 1), (-1, 0))}


def read_normals_png(path: str | os.PathLike) -> np.ndarray:
    """Normals as displayed: with an EXIF orientation the pixels are turned and so are the vectors' (x, y)."""
    array = _read_array(path)
    if array.ndim != 3 or array.shape[-1] < 3:
        raise DataError(f"{path}: normals must be an RGB PNG, got shape {array.shape}")
    normals = decode_normals(array[..., :3])
    turn = _EXIF_NORMAL_TURNS.get(exif_orientation(path) or 1)
    if turn is not None:
        normals[..., :2] = normals[..., :2] @ np.asarray(turn, dtype=np.float32).T
    return normals


def read_labels_png(path: str | os.PathLike) -> np.ndarray:
    """Class ids from a grayscale or palette ('P' mode) PNG; 255 = ignore."""
    array = _read_array(path)
    if array.ndim != 2:
        raise DataError(f"{path}: labels must be a single-channel (grayscale or palette) PNG, got shape "
                        f"{array.shape}")
    return array.astype(np.int64)


def write_labels_png(labels: np.ndarray, path: str | os.PathLike, palette: np.ndarray | None = None) -> None:
    """Indexed PNG of uint8 class ids; with ``palette`` ((K, 3) uint8) it is a 'P'-mode image viewers colour."""
    image = Image.fromarray(np.asarray(labels, dtype=np.uint8), mode="L")
    if palette is not None:
        image = image.convert("P")
        flat = np.zeros((256, 3), dtype=np.uint8)
        flat[: len(palette)] = palette[:256]
        image.putpalette(flat.reshape(-1).tolist())
    image.save(path)


# ---- surface normals from depth -----------------------------------------------------------------------------
def backproject(depth: np.ndarray, intrinsics: Intrinsics) -> np.ndarray:
    """(H, W) depth (z, metres) -> (H, W, 3) camera-frame points (x right, y down, z forward)."""
    height, width = depth.shape
    cam = intrinsics.scaled(height, width) if (height, width) != (intrinsics.height, intrinsics.width) else intrinsics
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    return np.stack([(u - cam.cx) / cam.fx * depth, (v - cam.cy) / cam.fy * depth, depth], axis=-1)


def normals_from_depth(depth: np.ndarray, intrinsics: Intrinsics = NYU_INTRINSICS, *, window: int = 7,
                       min_points: int = 6, max_relative_step: float | None = 0.05) -> np.ndarray:
    """Surface normals by least-squares plane fits to each pixel's neighbours in the point cloud.

    This is the method of Silberman et al. (NYU Depth v2 toolbox, ``compute_local_planes``), which Eigen &
    Fergus use for their training targets (Sec. 4.2, S3 L4338-4345): for every pixel, the points of its
    ``window`` x ``window`` neighbourhood with valid depth are fitted by the total-least-squares plane, whose
    normal is the eigenvector of the smallest eigenvalue of their 3x3 covariance. As in the toolbox,
    neighbours whose depth differs from the centre's by more than ``max_relative_step`` times the centre's
    depth are left out (they lie across an occlusion edge). Normals point towards the camera; pixels
    with missing depth or fewer than ``min_points`` usable neighbours get a zero vector (missing).

    Vectorised: the neighbourhood sums are taken for every offset of the window at once.
    """
    depth = np.nan_to_num(np.asarray(depth, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    height, width = depth.shape
    points = backproject(depth, intrinsics)
    valid = depth > 0
    r = window // 2
    pad = ((r, r), (r, r))
    dpad = np.pad(depth, pad)
    ppad = np.pad(points, pad + ((0, 0),))
    vpad = np.pad(valid, pad)
    count = np.zeros((height, width))
    s1 = np.zeros((height, width, 3))
    s2 = np.zeros((height, width, 3, 3))
    for dy in range(window):
        for dx in range(window):
            nd = dpad[dy:dy + height, dx:dx + width]
            ok = vpad[dy:dy + height, dx:dx + width] & valid
            if max_relative_step is not None:
                ok &= np.abs(nd - depth) <= max_relative_step * depth
            p = ppad[dy:dy + height, dx:dx + width] * ok[..., None]
            count += ok
            s1 += p
            s2 += p[..., :, None] * p[..., None, :]
    n = np.maximum(count, 1)[..., None]
    mean = s1 / n
    cov = s2 / n[..., None] - mean[..., :, None] * mean[..., None, :]
    _, vectors = np.linalg.eigh(cov)
    normals = vectors[..., 0]  # eigenvalues ascending: the direction of least spread
    towards_camera = np.where((normals * points).sum(-1, keepdims=True) > 0, -1.0, 1.0)
    normals = normals * towards_camera
    normals[~(valid & (count >= min_points))] = 0.0
    return normals.astype(np.float32)


def file_identity(path: str | os.PathLike) -> str:
    """What a cache keys a source file by (as the video frame cache, ``FrameStore``): its absolute path, size
    and modification time, so an edited or replaced file is never served stale results."""
    path = Path(path).resolve()
    stat = path.stat()
    return f"{path}|{stat.st_size}|{stat.st_mtime_ns}"


class NormalsCache:
    """Normals from depth (``normals_from_depth``) computed once per sample and kept on disk as ``.npy``.

    The plane fits take about 1.7 s per 640x480 frame; done on every visit they starve any GPU. An entry is
    keyed by the depth's source (``file_identity`` plus whatever selects the depth inside it) and every
    parameter the normals depend on (intrinsics, window, min_points, max_relative_step), so an edited depth
    file or other parameters compute them again. An entry is written to a temporary file and renamed into
    place (``os.replace`` is atomic), so a reader -- another DataLoader worker, or the next run after one was
    killed mid-write -- never sees a half-written file; a damaged or mismatched entry is recomputed.
    """

    version = 1

    def __init__(self, cache_dir: str | os.PathLike, intrinsics: Intrinsics = NYU_INTRINSICS, *, window: int = 7,
                 min_points: int = 6, max_relative_step: float | None = 0.05):
        self.cache_dir = Path(cache_dir)
        self.intrinsics = intrinsics
        self.params = {"window": window, "min_points": min_points, "max_relative_step": max_relative_step}

    def path_for(self, source: str) -> Path:
        key = f"v{self.version}|{source}|{self.intrinsics}|{sorted(self.params.items())}"
        return self.cache_dir / f"{hashlib.sha1(key.encode()).hexdigest()}.npy"

    def _load(self, path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
        try:
            normals = np.load(path)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError):
            return None  # a damaged entry is recomputed (and replaced), never trusted
        return normals if normals.shape == shape and normals.dtype == np.float32 else None

    def __call__(self, depth: np.ndarray, source: str) -> np.ndarray:
        """The normals of ``depth``, which ``source`` identifies (e.g. ``file_identity(depth_path)``)."""
        path = self.path_for(source)
        normals = self._load(path, depth.shape + (3,))
        if normals is not None:
            return normals
        normals = normals_from_depth(depth, self.intrinsics, **self.params)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp.npy")
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            np.save(tmp, normals)
            os.replace(tmp, path)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise DataError(f"{self.cache_dir}: cannot write the normals cache ({err}); set normals_cache_dir to "
                            f"a writable folder, or cache_normals: false") from err
        return normals


# ---- joint augmentation -------------------------------------------------------------------------------------
@dataclass
class DenseSample:
    """One sample as numpy arrays: ``rgb`` (H, W, 3) uint8 and whichever maps the dataset has."""

    rgb: np.ndarray
    depth: np.ndarray | None = None     # (H, W) float32 metres, 0 = missing
    normals: np.ndarray | None = None   # (H, W, 3) float32, zero vector = missing
    semantic: np.ndarray | None = None  # (H, W) int64, 255 = ignore


def _resize_maps(sample: DenseSample, height: int, width: int) -> DenseSample:
    """RGB bilinearly (area when shrinking), maps by nearest neighbour so that no value is invented between a
    surface and a hole; normals are renormalised."""
    if sample.rgb.shape[:2] == (height, width):
        return sample
    shrink = height < sample.rgb.shape[0]
    rgb = cv2.resize(sample.rgb, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)

    def nearest(a):
        return None if a is None else cv2.resize(a, (width, height), interpolation=cv2.INTER_NEAREST)

    semantic = None if sample.semantic is None else nearest(sample.semantic.astype(np.uint8)).astype(np.int64)
    return DenseSample(rgb, nearest(sample.depth), nearest(sample.normals), semantic)


def _warp_maps(sample: DenseSample, matrix: np.ndarray, height: int, width: int) -> DenseSample:
    def warp(a, interpolation, border):
        if a is None:
            return None
        return cv2.warpAffine(a, matrix, (width, height), flags=interpolation, borderMode=cv2.BORDER_CONSTANT,
                              borderValue=border)

    semantic = None if sample.semantic is None else warp(sample.semantic.astype(np.uint8), cv2.INTER_NEAREST,
                                                         IGNORE_LABEL).astype(np.int64)
    return DenseSample(warp(sample.rgb, cv2.INTER_LINEAR, 0), warp(sample.depth, cv2.INTER_NEAREST, 0),
                       warp(sample.normals, cv2.INTER_NEAREST, 0), semantic)


def rotate_normals(normals: np.ndarray, degrees: float) -> np.ndarray:
    """The normals of an image rotated by ``degrees`` counter-clockwise on screen (a camera roll): (x, y)
    turn with the image, z is unchanged. In the x-right/y-down frame a counter-clockwise turn by t maps
    (x, y) to (x cos t + y sin t, -x sin t + y cos t)."""
    t = math.radians(degrees)
    x, y = normals[..., 0].copy(), normals[..., 1].copy()
    out = normals.copy()
    out[..., 0] = x * math.cos(t) + y * math.sin(t)
    out[..., 1] = -x * math.sin(t) + y * math.cos(t)
    return out


def hflip_sample(sample: DenseSample) -> DenseSample:
    """Mirror left-right; the normals' x component changes sign (the mirrored surface faces the other way)."""
    normals = None
    if sample.normals is not None:
        normals = sample.normals[:, ::-1].copy()
        normals[..., 0] *= -1
    flip = (lambda a: None if a is None else a[:, ::-1].copy())
    return DenseSample(flip(sample.rgb), flip(sample.depth), normals, flip(sample.semantic))


class DenseAugment:
    """Eigen & Fergus's training augmentation (Sec. 5, following Eigen et al. 2014), applied jointly to the
    image and every map, then a random crop:

    * scale: the image and maps are enlarged by ``s`` in ``scale`` and the depths divided by ``s`` (an
      object seen s times larger is s times closer);
    * rotation by ``r`` in ``[-rotation, rotation]`` degrees (normals' x, y turn with the image);
    * random crop to ``crop_size`` (maps padded as missing when the image is smaller);
    * horizontal flip with probability ``flip_p`` (normals' x negated);
    * colour: RGB multiplied by a random ``c`` in ``colour`` ^ 3, plus optional brightness/contrast jitter
      (image only).

    ``train=False`` resizes to ``size`` and optionally centre-crops ``crop_size``, with no randomness.
    """

    def __init__(self, size: Sequence[int], crop_size: Sequence[int] | None = None, *, train: bool = True,
                 scale: Sequence[float] = (1.0, 1.5), rotation: float = 5.0, flip_p: float = 0.5,
                 colour: Sequence[float] = (0.8, 1.2), brightness: float = 0.0, contrast: float = 0.0,
                 eval_crop: bool = False, seed: int | None = None):
        self.size = (int(size[0]), int(size[1]))
        self.crop_size = tuple(int(c) for c in crop_size) if crop_size else self.size
        self.train, self.eval_crop = train, eval_crop
        self.scale, self.rotation, self.flip_p = tuple(scale), float(rotation), float(flip_p)
        self.colour, self.brightness, self.contrast = tuple(colour), float(brightness), float(contrast)
        self.seed = seed
        self._rng = np.random.default_rng(seed) if seed is not None else None

    def _generator(self) -> np.random.Generator:
        # Without a fixed seed, draw from torch's RNG: it is seeded by seed_everything and differs per
        # DataLoader worker, so workers do not repeat each other's augmentations.
        if self._rng is not None:
            return self._rng
        return np.random.default_rng(int(torch.randint(0, 2 ** 62, ()).item()))

    def __call__(self, sample: DenseSample) -> DenseSample:
        sample = _resize_maps(sample, *self.size)
        if not self.train:
            return self._centre_crop(sample) if self.eval_crop else sample
        rng = self._generator()
        s = float(rng.uniform(*self.scale))
        angle = float(rng.uniform(-self.rotation, self.rotation)) if self.rotation else 0.0
        ch, cw = self.crop_size
        height, width = sample.rgb.shape[:2]
        sh, sw = round(height * s), round(width * s)
        # one affine warp does scale + rotation about the centre and the crop offset at once
        top = int(rng.integers(0, max(sh - ch, 0) + 1))
        left = int(rng.integers(0, max(sw - cw, 0) + 1))
        # about the image centre in OpenCV's pixel-centre convention, so that a rotation is a camera roll
        matrix = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), angle, s)
        matrix[0, 2] += (sw - width) / 2 - left
        matrix[1, 2] += (sh - height) / 2 - top
        out = _warp_maps(sample, matrix, ch, cw)
        if out.depth is not None:
            out.depth = out.depth / s
        if out.normals is not None and angle:
            out.normals = rotate_normals(out.normals, angle)
        if rng.random() < self.flip_p:
            out = hflip_sample(out)
        out.rgb = self._colour(out.rgb, rng)
        return out

    def centre_crop_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """``(top, left, crop height, crop width)`` of the evaluation centre crop of a ``height`` x ``width`` map
        (the crop shrinks to the map where the map is smaller)."""
        ch, cw = min(self.crop_size[0], height), min(self.crop_size[1], width)
        return (height - ch) // 2, (width - cw) // 2, ch, cw

    def _centre_crop(self, sample: DenseSample) -> DenseSample:
        top, left, ch, cw = self.centre_crop_box(*sample.rgb.shape[:2])
        cut = (lambda a: None if a is None else a[top:top + ch, left:left + cw].copy())
        return DenseSample(cut(sample.rgb), cut(sample.depth), cut(sample.normals), cut(sample.semantic))

    def _colour(self, rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = rgb.astype(np.float32)
        if self.colour and self.colour != (1.0, 1.0):
            x = x * rng.uniform(*self.colour, size=3).astype(np.float32)
        if self.brightness:
            x = x * float(rng.uniform(1 - self.brightness, 1 + self.brightness))
        if self.contrast:
            mean = x.mean()
            x = (x - mean) * float(rng.uniform(1 - self.contrast, 1 + self.contrast)) + mean
        return np.clip(x, 0, 255).astype(np.uint8)


def source_window(transform, height: int, width: int) -> tuple[float, float, float, float] | None:
    """The part of a ``height`` x ``width`` source frame that an evaluation transform's output covers, as
    (top, bottom, left, right) in source pixels; None for a random (training) transform, whose output has no
    fixed place. ``DenseAugment(train=False)`` resizes to ``size`` and, with ``eval_crop``, takes the centre
    ``crop_size`` (``DenseAugment.centre_crop_box``)."""
    if transform is None:
        return 0.0, float(height), 0.0, float(width)
    if not isinstance(transform, DenseAugment) or transform.train:
        return None
    rh, rw = transform.size
    top, left, ch, cw = transform.centre_crop_box(rh, rw) if transform.eval_crop else (0, 0, rh, rw)
    sy, sx = height / rh, width / rw
    return top * sy, (top + ch) * sy, left * sx, (left + cw) * sx


def sample_to_tensors(sample: DenseSample, mean: Sequence[float] = IMAGENET_MEAN,
                      std: Sequence[float] = IMAGENET_STD) -> dict[str, torch.Tensor]:
    """Normalised CHW image and the maps as tensors: ``depth`` (H, W) metres, ``normals`` (3, H, W),
    ``semantic`` (H, W) int64."""
    image = torch.from_numpy(np.array(sample.rgb, dtype=np.float32)).permute(2, 0, 1).div(255)
    image = (image - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    out = {"image": image}
    if sample.depth is not None:
        out["depth"] = torch.from_numpy(np.ascontiguousarray(sample.depth, dtype=np.float32))
    if sample.normals is not None:
        out["normals"] = torch.from_numpy(np.ascontiguousarray(sample.normals, dtype=np.float32)).permute(2, 0, 1)
    if sample.semantic is not None:
        out["semantic"] = torch.from_numpy(np.ascontiguousarray(sample.semantic, dtype=np.int64))
    return out


def check_sample(sample: DenseSample, name: str, num_classes: int | None = None) -> None:
    """Maps must match the image's size, depth must be non-negative, labels within ``[0, num_classes)`` or
    255: otherwise a DataError naming the sample."""
    size = sample.rgb.shape[:2]
    for key in ("depth", "normals", "semantic"):
        array = getattr(sample, key)
        if array is not None and array.shape[:2] != size:
            raise DataError(f"{name}: the {key} map is {array.shape[1]}x{array.shape[0]} but the RGB image is "
                            f"{size[1]}x{size[0]} (width x height); maps must be aligned with the image")
    if sample.depth is not None and bool((sample.depth < 0).any()):
        raise DataError(f"{name}: negative depth values")
    if sample.semantic is not None and num_classes is not None:
        bad = np.unique(sample.semantic[(sample.semantic != IGNORE_LABEL)
                                        & ((sample.semantic < 0) | (sample.semantic >= num_classes))])
        if bad.size:
            raise DataError(f"{name}: label values {bad[:10].tolist()} are outside the {num_classes} classes "
                            f"(0..{num_classes - 1}, 255 = ignore)")


# ---- the folder dataset -------------------------------------------------------------------------------------
def check_orientations(rgb_path: Path, map_paths) -> None:
    """The image is read as displayed (``read_rgb`` applies its EXIF orientation), and so is each map; they
    stay aligned only when both carry the same tag. A phone photo tagged "rotate 90" next to an untagged map
    is ambiguous (the map may follow the stored or the displayed pixels) and, for a square image, would be
    silently misaligned: refuse it, naming both files."""
    image_tag = exif_orientation(rgb_path) or 1
    for path in map_paths:
        map_tag = exif_orientation(path) or 1
        if map_tag != image_tag:
            raise DataError(f"{rgb_path}: EXIF orientation {image_tag} but its map {path} has orientation "
                            f"{map_tag}; the image is read as displayed, so the map would not line up with it. "
                            f"Give the map the same orientation tag, or save the image with its pixels "
                            f"rotated and no tag")


def read_class_names(root: str | os.PathLike) -> list[str] | None:
    """The semantic class names of a dense dataset, one per line of ``root/classes.txt``, or ``None`` without it.

    Args:
        root: the dataset root.
    """
    path = Path(root) / "classes.txt"
    if not path.is_file():
        return None
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


class DenseSampleDataset(Dataset, ABC):
    """What every dense dataset shares: ``load(index) -> DenseSample``, the joint ``transform``, conversion to
    tensors, and the sample's name and path (``sample_id``) for prediction files and error messages."""

    transform = None
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD

    @abstractmethod
    def load(self, index: int) -> DenseSample:
        """The raw (untransformed) sample."""

    @abstractmethod
    def sample_id(self, index: int) -> tuple[str, str]:
        """(name, path) of the sample."""

    def __getitem__(self, index: int) -> dict:
        sample = self.load(index)
        if self.transform is not None:
            sample = self.transform(sample)
        out = sample_to_tensors(sample, self.mean, self.std)
        out["name"], out["path"] = self.sample_id(index)
        return out


class DenseFolderDataset(DenseSampleDataset):
    """Samples of ``split_dir/{rgb,depth,normals,labels}/<name>.png`` as
    ``{"image", "depth", "normals", "semantic", "name", "path"}`` (the maps the folder has).

    Args:
        split_dir: the split's folder.
        maps: which maps to load (``depth``, ``normals``, ``semantic``); default: every map folder present.
        transform: a ``DenseAugment`` (or any callable on ``DenseSample``).
        num_classes: labels must be below it (or 255).
        normals_from_depth: when ``normals`` are requested and the folder has none, compute them from depth
            (``normals_from_depth``) with ``intrinsics`` (default: ``root/camera.json``, else NYU's).
        mean, std: image normalisation.
        depth_scale: depth PNG value / ``depth_scale`` = metres (1000: millimetres, the default; 256: KITTI).
        cache_normals, normals_cache_dir: keep the normals computed from depth on disk (``NormalsCache``), in
            ``normals_cache_dir`` (default ``split_dir/.normals_cache``), so each is computed once.

    Maps are read as displayed, like the image (EXIF orientation applied); an image and its maps must carry
    the same orientation tag, otherwise a DataError names both files.
    """

    def __init__(self, split_dir: str | os.PathLike, maps: Sequence[str] | None = None, transform=None,
                 num_classes: int | None = None, normals_from_depth: bool = True,
                 intrinsics: Intrinsics | None = None, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, depth_scale: float = DEPTH_SCALE_MM,
                 cache_normals: bool = True, normals_cache_dir: str | os.PathLike | None = None):
        self.split_dir = Path(split_dir)
        rgb_dir = self.split_dir / "rgb"
        if not rgb_dir.is_dir():
            raise DataError(f"{rgb_dir}: folder not found (expected {self.split_dir}/rgb/<name>.png and map "
                            f"folders depth/, normals/, labels/)")
        self.rgb_paths = sorted(p for p in rgb_dir.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        if not self.rgb_paths:
            raise DataError(f"{rgb_dir}: no images")
        present = [m for m, folder in MAP_FOLDERS.items() if (self.split_dir / folder).is_dir()]
        self.maps = list(present if maps is None else maps)
        self.derive_normals = False
        for m in self.maps:
            if m not in MAP_FOLDERS:
                raise DataError(f"unknown map {m!r}; maps: {', '.join(MAP_FOLDERS)}")
            if m not in present:
                if m == "normals" and normals_from_depth and "depth" in present:
                    self.derive_normals = True
                    continue
                raise DataError(f"{self.split_dir}: no {MAP_FOLDERS[m]}/ folder for the {m!r} target "
                                f"(folders present: rgb, {', '.join(MAP_FOLDERS[p] for p in present) or 'none'})")
        if intrinsics is None:
            camera = self.split_dir.parent / "camera.json"
            intrinsics = read_intrinsics(camera) if camera.is_file() else NYU_INTRINSICS
        self.intrinsics = intrinsics
        if not depth_scale > 0:
            raise DataError(f"depth_scale must be positive (1000 for millimetres, 256 for KITTI), got {depth_scale}")
        self.depth_scale = float(depth_scale)
        self.normals_cache = None
        if self.derive_normals and cache_normals:
            self.normals_cache = NormalsCache(normals_cache_dir or self.split_dir / ".normals_cache", intrinsics)
        self.transform, self.num_classes = transform, num_classes
        self.mean, self.std = tuple(mean), tuple(std)

    def __len__(self) -> int:
        return len(self.rgb_paths)

    def map_path(self, key: str, rgb_path: Path) -> Path:
        return self.split_dir / MAP_FOLDERS[key] / (rgb_path.stem + ".png")

    def load(self, index: int) -> DenseSample:
        rgb_path = self.rgb_paths[index]
        sample = DenseSample(read_rgb(rgb_path))
        readers = {"depth": lambda p: read_depth_png(p, self.depth_scale), "normals": read_normals_png,
                   "semantic": read_labels_png}
        wanted = set(self.maps) | ({"depth"} if self.derive_normals else set())
        paths = {}
        for key in wanted:
            if key == "normals" and self.derive_normals:
                continue
            paths[key] = self.map_path(key, rgb_path)
            if not paths[key].is_file():
                raise DataError(f"{rgb_path.stem} ({self.split_dir}): {paths[key]} is missing")
        check_orientations(rgb_path, paths.values())
        for key, path in paths.items():
            setattr(sample, key, readers[key](path))
        check_sample(sample, f"sample {rgb_path.stem} ({rgb_path})", self.num_classes)
        if self.derive_normals:
            if self.normals_cache is None:
                sample.normals = normals_from_depth(sample.depth, self.intrinsics)
            else:
                source = f"{file_identity(paths['depth'])}|scale={self.depth_scale}"
                sample.normals = self.normals_cache(sample.depth, source)
            if "depth" not in self.maps:
                sample.depth = None
        return sample

    def __getitem__(self, index: int) -> dict:
        """As ``DenseSampleDataset``'s, plus ``depth_window`` with depth under an evaluation transform: the part
        of the frame the sample covers, in the pixels of the 640x480 NYU frame the Eigen crop is defined on
        (``densecnn.metrics.eigen_crop_mask``), so that ``eigen_crop`` lands on the same frame pixels when
        ``eval_crop`` centre-crops. The folder's frames are taken as that frame at their own resolution (the
        proportional scaling ``eigen_crop`` applies without a window)."""
        out = super().__getitem__(index)
        window = source_window(self.transform, NYU_INTRINSICS.height, NYU_INTRINSICS.width)
        if "depth" in out and window is not None:
            out["depth_window"] = torch.tensor(window, dtype=torch.float32)
        return out

    def sample_id(self, index: int) -> tuple[str, str]:
        return self.rgb_paths[index].stem, str(self.rgb_paths[index])
