"""torchvision's RandAugment / TrivialAugmentWide / RandomErasing inside the YAML transform lists."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from densecnn.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_pipeline, transform_from_spec
from tasks import ImageFolderDataModule

IMAGE = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)  # non-square on purpose


def chw(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1)


def normalise(x: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    return (x.float() / 255 - mean) / std


@pytest.mark.parametrize("spec, reference", [
    ({"name": "RandAugment", "num_ops": 2, "magnitude": 9}, lambda: v2.RandAugment(num_ops=2, magnitude=9)),
    ({"name": "RandAugment", "num_ops": 1, "magnitude": 15, "interpolation": "bilinear"},
     lambda: v2.RandAugment(num_ops=1, magnitude=15, interpolation=v2.InterpolationMode.BILINEAR)),
    ({"name": "TrivialAugmentWide"}, lambda: v2.TrivialAugmentWide()),
])
def test_policy_wrapper_equals_torchvision_with_the_same_torch_seed(spec, reference):
    transform = transform_from_spec(spec)
    outputs = []
    for seed in range(6):
        torch.manual_seed(seed)
        expected = reference()(chw(IMAGE)).permute(1, 2, 0).numpy()
        torch.manual_seed(seed)
        # numpy's and Python's generators are not used: moving them changes nothing
        np.random.seed(seed + 100)
        random.seed(seed + 100)
        out = transform(image=IMAGE)["image"]
        assert out.dtype == np.uint8 and out.shape == IMAGE.shape
        np.testing.assert_array_equal(out, expected)
        outputs.append(out)
    assert any(not np.array_equal(o, IMAGE) for o in outputs)  # it augments ...
    assert any(not np.array_equal(o, outputs[0]) for o in outputs[1:])  # ... differently per seed


def test_yaml_pipeline_equals_torchvision_and_erases_after_normalisation():
    spec = [{"name": "RandomErasing", "p": 1.0, "value": "random"},  # listed first, runs last
            {"name": "RandAugment", "num_ops": 2, "magnitude": 9},
            {"name": "TrivialAugmentWide"}]
    pipeline = build_pipeline(spec, image_size=32, train=True)
    for seed in range(4):
        torch.manual_seed(seed)
        out = pipeline(image=IMAGE)["image"]
        torch.manual_seed(seed)
        x = v2.TrivialAugmentWide()(v2.RandAugment(num_ops=2, magnitude=9)(chw(IMAGE)))
        expected = v2.RandomErasing(p=1.0, value="random")(normalise(x))
        assert out.dtype == torch.float32 and out.shape == (3, 24, 40)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_random_erasing_with_value_zero_fills_with_the_mean_colour():
    pipeline = build_pipeline([{"name": "RandomErasing", "p": 1.0, "value": 0}], image_size=32, train=True)
    torch.manual_seed(0)
    out = pipeline(image=IMAGE)["image"]
    changed = (out - normalise(chw(IMAGE))).abs() > 1e-4
    rows, cols = changed.any(dim=(0, 2)).nonzero()[:, 0], changed.any(dim=(0, 1)).nonzero()[:, 0]
    box = (slice(None), slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    assert 0 < out[box][0].numel() < 24 * 40
    # zero after Normalize is the dataset mean; before it, zero would have meant black (-mean/std here)
    assert torch.all(out[box] == 0)


def test_datamodule_yields_normalised_tensors(classification_root):
    dm = ImageFolderDataModule(str(classification_root), image_size=32, train_transforms=[
        {"name": "RandAugment"}, {"name": "TrivialAugmentWide"}, {"name": "RandomErasing", "p": 0.25}])
    dm.setup("fit")
    torch.manual_seed(0)
    image = dm.train_set[0]["image"]
    assert image.dtype == torch.float32 and image.shape == (3, 32, 32)
    assert image.min() < 0  # normalised, not [0, 1] or uint8


@pytest.mark.parametrize("spec, message", [
    ({"name": "RandAugment", "p": 0.5}, r"train_transforms\[1\]: RandAugment\(\{'p': 0.5\}\) is invalid.*'p'"),
    ({"name": "TrivialAugmentWide", "magnitude": 9}, r"train_transforms\[1\]: TrivialAugmentWide.*'magnitude'"),
    ({"name": "RandomErasing", "value": "noise"}, r"train_transforms\[1\]: RandomErasing.*'random'"),
])
def test_bad_arguments_name_the_entry(classification_root, spec, message):
    with pytest.raises(ValueError, match=message):
        ImageFolderDataModule(str(classification_root), image_size=32,
                              train_transforms=[{"name": "HorizontalFlip"}, spec])
