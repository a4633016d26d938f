"""Video classification data: ``root/<class>/<video>.{mp4,avi}``, decoded with PyAV, served as clips.

* Splits: UCF101's lists (``classInd.txt``, ``trainlistNN.txt``, ``testlistNN.txt``, in ``root`` or
  ``root/ucfTrainTestlist``) when present, otherwise a deterministic split (``video_splits``).
* Decoding (``decode_video``): every frame, converted to RGB and resized by swscale to ``resize`` (C3D's
  128x171, Tran et al. Section 3.2; an int scales the short side and keeps the aspect ratio); optionally cached on disk as ``.npy`` (``cache_dir``), so later epochs
  read the resized frames instead of decoding again.
* Clips: ``clip_len`` frames taken every ``frame_stride`` frames. Training draws one random clip per video
  per visit; evaluation takes ``clips_per_video`` uniformly spaced clips (their starts evenly spread from the
  first possible start to the last), and the video's prediction is the softmax averaged over them.
* Views: ``crops_per_clip=3`` cuts three ``crop_size`` squares from every clip, at the start, centre and end of
  the frame's long side and centred on its short side (C3D / MMAction2's ``ThreeCrop``), before the transform;
  a video then has ``clips_per_video * 3`` views and its prediction averages the softmax over all of them.
* Videos shorter than a clip's span (``(clip_len - 1) * frame_stride + 1`` frames) follow
  ``short_video_policy``: ``loop`` (default) plays the video again from its first frame; ``pad`` repeats the
  last frame. Either way every clip has ``clip_len`` frames.
* Augmentation: one albumentations pipeline applied to all frames of a clip at once (the ``images`` target),
  so the crop, flip and colour change are the same for every frame and motion is preserved.
* Randomness: each item draws one seed from torch's generator (which ``SeededDataset`` seeds from run seed,
  epoch and index, ``densecnn.data.seeding``); the random clip start and a separate augmentation seed for every
  clip of the item come from it. So every clip of every video in every epoch gets its own crop and flip (with
  ``uniform`` sampling too), and runs repeat exactly; evaluation transforms draw nothing.
* Bad input: a header announcing a frame or two more than decode is tolerated with a warning
  (``check_frame_count``); an unreadable, empty or truncated file raises ``DataError`` naming it, or with
  ``skip_corrupt=True`` is dropped with a warning when the dataset is built (each file is decoded once to
  check it, which the cache then reuses); a class folder without videos is an error.
"""
from __future__ import annotations

import hashlib
import os
import re
import warnings
from pathlib import Path
from typing import Callable, Literal, Sequence

import av
import numpy as np
import torch
from torch.utils.data import Dataset

from .image_folder import DataError

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm")
SPLIT_LIST_DIRS = ("", "ucfTrainTestlist")
ShortVideoPolicy = Literal["loop", "pad"]
C3D_RESIZE = (128, 171)


# ---- decoding and caching ------------------------------------------------------------------------------------
# A file may decode a frame or two fewer than its header announces: some encoders count frames they never
# write or that the decoder drops (PyAV issue 976). A shortfall up to this many frames, or this fraction of the
# announced count when that is larger, is tolerated with a warning; more is a truncated file.
FRAME_SHORTFALL_FRAMES = 2
FRAME_SHORTFALL_FRACTION = 0.01


def resized_shape(height: int, width: int, resize: int | Sequence[int] | None) -> tuple[int, int]:
    """The (H, W) a frame of ``height`` x ``width`` is resized to: ``resize`` = (H, W) as given; an int scales the
    short side to it and keeps the aspect ratio (rounded half up: 240x320 -> 128 gives C3D's 128x171); None keeps
    the size."""
    if resize is None:
        return height, width
    if isinstance(resize, (int, np.integer)):
        scale = int(resize) / min(height, width)
        return int(height * scale + 0.5), int(width * scale + 0.5)
    return int(resize[0]), int(resize[1])


def announced_frames(stream: av.video.stream.VideoStream) -> int:
    """The frame count the container header announces for ``stream`` (0 when it does not say)."""
    return int(stream.frames or 0)


