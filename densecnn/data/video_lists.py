"""Finding the videos of a dataset and its splits: class folders, UCF101 lists, Kinetics CSVs, MMAction2 lists.

A *sample* is a video file (``VIDEO_SUFFIXES``) or a *frame folder*: a directory holding image files
(``FRAME_SUFFIXES``, e.g. MMAction2's ``rawframes/<class>/<video>/img_00001.jpg``), whose sorted images are the
video's frames (``densecnn.data.video.FrameStore`` loads both).

List formats (``video_splits(list_format=...)``; ``auto`` picks the first that is present, in this order):

* ``ucf101``: ``classInd.txt``, ``trainlistNN.txt``, ``testlistNN.txt`` in ``root`` or ``root/ucfTrainTestlist``.
  Class names and order from ``classInd.txt``. An entry ``Class/v_x.avi`` is the file ``root/Class/v_x.avi``;
  when that file is absent it is the frame folder ``root/Class/v_x/`` (its name without the video suffix),
  and an entry may also name a frame folder directly. A listed video that is not there is an error.
* ``kinetics``: ``train.csv``, ``validate.csv`` (or ``val.csv``) and optionally ``test.csv`` in ``root`` or
  ``root/annotations`` (the DeepMind release and the cvdfoundation/kinetics-dataset downloader), header
  ``label,youtube_id,time_start,time_end,split[,is_cc]``. Class names: the sorted unique labels of
  ``train.csv`` (the usual convention; Kinetics ships no class index). A row's clip is named
  ``<youtube_id>_<time_start:06d>_<time_end:06d>`` and is found anywhere up to two folders below ``root`` as a
  video file of that stem or a frame folder of that name (``<split>/<label>/``, ``<split>/`` or flat); a file
  wins over a frame folder, and a clip found in several places must be unique under the CSV's split folder
  (``train``, ``val``/``validate``, ``test``). Rows whose clip is absent (YouTube takedowns) are skipped with
  one warning per CSV; a CSV with no clip present, or a label not in the class list, is a ``DataError``.
  ``test.csv`` absent or without labels (withheld in some releases): the test split is the validation split.
* ``mmaction``: MMAction2 list files given as ``list_files`` (``{"train": ..., "val": ..., "test": ...}``,
  relative to ``root``), each line ``<relative frame folder> <num_frames> <label>`` (rawframes) or
  ``<relative video> <label>`` (videos), labels 0-based integers; class names from ``classInd.txt`` when it
  is present, else ``"0"``, ``"1"``, ...
* ``folder``: ``root/<class>/<sample>``; per class, a seeded deterministic split (``folder_splits``).
"""
from __future__ import annotations

import csv
import os
import re
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Literal, Mapping

import numpy as np

from .image_folder import DataError

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm")
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")
SPLIT_LIST_DIRS = ("", "ucfTrainTestlist")
KINETICS_LIST_DIRS = ("", "annotations")
KINETICS_CSVS = {"train": ("train.csv",), "val": ("validate.csv", "val.csv"), "test": ("test.csv",)}
KINETICS_COLUMNS = ("label", "youtube_id", "time_start", "time_end")
# Folder names that hold one Kinetics split (the CSV's own name, and the downloaders' ``val`` for ``validate``).
KINETICS_SPLIT_DIRS = {"train": ("train",), "val": ("val", "validate", "valid"), "test": ("test",)}
KINETICS_SEARCH_DEPTH = 2  # folders below root: <split>/<label>/<clip>
LIST_FORMATS = ("auto", "ucf101", "kinetics", "mmaction", "folder")
ListFormat = Literal["auto", "ucf101", "kinetics", "mmaction", "folder"]
Splits = dict[str, list[tuple[str, int]]]
SAMPLE_KINDS = f"videos ({', '.join(VIDEO_SUFFIXES)}) or frame folders ({', '.join(FRAME_SUFFIXES)} images)"


# ---- samples ----------------------------------------------------------------------------------------------------
def is_frame_dir(path: str | os.PathLike) -> bool:
    """True when ``path`` is a directory holding at least one ``FRAME_SUFFIXES`` image (stops at the first)."""
    try:
        with os.scandir(path) as entries:
            return any(e.name.lower().endswith(FRAME_SUFFIXES) and e.is_file() for e in entries)
    except (NotADirectoryError, FileNotFoundError):
        return False


