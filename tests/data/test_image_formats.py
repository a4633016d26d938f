"""Image files beyond 8-bit RGB PNG/JPEG: 16-bit greyscale, JFIF, GIF, and files the image-folder dataset skips."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2.functional import to_dtype

from densecnn.data import IMAGE_SUFFIXES, ImageFolderDataset, read_rgb
from densecnn.data.image_folder import grey_to_uint8


def _ramp16() -> np.ndarray:
    """Every 16-bit level class at both ends and in between, 0 and 65535 included."""
    return np.linspace(0, 65535, 8 * 12).round().astype(np.uint16).reshape(8, 12)


def test_16_bit_png_scales_to_8_bits_instead_of_saturating(tmp_path):
    values = _ramp16()
    Image.fromarray(values).save(tmp_path / "depth16.png")
    assert Image.open(tmp_path / "depth16.png").mode.startswith("I;16")  # the file really is 16-bit
    image = read_rgb(tmp_path / "depth16.png")
    expected = np.array([round(int(v) / 257) for v in values.ravel()], dtype=np.uint8).reshape(values.shape)
    assert image.dtype == np.uint8 and image.shape == (8, 12, 3)
    for channel in range(3):
        np.testing.assert_array_equal(image[..., channel], expected)
    assert (image == 255).mean() < 0.05  # Pillow's plain convert("RGB") made every nonzero pixel 255
    # torchvision decodes the same file to the same 16-bit values that were scaled
    decoded = decode_image(torch.from_numpy(np.fromfile(tmp_path / "depth16.png", dtype=np.uint8)),
                           mode=ImageReadMode.GRAY)
    np.testing.assert_array_equal(decoded[0].numpy().astype(np.int64), values.astype(np.int64))
    # and torchvision's own 16 -> 8 bit scaling (a right shift by 8) is at most one level from ours
    shifted = to_dtype(decoded, torch.uint8, scale=True)[0].numpy().astype(np.int64)
    assert np.abs(expected.astype(np.int64) - shifted).max() <= 1


def test_16_bit_png_keeps_the_exif_orientation(tmp_path):
    values = _ramp16()
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    Image.fromarray(values).save(tmp_path / "rotated16.png", exif=exif)
    image = read_rgb(tmp_path / "rotated16.png")
    expected = np.rot90(np.rint(values / 257.0).astype(np.uint8), k=-1)  # clockwise
    np.testing.assert_array_equal(image[..., 0], expected)


def test_32_bit_grey_is_divided_by_its_maximum_and_8_bit_range_kept():
    wide = Image.fromarray(np.array([[0, 1000, 2000], [3000, 4000, 5100]], dtype=np.int32), mode="I")
    np.testing.assert_array_equal(grey_to_uint8(wide), [[0, 50, 100], [150, 200, 255]])  # x 255 / 5100
    narrow = Image.fromarray(np.array([[0, 7, 255]], dtype=np.int32), mode="I")
    np.testing.assert_array_equal(grey_to_uint8(narrow), [[0, 7, 255]])


def _rgb(seed: int, size=(10, 14)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def test_jfif_reads_as_the_jpeg_it_is(tmp_path):
    pixels = _rgb(0)
    Image.fromarray(pixels).save(tmp_path / "photo.jfif", format="JPEG", quality=95)
    assert ".jfif" in IMAGE_SUFFIXES
    with Image.open(tmp_path / "photo.jfif") as reference:  # the decoder's own RGB output is the oracle
        np.testing.assert_array_equal(read_rgb(tmp_path / "photo.jfif"), np.asarray(reference.convert("RGB")))


def test_gif_reads_its_first_frame_as_rgb(tmp_path):
    # flat colours survive GIF's 256-colour palette exactly
    first = np.zeros((10, 14, 3), np.uint8)
    first[:, :7] = (200, 30, 10)
    first[:, 7:] = (0, 90, 250)
    second = np.full((10, 14, 3), 77, np.uint8)
    frames = [Image.fromarray(a) for a in (first, second)]
    frames[0].save(tmp_path / "clip.gif", save_all=True, append_images=frames[1:], duration=100)
    assert Image.open(tmp_path / "clip.gif").n_frames == 2
    image = read_rgb(tmp_path / "clip.gif")
    assert image.shape == (10, 14, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, first)


def test_image_folder_reads_jfif_and_gif_and_names_what_it_skips(tmp_path):
    split = tmp_path / "train"
    for name in ("cat", "dog"):
        (split / name).mkdir(parents=True)
    Image.fromarray(_rgb(1)).save(split / "cat" / "a.jfif", format="JPEG")
    Image.fromarray(np.full((10, 14, 3), 40, np.uint8)).save(split / "dog" / "b.gif")
    Image.fromarray(_rgb(2)).save(split / "dog" / "c.png")
    (split / "dog" / "notes.txt").write_text("not an image")
    Image.fromarray(_rgb(3)).save(split / "cat" / "d.heic", format="PNG")  # a suffix we do not read
    (split / "cat" / ".DS_Store").write_bytes(b"\0")  # hidden files are skipped silently
    with pytest.warns(UserWarning, match=r"skipping 2 file\(s\) whose suffix is not an image type") as record:
        dataset = ImageFolderDataset(split)
    message = str(record[0].message)
    assert "d.heic" in message and "notes.txt" in message and ".DS_Store" not in message
    assert sorted((s[0].rsplit("/", 1)[-1], s[1]) for s in dataset.samples) == [("a.jfif", 0), ("b.gif", 1),
                                                                                ("c.png", 1)]
    gif = next(dataset[i] for i in range(len(dataset)) if dataset[i]["path"].endswith("b.gif"))
    torch.testing.assert_close(gif["image"], torch.full((3, 10, 14), 40 / 255))
