"""``root/<split>/<class>/*.{png,jpg,...}`` classification data, read through an albumentations pipeline."""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset

from densecnn.errors import UserError

#: what the datasets read: torchvision ImageFolder's extensions plus ``.jfif`` (JPEG) and ``.gif`` (its first frame)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".jfif", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")


class DataError(UserError):
    """Bad input data: the message names the file or folder and what is wrong with it."""


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """An image file as uint8 HxWx3, as it is displayed: its EXIF orientation (a phone photo's "rotate 90"
    tag) applied, so every task sees the pixels, the size and the box coordinates a viewer or annotation tool
    shows. A 16-bit greyscale file is scaled to 8 bits (``grey_to_uint8``), an animated GIF gives its first
    frame. A file that cannot be decoded raises DataError naming it."""
    try:
        with Image.open(path) as image:  # a GIF opens on its first frame
            image = ImageOps.exif_transpose(image)
            if image.mode in WIDE_GREY_MODES:
                return np.repeat(grey_to_uint8(image)[..., None], 3, axis=2)
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{path}: cannot decode image ({err})") from err


#: Pillow modes of one channel wider than 8 bits: 16-bit greyscale (PNG, TIFF, PGM), 32-bit integer and float
WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def grey_to_uint8(image: Image.Image) -> np.ndarray:
    """A wide greyscale image as uint8 HxW. Pillow's ``convert("RGB")`` clips such values at 255, which turns
    a 16-bit picture white. 16-bit data maps 0..65535 onto 0..255 as ``round(v / 257)`` (0 and 65535 land
    exactly on 0 and 255; torchvision's ``to_dtype(decode_image(...), torch.uint8, scale=True)`` shifts right by
    8 instead, at most one level apart); 32-bit integer or float data, whose range the file does not state, is
    divided by its maximum when that exceeds 255 and kept as it is otherwise."""
    values = np.nan_to_num(np.asarray(image, dtype=np.float64))  # a float file's NaN reads as black
    if image.mode.startswith("I;16"):
        scale = 257.0
    else:
        top = float(values.max(initial=0.0))
        scale = top / 255.0 if top > 255.0 else 1.0
    return np.clip(np.rint(values / scale), 0, 255).astype(np.uint8)


#: EXIF tag 0x0112, Orientation: 1 = as stored; 5-8 turn the image by a quarter (width and height swap)
EXIF_ORIENTATION = 0x0112


def exif_orientation(path: str | os.PathLike) -> int | None:
    """The file's EXIF orientation tag (1..8), or None when it has none or cannot be read."""
    try:
        with Image.open(path) as image:
            value = image.getexif().get(EXIF_ORIENTATION)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return None
    return int(value) if value is not None else None


def is_readable_image(path: str | os.PathLike) -> bool:
    """Whether ``path`` decodes as an image (``read_rgb`` succeeds).

    Args:
        path: the file.
    """
    try:
        read_rgb(path)
        return True
    except DataError:
        return False


def find_classes(split_dir: Path) -> list[str]:
    """The sorted class folder names of one split of an ImageFolder dataset (hidden folders ignored).

    Args:
        split_dir: ``<root>/<split>``.

    Raises:
        DataError: the folder is missing or has no class folders.
    """
    if not split_dir.is_dir():
        raise DataError(f"{split_dir}: split folder not found (expected <root>/<split>/<class>/<images>)")
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{split_dir}: no class folders (expected {split_dir}/<class>/<images>)")
    return classes


def split_image_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """The folder's image files by suffix (sorted), and its other files, which the dataset skips with a
    warning. Hidden files (``.DS_Store``) and sub-folders are neither."""
    files = sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_file())
    return ([p for p in files if p.suffix.lower() in IMAGE_SUFFIXES],
            [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES])


class ImageFolderDataset(Dataset):
    """Samples ``{"image": CHW float tensor, "label": int, "path": str}`` from ``split_dir/<class>/*``.

    Args:
        split_dir: folder holding one sub-folder per class.
        class_names: the class list to index labels by (the training split's); a class folder here that is
            not in it is an error. Defaults to this split's own folders.
        transform: an albumentations pipeline called as ``transform(image=...)``.
        skip_corrupt: check every file at construction and drop undecodable ones with a warning instead of
            failing when one is read.
    """

    def __init__(self, split_dir: str | os.PathLike, class_names: Sequence[str] | None = None,
                 transform: Callable | None = None, skip_corrupt: bool = False):
        self.split_dir = Path(split_dir)
        own_classes = find_classes(self.split_dir)
        self.class_names = list(class_names) if class_names is not None else own_classes
        unknown = sorted(set(own_classes) - set(self.class_names))
        if unknown:
            raise DataError(f"{self.split_dir}: class folders {unknown} do not exist in the training split "
                            f"(classes: {self.class_names})")
        self.transform = transform
        per_class: list[list[tuple[str, int]]] = []
        skipped: list[Path] = []
        for class_name in own_classes:
            folder = self.split_dir / class_name
            files, others = split_image_files(folder)
            skipped += others
            if not files:
                raise DataError(f"{folder}: class folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
            label = self.class_names.index(class_name)
            per_class.append([(str(p), label) for p in files])
        if skipped:
            warnings.warn(f"{self.split_dir}: skipping {len(skipped)} file(s) whose suffix is not an image type "
                          f"({', '.join(IMAGE_SUFFIXES)}): {', '.join(str(p) for p in skipped[:5])}"
                          + (" ..." if len(skipped) > 5 else ""), stacklevel=2)
        # Round-robin over classes: an unshuffled evaluation batch (and its logged picture) shows every class.
        longest = max(len(files) for files in per_class)
        self.samples: list[tuple[str, int]] = [files[i] for i in range(longest) for files in per_class
                                               if i < len(files)]
        if skip_corrupt:
            bad = [path for path, _ in self.samples if not is_readable_image(path)]
            if bad:
                warnings.warn(f"{self.split_dir}: skipping {len(bad)} unreadable image(s): {', '.join(bad[:5])}"
                              + (" ..." if len(bad) > 5 else ""), stacklevel=2)
                bad_set = set(bad)
                self.samples = [s for s in self.samples if s[0] not in bad_set]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        path, label = self.samples[index]
        image = read_rgb(path)
        if self.transform is not None:
            image = self.transform(image=image)["image"]
        else:
            image = torch.tensor(image).permute(2, 0, 1).float().div(255)  # Pillow's arrays are read-only
        return {"image": image, "label": label, "path": path}

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]