def is_video_file(path: Path) -> bool:
    """Whether ``path`` is a file with a video suffix (``.mp4 .avi .mkv .mov .webm``).

    Args:
        path: the file.
    """
    return path.suffix.lower() in VIDEO_SUFFIXES and path.is_file()


def samples_in(folder: Path) -> list[Path]:
    """The video files and frame folders directly in ``folder``, sorted (hidden entries skipped)."""
    return sorted(p for p in folder.iterdir()
                  if not p.name.startswith(".") and (is_video_file(p) or (p.is_dir() and is_frame_dir(p))))


def resolve_listed(root: Path, relative: str) -> Path | None:
    """The sample a list entry names: the file ``root/relative``, else the frame folder ``root/relative`` (an
    entry naming the folder), else the frame folder of the entry without its video suffix (``Class/v_x.avi`` ->
    ``Class/v_x/``); None when none exists."""
    path = root / relative.replace("\\", "/")
    if path.is_file():
        return path
    if is_frame_dir(path):
        return path
    if path.suffix.lower() in VIDEO_SUFFIXES and is_frame_dir(path.with_suffix("")):
        return path.with_suffix("")
    return None


def find_video_classes(root: Path, exclude: tuple[str, ...] = SPLIT_LIST_DIRS) -> list[str]:
    """Class folders of ``root`` (hidden folders and ``exclude`` left out); each must hold samples."""
    if not root.is_dir():
        raise DataError(f"{root}: video folder not found (expected {root}/<class>/<video>.mp4)")
    classes = sorted(p.name for p in root.iterdir()
                     if p.is_dir() and not p.name.startswith(".") and p.name not in exclude)
    if not classes:
        raise DataError(f"{root}: no class folders (expected {root}/<class>/<video>.mp4 or "
                        f"{root}/<class>/<video>/img_00001.jpg)")
    for name in classes:
        if not samples_in(root / name):
            raise DataError(f"{root / name}: class folder holds no {SAMPLE_KINDS}")
    return classes


def _read_lines(path: Path) -> list[tuple[int, str]]:
    return [(n, line.strip()) for n, line in enumerate(path.read_text().splitlines(), start=1) if line.strip()]


# ---- UCF101 lists -----------------------------------------------------------------------------------------------
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


def read_class_index(path: Path) -> list[str]:
    """Class names of a UCF101 ``classInd.txt`` (lines ``<index> <class>``, indices 1, 2, ... in order)."""
    classes: list[str] = []
    for n, line in _read_lines(path):
        match = re.fullmatch(r"(\d+)\s+(\S+)", line)
        if not match or int(match.group(1)) != len(classes) + 1:
            raise DataError(f"{path}:{n}: expected '<index> <class>' with indices 1, 2, ... in order, got {line!r}")
        classes.append(match.group(2))
    if not classes:
        raise DataError(f"{path}: no classes listed")
    return classes


def read_split_lists(root: Path, files: dict[str, Path]) -> tuple[list[str], Splits]:
    """Class names (``classInd.txt`` order) and ``{"train": [(path, label)], "test": [...]}``; entries resolve
    to files or frame folders (``resolve_listed``)."""
    classes = read_class_index(files["classes"])
    index = {name: i for i, name in enumerate(classes)}
    for name in classes:
        folder = root / name
        if not folder.is_dir():
            raise DataError(f"{folder}: class folder listed in {files['classes']} does not exist")
        if not samples_in(folder):
            raise DataError(f"{folder}: class folder holds no {SAMPLE_KINDS}")
    splits: Splits = {}
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
            path = resolve_listed(root, relative)
            if path is None:
                raise DataError(f"{files[split]}:{n}: listed video {root / relative} does not exist (nor a frame "
                                f"folder {root / Path(relative).with_suffix('')})")
            samples.append((str(path), index[class_name]))
        if not samples:
            raise DataError(f"{files[split]}: lists no videos")
        splits[split] = samples
    return classes, splits


