"""The embedded video dataset: moving shapes whose class is the motion, written as real MP4 files.

Classes come in time-reversed pairs: ``move_left``/``move_right``, ``rotate_cw``/``rotate_ccw`` and
``grow``/``shrink``. Every frame on its own is drawn from the same distribution whatever the class:

* the scene is a torus: a shape leaving one edge re-enters at the opposite one, so its position is
  uniform over the frame in every frame;
* the angle is uniform, and the size is log-uniform in [r_min, r_max]; growing and shrinking wrap around
  that range (a sawtooth), so the size of any one frame is log-uniform as well;
* shape, colours, background texture and the attributes that do not move are random per video; the shape
  is always light and the scene dark (with arbitrary colour pairs, small models take many times longer to
  pick up the motion from scratch, and contrast says nothing about the class).

So no single frame tells the class, and a set of frames without their order cannot tell a class from its
time-reversed partner: a model must see motion (Tran et al.'s argument for 3D convolutions; the
temporal-modelling test checks that C3D learns it while a per-frame 2D model does not).

Files: ``root/<class>/<class>_<index>.mp4`` (H.264 via PyAV/libx264) plus UCF101-style split lists
``classInd.txt``, ``trainlist01.txt`` and ``testlist01.txt`` in ``root``, which the video DataModule reads
as it would UCF101's. Same arguments, same bytes.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw

from .classification import draw_shape
from .common import textured_background, write_atomically

VIDEO_CLASSES = ("move_left", "move_right", "rotate_cw", "rotate_ccw", "grow", "shrink")
# Shapes whose rotation is visible: symmetric under 90 degrees at most, and the step per frame below
# stays under half of that, so the rotation sense is unambiguous.
VIDEO_SHAPES = ("square", "triangle", "cross", "bars")
DEFAULT_VIDEOS = {"train": 24, "test": 8}  # per class
_SUPERSAMPLE = 3
_ANGLE_STEP = math.radians(20.0)  # per frame
_SPEED = 0.1  # of the frame width per frame
_SIZE_CYCLE = 12  # frames for one growth cycle r_min -> r_max
_R_MIN, _R_MAX = 0.12, 0.30  # of the frame height


def motion_parameters(rng: np.random.Generator, class_name: str, num_frames: int, height: int, width: int) -> dict:
    """Per-frame centre (x, y), angle and radius, in pixels/radians, for one video of ``class_name``."""
    if class_name not in VIDEO_CLASSES:
        raise ValueError(f"unknown video class {class_name!r}; classes: {', '.join(VIDEO_CLASSES)}")
    t = np.arange(num_frames, dtype=np.float64)
    x = np.full(num_frames, rng.uniform(0, width))
    y = np.full(num_frames, rng.uniform(0, height))
    angle = np.full(num_frames, rng.uniform(0, 2 * math.pi))
    phase = np.full(num_frames, rng.uniform(0, 1))  # position in the log-size range
    if class_name in ("move_left", "move_right"):
        sign = -1 if class_name == "move_left" else 1
        x = (x + sign * _SPEED * width * t) % width
    elif class_name in ("rotate_cw", "rotate_ccw"):
        # image y points down, so a growing angle turns clockwise on screen
        sign = 1 if class_name == "rotate_cw" else -1
        angle = angle + sign * _ANGLE_STEP * t
    else:
        sign = 1 if class_name == "grow" else -1
        phase = (phase + sign * t / _SIZE_CYCLE) % 1.0
    radius = height * _R_MIN * (_R_MAX / _R_MIN) ** phase
    return {"x": x, "y": y, "angle": angle, "radius": radius}


def render_video(rng: np.random.Generator, class_name: str, num_frames: int, height: int, width: int) -> np.ndarray:
    """(T, H, W, 3) uint8 frames of one video."""
    # a light shape on a dark scene, hues random: one contrast polarity and a strong edge in every video
    bg = rng.uniform(0, 100, size=3)
    fg = rng.uniform(170, 255, size=3).astype(np.uint8)
    shape = VIDEO_SHAPES[rng.integers(len(VIDEO_SHAPES))]
    s = _SUPERSAMPLE
    background = Image.fromarray(textured_background(rng, height * s, width * s, bg))
    motion = motion_parameters(rng, class_name, num_frames, height, width)
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    fill = tuple(int(c) for c in fg)
    for i in range(num_frames):
        canvas = background.copy()
        draw = ImageDraw.Draw(canvas)
        r = motion["radius"][i]
        for dx in (-width, 0, width):  # draw the wrapped copies too: the scene is a torus
            for dy in (-height, 0, height):
                cx, cy = motion["x"][i] + dx, motion["y"][i] + dy
                if -r <= cx <= width + r and -r <= cy <= height + r:
                    draw_shape(draw, shape, cx * s, cy * s, r * s, motion["angle"][i], fill)
        frames[i] = np.asarray(canvas.resize((width, height), Image.Resampling.BILINEAR))
    return frames


def rgb_to_yuv420p(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> the (3H/2, W) planar yuv420p layout, BT.601 limited range (what decoders
    assume for H.264 without colour metadata). Converting here rather than in swscale keeps the encoder's
    input byte-exact, so the files are reproducible."""
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    h, w = y.shape
    u, v = (c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3)) for c in (u, v))  # 2x2 chroma subsampling
    planes = np.concatenate([y.ravel(), u.ravel(), v.ravel()])
    return np.clip(np.round(planes), 0, 255).astype(np.uint8).reshape(h * 3 // 2, w)


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: int = 25, qp: int = 18) -> None:
    """Encode (T, H, W, 3) uint8 frames as H.264 (yuv420p; H and W must be even)."""
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"{path}: H.264 yuv420p needs even frame sizes, got {height}x{width}")
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        # A constant quantiser and one thread: the same frames always give the same bytes (x264's CRF rate
        # control was found to vary between runs of the same input).
        stream.options = {"qp": str(qp), "preset": "veryfast", "threads": "1"}
        stream.codec_context.thread_count = 1
        for index, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb_to_yuv420p(array), format="yuv420p")
            frame.pts = index  # explicit timestamps (time base 1/fps): x264's rate control reads them
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_video_dataset(root: str | os.PathLike, *, videos_per_class: dict[str, int] | None = None,
                        num_frames: int = 32, frame_size: tuple[int, int] = (64, 86), fps: int = 25,
                        seed: int = 0, classes: tuple[str, ...] = VIDEO_CLASSES) -> Path:
    """Write the dataset (see the module docstring) to ``root``; ``videos_per_class`` maps ``train``/``test``
    to counts. ``frame_size`` is (H, W), by default half of C3D's 128x171 (rounded to even)."""
    counts = dict(videos_per_class or DEFAULT_VIDEOS)
    unknown = set(counts) - {"train", "test"}
    if unknown:
        raise ValueError(f"videos_per_class: splits are 'train' and 'test', got {sorted(unknown)}")
    height, width = frame_size

    def write(tmp: Path) -> None:
        lists: dict[str, list[str]] = {"train": [], "test": []}
        for class_index, name in enumerate(classes):
            (tmp / name).mkdir()
            rng = np.random.default_rng([seed, class_index])
            index = 0
            for split in ("train", "test"):
                for _ in range(counts.get(split, 0)):
                    file = f"{name}_{index:04d}.mp4"
                    write_mp4(tmp / name / file, render_video(rng, name, num_frames, height, width), fps=fps)
                    lists[split].append(f"{name}/{file} {class_index + 1}" if split == "train" else f"{name}/{file}")
                    index += 1
        (tmp / "classInd.txt").write_text("".join(f"{i + 1} {n}\n" for i, n in enumerate(classes)))
        (tmp / "trainlist01.txt").write_text("".join(line + "\n" for line in lists["train"]))
        (tmp / "testlist01.txt").write_text("".join(line + "\n" for line in lists["test"]))

    return write_atomically(root, write)
