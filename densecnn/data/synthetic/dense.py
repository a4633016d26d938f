"""The embedded dense-prediction dataset: ray-cast rooms with exact depth, surface normals and labels.

Each image is a room (floor, ceiling, walls) seen from a camera at a random height, yaw and pitch, with
random boxes standing on the floor and spheres on the floor or on a box. Rays are cast through every
pixel of a pinhole camera (NYU's intrinsics scaled to the image), so the depth (z in metres), the
normals (camera frame: x right, y down, z forward, facing the camera) and the labels are exact. The
image is shaded (Lambertian light plus distance fall-off, tiled floor, textured walls, 2x2 supersampled),
so appearance carries the geometry the networks must recover. Like a Kinect, the depth has holes: a few
random blobs and a thin shadow beside occluding edges, written as 0 (missing).

``write_dense_dataset`` writes the folder format of ``densecnn.data.dense`` (rgb/, depth/, normals/,
labels/, classes.txt, camera.json); the same arguments give the same bytes.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..dense import NYU_INTRINSICS, DenseSample, Intrinsics, encode_normals, write_depth_png, write_labels_png
from .common import write_atomically

DENSE_CLASSES = ("floor", "ceiling", "wall", "box", "sphere")
DENSE_PALETTE = np.array([[200, 160, 80], [140, 200, 230], [120, 120, 200], [220, 60, 60], [60, 200, 90]],
                         dtype=np.uint8)
DEFAULT_DENSE_SPLITS = {"train": 400, "val": 80, "test": 80}
_FLOOR, _CEILING, _WALL, _BOX, _SPHERE = range(5)


def _rotation_y(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rotation_x(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


class _Hits:
    """Nearest hit so far per ray: distance t (= camera z), room-frame normal, label, surface id."""

    def __init__(self, n: int):
        self.t = np.full(n, np.inf)
        self.normal = np.zeros((n, 3))
        self.label = np.zeros(n, dtype=np.int64)
        self.surface = np.full(n, -1)

    def offer(self, t: np.ndarray, normal: np.ndarray, label: int, surface: int) -> None:
        closer = (t > 1e-6) & (t < self.t)
        self.t[closer] = t[closer]
        self.normal[closer] = normal[closer] if normal.ndim == 2 else normal
        self.label[closer] = label
        self.surface[closer] = surface


def _plane(hits: _Hits, rays: np.ndarray, axis: int, offset: float, inward: np.ndarray, label: int, sid: int):
    with np.errstate(divide="ignore", invalid="ignore"):
        t = offset / rays[:, axis]
    hits.offer(np.where(np.isfinite(t), t, np.inf), inward, label, sid)


def _box(hits: _Hits, rays: np.ndarray, centre: np.ndarray, half: np.ndarray, yaw: float, sid: int):
    rot = _rotation_y(yaw)
    origin = rot.T @ (-centre)
    direction = rays @ rot  # rows: rot.T @ d
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (-half - origin) / direction
        t2 = (half - origin) / direction
    tmin_axis = np.minimum(t1, t2)
    t_near = tmin_axis.max(1)
    t_far = np.maximum(t1, t2).min(1)
    hit = (t_far >= t_near) & (t_near > 0)
    axis = tmin_axis.argmax(1)
    local = np.zeros_like(rays)
    local[np.arange(len(rays)), axis] = -np.sign(direction[np.arange(len(rays)), axis])
    hits.offer(np.where(hit, t_near, np.inf), local @ rot.T, _BOX, sid)


def _sphere(hits: _Hits, rays: np.ndarray, centre: np.ndarray, radius: float, sid: int):
    a = (rays ** 2).sum(1)
    b = rays @ centre
    disc = b ** 2 - a * (centre @ centre - radius ** 2)
    t = np.where(disc >= 0, (b - np.sqrt(np.maximum(disc, 0))) / a, np.inf)
    points = rays * t[:, None]
    hits.offer(t, (points - centre) / radius, _SPHERE, sid)


def render_room(rng: np.random.Generator, height: int, width: int, intrinsics: Intrinsics | None = None,
                supersample: int = 2) -> DenseSample:
    """One random room as a ``DenseSample`` (rgb uint8, depth metres with holes, normals, labels)."""
    cam = (intrinsics or NYU_INTRINSICS).scaled(height, width)
    ss = supersample
    u, v = np.meshgrid((np.arange(width * ss) + 0.5) / ss - 0.5, (np.arange(height * ss) + 0.5) / ss - 0.5)
    rays_cam = np.stack([(u - cam.cx) / cam.fx, (v - cam.cy) / cam.fy, np.ones_like(u)], -1).reshape(-1, 3)
    # camera pose in the room frame (y down, gravity +y): rotate camera rays into the room
    cam_to_room = _rotation_y(rng.uniform(-0.5, 0.5)) @ _rotation_x(-rng.uniform(0.0, 0.25))
    rays = rays_cam @ cam_to_room.T
    floor_y = rng.uniform(1.1, 1.6)
    ceiling_y = -rng.uniform(1.0, 1.6)
    back_z, front_z = rng.uniform(3.5, 6.5), -1.5
    left_x, right_x = -rng.uniform(1.6, 3.0), rng.uniform(1.6, 3.0)
    hits = _Hits(len(rays))
    _plane(hits, rays, 1, floor_y, np.array([0.0, -1.0, 0.0]), _FLOOR, 0)
    _plane(hits, rays, 1, ceiling_y, np.array([0.0, 1.0, 0.0]), _CEILING, 1)
    _plane(hits, rays, 2, back_z, np.array([0.0, 0.0, -1.0]), _WALL, 2)
    _plane(hits, rays, 2, front_z, np.array([0.0, 0.0, 1.0]), _WALL, 3)
    _plane(hits, rays, 0, left_x, np.array([1.0, 0.0, 0.0]), _WALL, 4)
    _plane(hits, rays, 0, right_x, np.array([-1.0, 0.0, 0.0]), _WALL, 5)
    tops = []
    for k in range(int(rng.integers(1, 4))):
        half = np.array([rng.uniform(0.2, 0.6), rng.uniform(0.15, 0.5), rng.uniform(0.2, 0.6)])
        centre = np.array([rng.uniform(left_x + 0.6, right_x - 0.6), floor_y - half[1],
                           rng.uniform(1.6, back_z - 0.7)])
        _box(hits, rays, centre, half, rng.uniform(0, math.pi / 2), 6 + k)
        tops.append((centre, half))
    for k in range(int(rng.integers(0, 3))):
        radius = rng.uniform(0.15, 0.4)
        if tops and rng.random() < 0.4:
            centre, half = tops[int(rng.integers(len(tops)))]
            centre = np.array([centre[0], centre[1] - half[1] - radius, centre[2]])
        else:
            centre = np.array([rng.uniform(left_x + 0.5, right_x - 0.5), floor_y - radius,
                               rng.uniform(1.4, back_z - 0.5)])
        _sphere(hits, rays, centre, radius, 10 + k)

    points = rays * hits.t[:, None]
    colours = rng.uniform(40, 230, size=(16, 3))
    base = colours[np.clip(hits.surface, 0, 15)]
    tile = ((np.floor(points[:, 0] / 0.5) + np.floor(points[:, 2] / 0.5)) % 2) * 2 - 1
    base[hits.label == _FLOOR] *= (1 + 0.18 * tile[hits.label == _FLOOR])[:, None]
    stripes = np.sin(points[:, 1] * 9.0 + points[:, 0] * 3.0 + points[:, 2] * 3.0)
    base[hits.label == _WALL] *= (1 + 0.06 * stripes[hits.label == _WALL])[:, None]
    light = np.array([0.3, 1.0, 0.45]) / np.linalg.norm([0.3, 1.0, 0.45])  # pointing down-forward
    lambert = np.clip(hits.normal @ -light, 0, 1)
    shade = (0.35 + 0.65 * lambert) / (1 + 0.03 * hits.t ** 2)
    rgb = base * shade[:, None]
    rgb = rgb.reshape(height, ss, width, ss, 3).mean((1, 3))
    rgb = np.clip(rgb + rng.normal(0, 3.0, size=rgb.shape), 0, 255).astype(np.uint8)

    centre_sample = (slice(ss // 2, None, ss), slice(ss // 2, None, ss))
    depth = hits.t.reshape(height * ss, width * ss)[centre_sample].astype(np.float32)
    normals_room = hits.normal.reshape(height * ss, width * ss, 3)[centre_sample]
    normals = (normals_room @ cam_to_room).astype(np.float32)  # room -> camera: R^T n
    labels = hits.label.reshape(height * ss, width * ss)[centre_sample]
    depth = _kinect_holes(rng, depth)
    return DenseSample(rgb, depth, normals, labels)


def _kinect_holes(rng: np.random.Generator, depth: np.ndarray) -> np.ndarray:
    """Missing depth like a Kinect's: a shadow strip left of occluding edges and a few random blobs."""
    height, width = depth.shape
    out = depth.copy()
    jump = np.zeros_like(depth, dtype=bool)
    jump[:, :-1] = depth[:, 1:] - depth[:, :-1] < -0.25  # the right neighbour is much closer
    for shift in range(max(1, width // 48)):
        out[:, : width - shift][jump[:, shift:]] = 0
    yy, xx = np.mgrid[0:height, 0:width]
    for _ in range(int(rng.integers(1, 4))):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry, rx = rng.uniform(0.03, 0.1) * height, rng.uniform(0.03, 0.1) * width
        out[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = 0
    return out


def write_dense_dataset(root: str | os.PathLike, *, height: int = 72, width: int = 96, seed: int = 0,
                        splits: dict[str, int] | None = None) -> Path:
    """Write ``root/<split>/{rgb,depth,normals,labels}/<index>.png`` plus classes.txt and camera.json."""
    splits = dict(splits or DEFAULT_DENSE_SPLITS)
    camera = NYU_INTRINSICS.scaled(height, width)

    def write(tmp: Path) -> None:
        (tmp / "classes.txt").write_text("\n".join(DENSE_CLASSES) + "\n")
        (tmp / "camera.json").write_text(json.dumps(camera.__dict__, indent=2) + "\n")
        for split_index, (split, count) in enumerate(sorted(splits.items())):
            rng = np.random.default_rng([seed, split_index])
            folders = {name: tmp / split / name for name in ("rgb", "depth", "normals", "labels")}
            for folder in folders.values():
                folder.mkdir(parents=True)
            for i in range(count):
                sample = render_room(rng, height, width, camera)
                name = f"{split}_{i:05d}.png"
                Image.fromarray(sample.rgb).save(folders["rgb"] / name)
                write_depth_png(sample.depth, folders["depth"] / name)
                Image.fromarray(encode_normals(sample.normals)).save(folders["normals"] / name)
                write_labels_png(sample.semantic, folders["labels"] / name, DENSE_PALETTE)

    return write_atomically(root, write)