def check_frame_count(path: str | os.PathLike, announced: int, decoded: int) -> None:
    """Raise DataError when fewer than ``announced`` frames decoded by more than the tolerated shortfall
    (``FRAME_SHORTFALL_FRAMES`` or ``FRAME_SHORTFALL_FRACTION`` of ``announced``); warn, naming the file, for a
    smaller shortfall."""
    missing = announced - decoded
    if not announced or missing <= 0:
        return
    tolerated = max(FRAME_SHORTFALL_FRAMES, int(FRAME_SHORTFALL_FRACTION * announced))
    if missing > tolerated:
        raise DataError(f"{path}: truncated video: its header announces {announced} frames but only {decoded} "
                        f"decode")
    warnings.warn(f"{path}: its header announces {announced} frames but {decoded} decode; using the {decoded} "
                  f"frames (a shortfall of up to {tolerated} frames is normal with some encoders)", stacklevel=3)


def decode_video(path: str | os.PathLike, resize: int | Sequence[int] | None = C3D_RESIZE) -> np.ndarray:
    """All frames of ``path`` as (T, H, W, 3) uint8 RGB, resized to ``resize`` (see ``resized_shape``: (H, W), or
    an int for the short side) unless None.

    Raises DataError naming the file when it cannot be opened, has no video stream or frames, or is
    truncated (decoding fails part-way, or fewer frames decode than its header announces by more than
    ``check_frame_count`` tolerates).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: video file not found")
    frames: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DataError(f"{path}: no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            announced = announced_frames(stream)
            size: dict[str, int] | None = None
            for frame in container.decode(stream):
                if size is None:
                    height, width = resized_shape(frame.height, frame.width, resize)
                    size = {} if resize is None else {"height": height, "width": width}
                frames.append(frame.to_ndarray(format="rgb24", **size))
    except av.FFmpegError as err:
        where = f" after {len(frames)} frames" if frames else ""
        raise DataError(f"{path}: cannot decode video{where}; the file is corrupt or truncated ({err})") from err
    if not frames:
        raise DataError(f"{path}: holds no decodable video frames (corrupt or truncated file)")
    check_frame_count(path, announced, len(frames))
    return np.stack(frames)


class FrameStore:
    """Decoded, resized frames of a video; from ``cache_dir`` when it holds them (memory-mapped ``.npy``).

    A cache entry is keyed by the file's absolute path, size, modification time and the resize, so an edited
    video or another resolution is decoded again. Entries are written atomically (several workers may decode
    the same video at once).
    """

    def __init__(self, resize: int | Sequence[int] | None = C3D_RESIZE, cache_dir: str | os.PathLike | None = None):
        self.resize = resize if resize is None or isinstance(resize, (int, np.integer)) else tuple(resize)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)

    def cache_path(self, path: str | os.PathLike) -> Path | None:
        if self.cache_dir is None:
            return None
        path = Path(path).resolve()
        stat = path.stat()
        key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}|{self.resize}"
        return self.cache_dir / f"{hashlib.sha1(key.encode()).hexdigest()}.npy"

    def load(self, path: str | os.PathLike) -> np.ndarray:
        if not Path(path).is_file():
            raise DataError(f"{path}: video file not found")
        cached = self.cache_path(path)
        if cached is not None and cached.is_file():
            try:
                return np.load(cached, mmap_mode="r")
            except (OSError, ValueError):
                cached.unlink(missing_ok=True)  # a damaged cache entry is rebuilt, never trusted
        frames = decode_video(path, self.resize)
        if cached is not None:
            tmp = cached.with_name(f".{cached.stem}.{os.getpid()}.tmp.npy")
            np.save(tmp, frames)
            os.replace(tmp, cached)
        return frames


# ---- clip sampling ---------------------------------------------------------------------------------------------
def clip_span(clip_len: int, frame_stride: int) -> int:
    """Frames a clip covers: ``(clip_len - 1) * frame_stride + 1``."""
    return (clip_len - 1) * frame_stride + 1


def clip_indices(num_frames: int, start: int, clip_len: int, frame_stride: int,
                 policy: ShortVideoPolicy = "loop") -> np.ndarray:
    """Frame indices of the clip starting at ``start``; past the end, ``loop`` wraps to the first frame and
    ``pad`` repeats the last."""
    if num_frames < 1:
        raise ValueError("clip_indices: the video has no frames")
    indices = start + np.arange(clip_len) * frame_stride
    if policy == "loop":
        return indices % num_frames
    if policy == "pad":
        return np.minimum(indices, num_frames - 1)
    raise ValueError(f"short_video_policy must be 'loop' or 'pad', got {policy!r}")


def uniform_starts(num_frames: int, span: int, num_clips: int) -> np.ndarray:
    """``num_clips`` starts spread evenly from 0 to the last start that fits (all 0 for a short video)."""
    last = max(num_frames - span, 0)
    return np.round(np.linspace(0, last, num_clips)).astype(np.int64)


def random_start(rng: np.random.Generator, num_frames: int, span: int) -> int:
    return int(rng.integers(0, max(num_frames - span, 0) + 1))


def three_crop_offsets(height: int, width: int, crop_size: int) -> list[tuple[int, int]]:
    """(top, left) of C3D / MMAction2 ``ThreeCrop`` views: ``crop_size`` squares at the start, centre and end of
    the long side, centred on the short side (left, centre, right for a landscape frame)."""
    if min(height, width) < crop_size:
        raise ValueError(f"frames of {height}x{width} are smaller than crop_size {crop_size}")
    along = [0, (max(height, width) - crop_size) // 2, max(height, width) - crop_size]
    across = (min(height, width) - crop_size) // 2
    return [(across, a) if width >= height else (a, across) for a in along]


# ---- discovery and splits --------------------------------------------------------------------------------------
def _videos_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)


def find_split_lists(root: Path, split: int = 1) -> dict[str, Path] | None:
    """UCF101's ``classInd.txt``/``trainlistNN.txt``/``testlistNN.txt`` under ``root`` (or its
    ``ucfTrainTestlist``), or None when there is no ``classInd.txt``."""
    for sub in SPLIT_LIST_DIRS:
        folder = root / sub
        if (folder / "classInd.txt").is_file():
            files = {"classes": folder / "classInd.txt", "train": folder / f"trainlist{split:02d}.txt",
                     "test": folder / f"testlist{split:02d}.txt"}
            for key in ("train", "test"):
                if not files[key].is_file():
                    raise DataError(f"{files[key]}: split list not found (classInd.txt is in {folder})")
            return files
    return None


def _read_lines(path: Path) -> list[tuple[int, str]]:
    return [(n, line.strip()) for n, line in enumerate(path.read_text().splitlines(), start=1) if line.strip()]


def read_split_lists(root: Path, files: dict[str, Path]) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
    """Class names (``classInd.txt`` order) and ``{"train": [(path, label)], "test": [...]}``."""
    classes: list[str] = []
    for n, line in _read_lines(files["classes"]):
        match = re.fullmatch(r"(\d+)\s+(\S+)", line)
        if not match or int(match.group(1)) != len(classes) + 1:
            raise DataError(f"{files['classes']}:{n}: expected '<index> <class>' with indices 1, 2, ... in "
                            f"order, got {line!r}")
        classes.append(match.group(2))
    if not classes:
        raise DataError(f"{files['classes']}: no classes listed")
    index = {name: i for i, name in enumerate(classes)}
    for name in classes:
        folder = root / name
        if not folder.is_dir():
            raise DataError(f"{folder}: class folder listed in {files['classes']} does not exist")
        if not _videos_in(folder):
            raise DataError(f"{folder}: class folder holds no videos ({', '.join(VIDEO_SUFFIXES)})")
    splits: dict[str, list[tuple[str, int]]] = {}
    for split in ("train", "test"):
        samples = []
        for n, line in _read_lines(files[split]):
            parts = line.split()
            relative = parts[0]
            class_name = relative.replace("\\", "/").split("/")[0]
            if class_name not in index:
                raise DataError(f"{files[split]}:{n}: class {class_name!r} of {relative!r} is not in "
                                f"{files['classes'].name}")
            if len(parts) > 1 and int(parts[1]) != index[class_name] + 1:
                raise DataError(f"{files[split]}:{n}: label {parts[1]} of {relative!r} contradicts "
                                f"{files['classes'].name} ({class_name} is {index[class_name] + 1})")
            path = root / relative
            if not path.is_file():
                raise DataError(f"{files[split]}:{n}: listed video {path} does not exist")
            samples.append((str(path), index[class_name]))
        if not samples:
            raise DataError(f"{files[split]}: lists no videos")
        splits[split] = samples
    return classes, splits


def find_video_classes(root: Path) -> list[str]:
    """Class folders of ``root`` (hidden folders and ``ucfTrainTestlist`` excluded); each must hold videos."""
    if not root.is_dir():
        raise DataError(f"{root}: video folder not found (expected {root}/<class>/<video>.mp4)")
    classes = sorted(p.name for p in root.iterdir()
                     if p.is_dir() and not p.name.startswith(".") and p.name not in SPLIT_LIST_DIRS)
    if not classes:
        raise DataError(f"{root}: no class folders (expected {root}/<class>/<video>.mp4)")
    for name in classes:
        if not _videos_in(root / name):
            raise DataError(f"{root / name}: class folder holds no videos ({', '.join(VIDEO_SUFFIXES)})")
    return classes


def video_splits(root: str | os.PathLike, *, split: int = 1, val_fraction: float = 0.2, test_fraction: float = 0.2,
                 seed: int = 0) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
    """Class names and ``{"train", "val", "test"}`` lists of ``(path, label)``.

    With UCF101 lists: train and test as listed, and ``val`` is the test list (UCF101 has no validation
    split; this is the usual practice, so model selection on ``val`` is selection on the test split).
    Without them: per class, the sorted videos are shuffled with ``seed`` and the first ``val_fraction`` go
    to val, the next ``test_fraction`` to test, the rest (at least one video) to train.
    """
    root = Path(root)
    files = find_split_lists(root, split)
    if files is not None:
        classes, lists = read_split_lists(root, files)
        return classes, {"train": lists["train"], "val": lists["test"], "test": lists["test"]}
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"val_fraction {val_fraction} and test_fraction {test_fraction} must be in [0, 1) "
                         f"and leave videos for training")
    classes = find_video_classes(root)
    splits: dict[str, list[tuple[str, int]]] = {"train": [], "val": [], "test": []}
    for label, name in enumerate(classes):
        videos = [str(p) for p in _videos_in(root / name)]
        order = np.random.default_rng([seed, label]).permutation(len(videos))
        n_val = int(round(val_fraction * len(videos)))
        n_test = int(round(test_fraction * len(videos)))
        while n_val + n_test >= len(videos):  # keep at least one training video per class
            if n_val >= n_test:
                n_val -= 1
            else:
                n_test -= 1
        chosen = [videos[i] for i in order]
        splits["val"] += [(p, label) for p in chosen[:n_val]]
        splits["test"] += [(p, label) for p in chosen[n_val:n_val + n_test]]
        splits["train"] += [(p, label) for p in chosen[n_val + n_test:]]
    for key in ("train", "val", "test"):
        splits[key].sort()
    return classes, splits


# ---- the dataset -----------------------------------------------------------------------------------------------
class VideoClipDataset(Dataset):
    """Clips of the videos in ``samples``.

    ``sampling="random"``: item i is one random clip of video i, ``{"video": (C, T, H, W), "label", "path",
    "index", "starts": (1,)}``. ``sampling="uniform"``: item i holds video i's ``clips_per_video`` uniformly
    spaced clips, ``"video": (K, C, T, H, W)`` and ``"starts": (K,)``; with ``crops_per_clip=3`` each clip gives
    three views (clip-major: clip 0's left, centre, right, then clip 1's ...), ``"video": (3K, C, T, H, W)``,
    ``"starts": (3K,)`` and ``"crops": (3K, 2)``, each view's (top, left) in the decoded frames.

    Args:
        samples: ``(path, label)`` pairs (label -1 for unlabelled videos).
        transform: an albumentations ``Compose`` ending in ``ToTensorV2``, called as ``transform(images=...)``
            on a clip's (T, H, W, 3) frames; None gives float tensors in [0, 1].
        frames: where decoded frames come from (resize, optional disk cache).
        seed: fixes the random clips and augmentations of item i regardless of torch's generator (tests,
            benchmarks); None (default) draws each sample's seed from torch, which ``SeededDataset`` (or
            ``seed_everything``) controls.
        crops_per_clip: 1 (the transform crops) or 3 (``three_crop_offsets`` views of ``crop_size``, cut before
            the transform; ``uniform`` sampling only, the test protocol).
    """

    def __init__(self, samples: Sequence[tuple[str, int]], *, clip_len: int = 16, frame_stride: int = 1,
                 sampling: Literal["random", "uniform"] = "random", clips_per_video: int = 10,
                 transform: Callable | None = None, frames: FrameStore | None = None,
                 short_video_policy: ShortVideoPolicy = "loop", skip_corrupt: bool = False, seed: int | None = None,
                 crops_per_clip: int = 1, crop_size: int | None = None):
        if clip_len < 1 or frame_stride < 1 or clips_per_video < 1:
            raise ValueError(f"clip_len ({clip_len}), frame_stride ({frame_stride}) and clips_per_video "
                             f"({clips_per_video}) must be positive")
        if crops_per_clip not in (1, 3):
            raise ValueError(f"crops_per_clip must be 1 or 3 (left/centre/right), got {crops_per_clip}")
        if crops_per_clip == 3 and (sampling != "uniform" or not crop_size):
            raise ValueError("crops_per_clip=3 needs sampling='uniform' and a crop_size")
        if sampling not in ("random", "uniform"):
            raise ValueError(f"sampling must be 'random' or 'uniform', got {sampling!r}")
        if short_video_policy not in ("loop", "pad"):
            raise ValueError(f"short_video_policy must be 'loop' or 'pad', got {short_video_policy!r}")
        self.samples = list(samples)
        self.clip_len, self.frame_stride = clip_len, frame_stride
        self.sampling, self.clips_per_video = sampling, clips_per_video
        self.transform = transform
        self.frames = frames or FrameStore()
        self.short_video_policy = short_video_policy
        self.seed = seed
        self.crops_per_clip, self.crop_size = crops_per_clip, crop_size
        if skip_corrupt:
            self._drop_unreadable()
        if not self.samples:
            raise DataError("no videos to sample clips from")

    def _drop_unreadable(self) -> None:
        kept, bad = [], []
        for path, label in self.samples:
            try:
                self.frames.load(path)
                kept.append((path, label))
            except DataError as err:
                bad.append(str(err))
        if bad:
            warnings.warn(f"skipping {len(bad)} unreadable video(s): " + "; ".join(bad[:5])
                          + (f" and {len(bad) - 5} more" if len(bad) > 5 else ""), stacklevel=3)
        self.samples = kept

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def span(self) -> int:
        return clip_span(self.clip_len, self.frame_stride)

    def _sample_seed(self, index: int) -> int:
        if self.seed is not None:
            return int(np.random.default_rng([self.seed, index]).integers(2**31 - 1))
        return int(torch.randint(2**31 - 1, ()).item())

    def _clip(self, frames: np.ndarray, start: int, seed: int, crop: tuple[int, int] | None = None) -> torch.Tensor:
        clip = frames[clip_indices(len(frames), start, self.clip_len, self.frame_stride, self.short_video_policy)]
        if crop is not None:
            top, left = crop
            clip = clip[:, top:top + self.crop_size, left:left + self.crop_size]
        clip = np.ascontiguousarray(clip)
        if self.transform is None:
            out = torch.from_numpy(clip).permute(0, 3, 1, 2).float().div_(255)
        else:
            if hasattr(self.transform, "set_random_seed"):
                self.transform.set_random_seed(seed)
            out = self.transform(images=clip)["images"]  # (T, C, H, W), one set of parameters for all frames
        return out.permute(1, 0, 2, 3).contiguous()  # (C, T, H, W), the layout of Conv3d

    def _crops(self, path: str, frames: np.ndarray) -> list[tuple[int, int] | None]:
        if self.crops_per_clip == 1:
            return [None]
        try:
            return three_crop_offsets(frames.shape[1], frames.shape[2], self.crop_size)
        except ValueError as err:
            raise DataError(f"{path}: cannot cut crops_per_clip=3 views: {err}") from err

    def __getitem__(self, index: int) -> dict:
        path, label = self.samples[index]
        frames = self.frames.load(path)
        rng = np.random.default_rng(self._sample_seed(index))
        if self.sampling == "random":
            starts = np.array([random_start(rng, len(frames), self.span)])
        else:
            starts = uniform_starts(len(frames), self.span, self.clips_per_video)
        crops = self._crops(path, frames)
        views = [(int(s), c) for s in starts for c in crops]  # clip-major
        seeds = rng.integers(2**31 - 1, size=len(views))  # its own augmentation draw for every view
        clips = [self._clip(frames, s, int(seed), c) for (s, c), seed in zip(views, seeds)]
        item = {"video": clips[0] if self.sampling == "random" else torch.stack(clips), "label": label, "path": path,
                "index": index, "starts": torch.tensor([s for s, _ in views]), "num_frames": len(frames)}
        if self.crops_per_clip > 1:
            item["crops"] = torch.tensor([c for _, c in views])
        return item
