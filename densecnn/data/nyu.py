"""NYU Depth v2, labeled subset: ``nyu_depth_v2_labeled.mat`` (MATLAB v7.3, i.e. HDF5, read with h5py).

Layout of the official file (MATLAB stores arrays column-major, so h5py sees every frame transposed):
``images`` (N, 3, W, H) uint8, ``depths`` (N, W, H) float32 metres (in-painted), ``rawDepths`` (N, W, H)
(0 = missing), ``labels`` (N, W, H) uint16 ids of the 894 object classes (0 = unlabelled); N = 1449,
W x H = 640 x 480.

Split: the official 795 training / 654 test frames come from the toolbox's ``splits.mat`` (``trainNdxs``,
``testNdxs``, 1-based indices into the 1449 frames); pass its path as ``splits_file``.

Files: ``download_nyu_files`` fetches the labeled file, ``splits.mat`` and ``classMapping40.mat`` from where
they are published (``NYU_URLS``) when they are missing; without network access, place them yourself.

Classes: the 40-class set is Gupta et al.'s (CVPR 2013) grouping of the 894 classes, distributed as
``classMapping40.mat`` (variable ``mapClass``: for each of the 894 ids, its 40-class id). densecnn cannot
reproduce that 894-entry table from the literature, so it must be given as ``mapping_file`` (the .mat, or a
.npy / .txt / .json of 894 integers; ``download_nyu_files`` fetches the .mat); without it only
``classes="894"`` is available. The 13-class set
(Couprie et al. 2013, used by Eigen & Fergus) is a fixed grouping of the 40 classes, ``NYU40_TO_13`` below
(the table of ``class13Mapping.mat`` in the nyuv2-meta-data release), so ``classes="13"`` also needs the
40-class mapping file. Labels come out 0-based; unlabelled pixels become 255 (ignore).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch

from ..constants import IGNORE_LABEL
from .dense import (NYU_INTRINSICS, DenseSample, DenseSampleDataset, NormalsCache, check_sample, file_identity,
                    normals_from_depth, sample_to_tensors, source_window)
from .image_folder import DataError
from .transforms import IMAGENET_MEAN, IMAGENET_STD

NYU_NUM_FRAMES = 1449
NYU_SPLIT_SIZES = {"train": 795, "test": 654}
NYU40_CLASSES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture",
    "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat", "clothes",
    "ceiling", "books", "refridgerator", "television", "paper", "towel", "shower curtain", "box", "whiteboard",
    "person", "night stand", "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure", "otherfurniture",
    "otherprop")
NYU13_CLASSES = ("bed", "books", "ceiling", "chair", "floor", "furniture", "objects", "picture", "sofa", "table",
                 "tv", "wall", "window")
# index: 40-class id (0 = unlabelled, 1 = wall, ..., 40 = otherprop); value: 13-class id (1-based, 0 = unlabelled)
NYU40_TO_13 = np.array([0, 12, 5, 6, 1, 4, 9, 10, 12, 13, 6, 8, 6, 13, 10, 6, 13, 6, 7, 7, 5, 7, 3, 2, 6, 11, 7, 7, 7,
                        7, 7, 7, 6, 7, 7, 7, 7, 7, 7, 6, 7], dtype=np.int64)
#: where the official files are published (the labeled frames and the split on the NYU site; Gupta et al.'s
#: 894 -> 40 table as redistributed with the nyuv2-meta-data release)
NYU_URLS = {
    "nyu_depth_v2_labeled.mat": "http://horatio.cs.nyu.edu/mit/silberman/nyu_depth_v2/nyu_depth_v2_labeled.mat",
    "splits.mat": "http://horatio.cs.nyu.edu/mit/silberman/indoor_seg_sup/splits.mat",
    "classMapping40.mat": "https://github.com/ankurhanda/nyuv2-meta-data/raw/master/classMapping40.mat",
}


def download_nyu_files(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Download each of ``paths`` that does not exist yet from ``NYU_URLS`` (chosen by file name), each into a
    temporary file renamed into place only when complete, so an interrupted download leaves nothing behind and
    files already there are never touched. Returns the paths downloaded."""
    import torch.hub

    fetched = []
    for path in map(Path, paths):
        if path.is_file():
            continue
        url = NYU_URLS.get(path.name)
        if url is None:
            raise DataError(f"{path}: not found, and it is not one of the files that can be downloaded "
                            f"({', '.join(NYU_URLS)}); place it there")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, str(path), progress=True)
        except OSError as err:  # URLError and HTTPError are OSErrors
            raise DataError(f"{path}: could not download {url} ({err}); without network access, download it "
                            f"elsewhere and place it at {path}") from err
        fetched.append(path)
    return fetched