# ---- Kinetics CSVs ----------------------------------------------------------------------------------------------
def find_kinetics_lists(root: Path) -> dict[str, Path] | None:
    """Kinetics ``train.csv`` / ``validate.csv`` (or ``val.csv``) / ``test.csv`` (optional) in ``root`` or
    ``root/annotations``; None when there is no ``train.csv``."""
    for sub in KINETICS_LIST_DIRS:
        folder = root / sub
        if not (folder / "train.csv").is_file():
            continue
        files = {}
        for split, names in KINETICS_CSVS.items():
            found = [folder / name for name in names if (folder / name).is_file()]
            if found:
                files[split] = found[0]
        if "val" not in files:
            raise DataError(f"{folder}: train.csv is there but no validate.csv or val.csv (Kinetics lists)")
        return files
    return None


def kinetics_clip_name(youtube_id: str, time_start: int, time_end: int) -> str:
    """A clip's file stem as the Kinetics downloaders write it: ``<youtube_id>_<start:06d>_<end:06d>``."""
    return f"{youtube_id}_{time_start:06d}_{time_end:06d}"


def _seconds(path: Path, line: int, column: str, value: str) -> int:
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not seconds.is_integer() or seconds < 0:
        raise DataError(f"{path}:{line}: {column} must be a whole number of seconds, got {value!r}")
    return int(seconds)


def read_kinetics_csv(path: Path) -> tuple[list[tuple[int, str | None, str]], bool]:
    """Rows of a Kinetics CSV as ``(line, label, clip name)`` (label None when the CSV has no label column, as
    the withheld test sets), and whether it has labels. The csv module handles quoted labels (commas, quotes)."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [c.strip() for c in reader.fieldnames or []]
        reader.fieldnames = header
        labelled = "label" in header
        missing = [c for c in KINETICS_COLUMNS if c not in header and c != "label"]
        if missing:
            raise DataError(f"{path}: a Kinetics CSV needs the columns {', '.join(KINETICS_COLUMNS)} (and split); "
                            f"{', '.join(missing)} missing from its header {header} (for '<video> <label>' lines, "
                            f"as SlowFast's train.csv, use list_format 'mmaction' with list_files)")
        rows = []
        for row in reader:
            line = reader.line_num
            label = row["label"].strip() if labelled and row["label"] is not None else None
            if labelled and not label:
                raise DataError(f"{path}:{line}: empty label")
            youtube_id = (row["youtube_id"] or "").strip()
            if not youtube_id:
                raise DataError(f"{path}:{line}: empty youtube_id")
            name = kinetics_clip_name(youtube_id, _seconds(path, line, "time_start", row["time_start"] or ""),
                                      _seconds(path, line, "time_end", row["time_end"] or ""))
            rows.append((line, label, name))
    return rows, labelled


def index_clips(root: Path, names: set[str], depth: int = KINETICS_SEARCH_DEPTH) -> dict[str, list[Path]]:
    """Where each of ``names`` lies up to ``depth`` folders below ``root``: video files of that stem and frame
    folders of that name (not searched inside); hidden entries and ``annotations`` skipped."""
    found: dict[str, list[Path]] = defaultdict(list)
    stack = [(root, 0)]
    while stack:
        folder, level = stack.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    if entry.name in names:
                        if is_frame_dir(entry.path):
                            found[entry.name].append(Path(entry.path))
                    elif level < depth and not (level == 0 and entry.name == "annotations"):
                        stack.append((Path(entry.path), level + 1))
                    continue
                stem, suffix = os.path.splitext(entry.name)
                if suffix.lower() in VIDEO_SUFFIXES and stem in names:
                    found[stem].append(Path(entry.path))
    return {name: sorted(paths) for name, paths in found.items()}


def _pick_clip(root: Path, split: str, paths: list[Path], where: str) -> Path:
    """One of the places a clip was found: files before frame folders, then those under the split's folder."""
    if len(paths) > 1:
        paths = [p for p in paths if p.is_file()] or paths
    if len(paths) > 1:
        paths = [p for p in paths if p.relative_to(root).parts[0] in KINETICS_SPLIT_DIRS[split]] or paths
    if len(paths) > 1:
        raise DataError(f"{where}: the clip is in several places under {root}: {', '.join(map(str, paths))}")
    return paths[0]