def _load_mat_variable(path: Path, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Variables from a MATLAB file of any version (v5 via scipy, v7.3 via h5py)."""
    try:
        from scipy.io import loadmat

        data = loadmat(str(path))
        found = {n: np.asarray(data[n]) for n in names if n in data}
    except NotImplementedError:  # v7.3: HDF5
        import h5py

        with h5py.File(path, "r") as f:
            found = {n: np.asarray(f[n]) for n in names if n in f}
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable MATLAB file ({err})") from err
    missing = [n for n in names if n not in found]
    if missing:
        raise DataError(f"{path}: variable(s) {', '.join(missing)} not found")
    return found


def read_splits(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The official split: 0-based frame indices for ``train`` (795) and ``test`` (654) from ``splits.mat``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: split file not found; the official NYU Depth v2 split is the toolbox's "
                        f"splits.mat (trainNdxs, testNdxs): {NYU_URLS['splits.mat']}, or data.init_args.download: true")
    data = _load_mat_variable(path, ("trainNdxs", "testNdxs"))
    return {"train": data["trainNdxs"].astype(np.int64).ravel() - 1,
            "test": data["testNdxs"].astype(np.int64).ravel() - 1}


def read_class_mapping(path: str | os.PathLike, num_source: int = 894) -> np.ndarray:
    """Gupta et al.'s 894 -> 40 table as an array indexed by the 894-class id (index 0 = unlabelled -> 0)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: class mapping file not found (classMapping40.mat with 'mapClass', or 894 "
                        f"integers in .npy/.txt/.json)")
    if path.suffix == ".mat":
        values = _load_mat_variable(path, ("mapClass",))["mapClass"]
    elif path.suffix == ".npy":
        values = np.load(path, allow_pickle=False)
    elif path.suffix == ".json":
        values = np.asarray(json.loads(path.read_text()))
    else:
        values = np.loadtxt(path, dtype=np.int64)
    values = np.asarray(values, dtype=np.int64).ravel()
    if values.size != num_source or values.min() < 0 or values.max() > 40:
        raise DataError(f"{path}: expected {num_source} class ids in 0..40, got {values.size} values in "
                        f"{values.min() if values.size else '-'}..{values.max() if values.size else '-'}")
    return np.concatenate([[0], values])


def label_lookup(classes: str, mapping: np.ndarray | None) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """A table from the 894-class id to the 0-based output class (255 = ignore) and the class names."""
    if classes == "894":
        table = np.arange(-1, 895, dtype=np.int64)
        table[0] = IGNORE_LABEL
        return table, None
    if mapping is None:
        raise DataError(f"classes={classes!r} needs the 894 -> 40 mapping file (Gupta et al.'s "
                        f"classMapping40.mat, variable mapClass) as mapping_file: {NYU_URLS['classMapping40.mat']}")
    ids40 = mapping
    if classes == "40":
        ids, names = ids40, NYU40_CLASSES
    elif classes == "13":
        ids, names = NYU40_TO_13[ids40], NYU13_CLASSES
    else:
        raise ValueError(f"classes must be '13', '40' or '894', got {classes!r}")
    return np.where(ids > 0, ids - 1, IGNORE_LABEL).astype(np.int64), names


class NYUDepthV2Dataset(DenseSampleDataset):
    """Frames of the labeled NYU Depth v2 file as ``{"image", "depth", "normals", "semantic", "name", "path"}``.

    Args:
        mat_path: ``nyu_depth_v2_labeled.mat``.
        split: ``train``, ``test`` or ``all``; ``train``/``test`` need ``splits_file``.
        classes: ``13``, ``40`` (both need ``mapping_file``) or ``894``.
        maps: which of ``depth``, ``normals``, ``semantic`` to return (normals are computed from the depth by
            least-squares plane fits, ``normals_from_depth``, with NYU's intrinsics).
        depth_key: ``depths`` (the in-painted maps, the usual evaluation target) or ``rawDepths`` (with holes).
        transform: a ``DenseAugment``.
        full_depth: also return ``depth_full``, the frame's depth at the file's full 480x640 resolution before
            any resizing, and ``depth_window``, the (top, bottom, left, right) of that frame the transformed
            sample covers (``source_window``), for the standard evaluation protocol (Eigen et al. 2014 as in
            BTS / monodepth2: the prediction upsampled to the full-resolution ground truth). Evaluation
            transforms only; every non-random transform also returns ``depth_window`` with ``depth``.
        cache_normals, normals_cache_dir: keep the normals computed from depth on disk (``NormalsCache``,
            default ``<folder of mat_path>/.normals_cache``), keyed by the file's identity, ``depth_key`` and
            frame, so each frame's plane fits (~1.7 s) run once.
    """

    def __init__(self, mat_path: str | os.PathLike, split: Literal["train", "test", "all"] = "train", *,
                 splits_file: str | os.PathLike | None = None, classes: Literal["13", "40", "894"] = "40",
                 mapping_file: str | os.PathLike | None = None, maps: Sequence[str] = ("depth", "normals", "semantic"),
                 depth_key: Literal["depths", "rawDepths"] = "depths", transform=None,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 full_depth: bool = False, cache_normals: bool = True,
                 normals_cache_dir: str | os.PathLike | None = None):
        import h5py

        self.mat_path = Path(mat_path)
        if not self.mat_path.is_file():
            raise DataError(f"{self.mat_path}: NYU Depth v2 labeled .mat file not found")
        try:
            with h5py.File(self.mat_path, "r") as f:
                for key in ("images", depth_key, "labels"):
                    if key not in f:
                        raise DataError(f"{self.mat_path}: no {key!r} dataset (keys: {', '.join(f.keys())})")
                total = f["images"].shape[0]
                if f["images"].ndim != 4 or f["images"].shape[1] != 3:
                    raise DataError(f"{self.mat_path}: 'images' has shape {f['images'].shape}, expected "
                                    f"(N, 3, width, height)")
        except OSError as err:
            raise DataError(f"{self.mat_path}: not an HDF5 (MATLAB v7.3) file ({err})") from err
        if split == "all":
            self.indices = np.arange(total)
        else:
            if splits_file is None:
                raise DataError(f"split={split!r} needs splits_file (the toolbox's splits.mat)")
            self.indices = read_splits(splits_file)[split]
            if len(self.indices) and (self.indices.min() < 0 or self.indices.max() >= total):
                raise DataError(f"{splits_file}: indices outside the {total} frames of {self.mat_path}")
        mapping = read_class_mapping(mapping_file) if mapping_file is not None else None
        self.lookup, self.class_names = label_lookup(classes, mapping) if "semantic" in maps else (None, None)
        self.num_classes = {"13": 13, "40": 40, "894": 894}[classes]
        self.maps, self.depth_key, self.transform = list(maps), depth_key, transform
        self.mean, self.std = tuple(mean), tuple(std)
        if full_depth and ("depth" not in self.maps or source_window(transform, 1, 1) is None):
            raise DataError(f"{self.mat_path}: full_depth (the standard evaluation protocol) needs the 'depth' map "
                            f"and a non-random evaluation transform (maps: {self.maps})")
        self.full_depth = full_depth
        self.normals_cache = None
        if "normals" in self.maps and cache_normals:
            self.normals_cache = NormalsCache(normals_cache_dir or self.mat_path.parent / ".normals_cache",
                                              NYU_INTRINSICS)
        self._file = None

    def __getstate__(self):  # h5py handles do not cross process boundaries: each worker opens its own
        state = dict(self.__dict__)
        state["_file"] = None
        return state

    def _h5(self):
        if self._file is None:
            import h5py

            self._file = h5py.File(self.mat_path, "r")
        return self._file

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, index: int) -> DenseSample:
        frame = int(self.indices[index])
        f = self._h5()
        sample = DenseSample(np.ascontiguousarray(np.asarray(f["images"][frame]).transpose(2, 1, 0)))
        if "depth" in self.maps or "normals" in self.maps:
            depth = np.asarray(f[self.depth_key][frame], dtype=np.float32).T
            sample.depth = np.ascontiguousarray(np.nan_to_num(depth, nan=0.0, posinf=0.0, neginf=0.0))
        if "semantic" in self.maps:
            raw = np.asarray(f["labels"][frame]).T.astype(np.int64)
            if raw.max(initial=0) >= len(self.lookup):
                raise DataError(f"{self.mat_path} frame {frame + 1}: label id {raw.max()} beyond the 894 classes")
            sample.semantic = self.lookup[raw]
        check_sample(sample, f"{self.mat_path} frame {frame + 1}", self.num_classes)
        if "normals" in self.maps:
            if self.normals_cache is None:
                sample.normals = normals_from_depth(sample.depth, NYU_INTRINSICS)
            else:
                source = f"{file_identity(self.mat_path)}#{self.depth_key}#{frame}"
                sample.normals = self.normals_cache(sample.depth, source)
        if "depth" not in self.maps:
            sample.depth = None
        return sample

    def __getitem__(self, index: int) -> dict:
        """As ``DenseSampleDataset``'s, plus ``depth_window`` (and ``depth_full`` with ``full_depth``) for
        evaluation transforms; the full-resolution depth is taken before the transform resizes it."""
        sample = self.load(index)
        frame_depth = sample.depth
        if self.transform is not None:
            sample = self.transform(sample)
        out = sample_to_tensors(sample, self.mean, self.std)
        out["name"], out["path"] = self.sample_id(index)
        window = source_window(self.transform, *frame_depth.shape) if frame_depth is not None else None
        if window is not None:
            out["depth_window"] = torch.tensor(window, dtype=torch.float32)
        if self.full_depth:
            out["depth_full"] = torch.from_numpy(np.ascontiguousarray(frame_depth, dtype=np.float32))
        return out

    def sample_id(self, index: int) -> tuple[str, str]:
        frame = int(self.indices[index]) + 1
        return f"nyu_{frame:04d}", f"{self.mat_path}#{frame}"