def read_kinetics_lists(root: Path, files: Mapping[str, Path]) -> tuple[list[str], Splits]:
    """Class names (sorted unique labels of ``train.csv``) and ``{"train", "val", "test"}`` samples of the
    clips present (see the module docstring for the naming, search and missing-clip rules)."""
    rows, labelled = {}, {}
    for split, path in files.items():
        rows[split], labelled[split] = read_kinetics_csv(path)
    if not labelled["train"] or not labelled["val"]:
        raise DataError(f"{files['train'] if not labelled['train'] else files['val']}: has no label column")
    classes = sorted({label for _, label, _ in rows["train"]})
    if not classes:
        raise DataError(f"{files['train']}: lists no clips")
    index = {name: i for i, name in enumerate(classes)}
    if "test" in files and not labelled["test"]:
        warnings.warn(f"{files['test']}: has no labels (withheld in this Kinetics release); the test split is "
                      f"the validation split, {files['val'].name}", stacklevel=3)
        del rows["test"]
    for split, split_rows in rows.items():
        for line, label, _ in split_rows:
            if label not in index:
                raise DataError(f"{files[split]}:{line}: label {label!r} is not a class of {files['train'].name} "
                                f"({len(classes)} classes)")
    where = index_clips(root, {name for split_rows in rows.values() for _, _, name in split_rows})
    splits: Splits = {}
    for split, split_rows in rows.items():
        samples, absent = [], []
        for line, label, name in split_rows:
            if name in where:
                path = _pick_clip(root, split, where[name], f"{files[split]}:{line}")
                samples.append((str(path), index[label]))
            else:
                absent.append(name)
        if not samples:
            raise DataError(f"{files[split]}: none of its {len(split_rows)} clips is under {root} (looked for "
                            f"<youtube_id>_<start:06d>_<end:06d> video files or frame folders, e.g. "
                            f"{split_rows[0][2] if split_rows else '?'}, up to {KINETICS_SEARCH_DEPTH} folders deep)")
        if absent:
            warnings.warn(f"{files[split]}: {len(absent)} of {len(split_rows)} listed clips are not under {root} "
                          f"and are skipped (missing Kinetics videos, e.g. YouTube takedowns, are common): "
                          f"{', '.join(absent[:3])}{' ...' if len(absent) > 3 else ''}", stacklevel=3)
        splits[split] = samples
    splits.setdefault("test", splits["val"])
    return classes, splits


# ---- MMAction2 lists --------------------------------------------------------------------------------------------
def read_mmaction_list(root: Path, path: Path) -> list[tuple[str, int]]:
    """An MMAction2 list: ``<relative frame folder> <num_frames> <label>`` or ``<relative video> <label>`` lines
    (paths relative to ``root``); every listed sample must exist."""
    samples = []
    for n, line in _read_lines(path):
        parts = line.split()
        if len(parts) not in (2, 3) or not all(p.isdigit() for p in parts[1:]):
            raise DataError(f"{path}:{n}: expected '<frame folder> <num_frames> <label>' or '<video> <label>' "
                            f"(MMAction2 list), got {line!r}")
        sample = resolve_listed(root, parts[0])
        if sample is None:
            raise DataError(f"{path}:{n}: listed sample {root / parts[0]} does not exist (no video file or frame "
                            f"folder)")
        samples.append((str(sample), int(parts[-1])))
    if not samples:
        raise DataError(f"{path}: lists no videos")
    return samples


def read_mmaction_lists(root: Path, list_files: Mapping[str, str | os.PathLike]) -> tuple[list[str], Splits]:
    """Class names and splits from MMAction2 lists ``{"train", "val"[, "test"]}`` (test defaults to val)."""
    unknown = set(list_files) - {"train", "val", "test"}
    if unknown or not {"train", "val"} <= set(list_files):
        raise DataError(f"list_files: needs 'train' and 'val' (and optionally 'test') list files, got "
                        f"{sorted(list_files)}")
    files = {split: root / Path(p) for split, p in list_files.items()}
    for split, path in files.items():
        if not path.is_file():
            raise DataError(f"{path}: {split} list file not found (list_files are relative to {root})")
    splits = {split: read_mmaction_list(root, path) for split, path in files.items()}
    splits.setdefault("test", splits["val"])
    num_classes = 1 + max(label for samples in splits.values() for _, label in samples)
    class_index = next((root / sub / "classInd.txt" for sub in SPLIT_LIST_DIRS
                        if (root / sub / "classInd.txt").is_file()), None)
    classes = read_class_index(class_index) if class_index else [str(i) for i in range(num_classes)]
    if num_classes > len(classes):
        raise DataError(f"{files['train']}: label {num_classes - 1} is out of range for the {len(classes)} "
                        f"classes of {class_index}")
    return classes, splits


# ---- folder split and the entry point ---------------------------------------------------------------------------
def folder_splits(root: Path, *, val_fraction: float = 0.2, test_fraction: float = 0.2,
                  seed: int = 0) -> tuple[list[str], Splits]:
    """Per class folder, the sorted samples shuffled with ``seed``: the first ``val_fraction`` go to val, the
    next ``test_fraction`` to test, the rest (at least one) to train."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"val_fraction {val_fraction} and test_fraction {test_fraction} must be in [0, 1) "
                         f"and leave videos for training")
    classes = find_video_classes(root)
    splits: Splits = {"train": [], "val": [], "test": []}
    for label, name in enumerate(classes):
        videos = [str(p) for p in samples_in(root / name)]
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


def detect_list_format(root: Path) -> str:
    """``ucf101`` when a ``classInd.txt`` is there, else ``kinetics`` when a ``train.csv`` is, else ``folder``."""
    if any((root / sub / "classInd.txt").is_file() for sub in SPLIT_LIST_DIRS):
        return "ucf101"
    if any((root / sub / "train.csv").is_file() for sub in KINETICS_LIST_DIRS):
        return "kinetics"
    return "folder"


def video_splits(root: str | os.PathLike, *, list_format: ListFormat = "auto", split: int = 1,
                 val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0,
                 list_files: Mapping[str, str | os.PathLike] | None = None) -> tuple[list[str], Splits]:
    """Class names and ``{"train", "val", "test"}`` lists of ``(path, label)``, a path being a video file or a
    frame folder.

    ``list_format`` (see the module docstring): ``auto`` (``mmaction`` when ``list_files`` are given, as its
    lists have no fixed names; else UCF101 lists, else Kinetics CSVs, else the folder split), ``ucf101``, ``kinetics``,
    ``mmaction`` (with ``list_files``) or ``folder``. With UCF101 lists ``val`` is the test list (UCF101 has no
    validation split; the usual practice, so model selection on ``val`` is selection on the test split); with
    Kinetics ``val`` is ``validate.csv``. ``split`` picks UCF101's split 1, 2 or 3; ``val_fraction``,
    ``test_fraction`` and ``seed`` apply to the folder split only.
    """
    root = Path(root)
    if list_format not in LIST_FORMATS:
        raise ValueError(f"list_format must be one of {', '.join(LIST_FORMATS)}, got {list_format!r}")
    if list_format == "mmaction" or (list_format == "auto" and list_files):
        if not list_files:
            raise DataError(f"{root}: list_format 'mmaction' needs list_files {{train: ..., val: ...}}")
        return read_mmaction_lists(root, list_files)
    if not root.is_dir():
        raise DataError(f"{root}: video folder not found (expected {root}/<class>/<video>.mp4)")
    chosen = detect_list_format(root) if list_format == "auto" else list_format
    if chosen == "ucf101":
        files = find_split_lists(root, split)
        if files is None:
            raise DataError(f"{root}: list_format 'ucf101' but no classInd.txt in {root} or {root}/ucfTrainTestlist")
        classes, lists = read_split_lists(root, files)
        return classes, {"train": lists["train"], "val": lists["test"], "test": lists["test"]}
    if chosen == "kinetics":
        files = find_kinetics_lists(root)
        if files is None:
            raise DataError(f"{root}: list_format 'kinetics' but no train.csv in {root} or {root}/annotations")
        return read_kinetics_lists(root, files)
    return folder_splits(root, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
