"""Albumentations pipelines: the papers' recipes as named presets, and pipelines declared in YAML.

A YAML pipeline is a list of ``{name: <albumentations or densecnn transform>, <its arguments>...}``::

    train_transforms:
      - {name: SmallestMaxSize, max_size: 256}
      - {name: RandomCrop, height: 224, width: 224}
      - {name: HorizontalFlip, p: 0.5}
      - {name: PCALighting, alpha_std: 0.1}
      - {name: RandAugment, num_ops: 2, magnitude: 9}
      - {name: RandomErasing, p: 0.25, value: random}

Normalisation and the conversion to a CHW tensor are appended by ``build_pipeline`` in every case.

``RandAugment``, ``TrivialAugmentWide`` and ``RandomErasing`` are torchvision's (``transforms.v2``, same
arguments), run inside the albumentations pipeline. ``RandomErasing`` always runs after normalisation, on the
float tensor, wherever it is listed (as in torchvision's reference recipes and timm): ``value: 0`` fills with
the normalisation's mean colour, ``value: random`` with per-pixel N(0, 1) noise (timm's ``--remode pixel``).
"""
from __future__ import annotations

from typing import Any, Sequence

import albumentations as A
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Eigen-decomposition of ImageNet's RGB pixel covariance (pixels in [0, 1]), as used by the reference
# ResNet training code for AlexNet's lighting noise.
IMAGENET_PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_PCA_EIGVEC = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))


class PCALighting(A.ImageOnlyTransform):
    """AlexNet's colour augmentation (Krizhevsky et al. 2012, Section 4.1; S1 L126-161).

    Adds ``[p1, p2, p3] [a1 l1, a2 l2, a3 l3]^T`` to every pixel, with ``p_i, l_i`` the eigenvectors and
    eigenvalues of the training set's RGB covariance and ``a_i ~ N(0, alpha_std)`` drawn once per image
    each time it is presented. Unlike albumentations' FancyPCA (a PCA of each image on its own), the
    decomposition is the training set's; ``rgb_pca`` computes it for a dataset.
    """

    def __init__(self, alpha_std: float = 0.1, eigval: Sequence[float] = IMAGENET_PCA_EIGVAL,
                 eigvec: Sequence[Sequence[float]] = IMAGENET_PCA_EIGVEC, p: float = 1.0):
        super().__init__(p=p)
        self.alpha_std = alpha_std
        self.eigval = np.asarray(eigval, dtype=np.float32)
        self.eigvec = np.asarray(eigvec, dtype=np.float32)

    def get_params(self) -> dict[str, Any]:
        return {"alpha": self.random_generator.normal(0.0, self.alpha_std, size=3).astype(np.float32)}

    def apply(self, img: np.ndarray, alpha: np.ndarray, **params: Any) -> np.ndarray:
        shift = self.eigvec @ (alpha * self.eigval)  # in [0, 1] pixel units
        if img.dtype == np.uint8:
            return np.clip(img.astype(np.float32) + 255.0 * shift, 0, 255).astype(np.uint8)
        return img + shift.astype(img.dtype)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("alpha_std", "eigval", "eigvec")


def rgb_pca(images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending) and eigenvectors (as columns) of the RGB covariance of uint8 HWC images."""
    pixels = np.concatenate([np.asarray(im, dtype=np.float64).reshape(-1, 3) / 255.0 for im in images])
    eigval, eigvec = np.linalg.eigh(np.cov(pixels, rowvar=False))
    order = np.argsort(eigval)[::-1]
    return eigval[order].astype(np.float32), eigvec[:, order].astype(np.float32)


class TorchvisionTransform(A.ImageOnlyTransform):
    """A ``torchvision.transforms.v2`` image transform as a step of an albumentations pipeline.

    uint8 HWC arrays go through it as CHW uint8 tensors (torchvision's augmentation policies are defined on
    uint8); tensors after ``ToTensorV2`` go through as they are. Its random draws come from torch's global
    generator only (albumentations' own ``p`` is fixed at 1), so seeding torch per sample fixes them.
    """

    #: placed after ``Normalize`` + ``ToTensorV2`` by ``build_pipeline``
    after_normalize = False

    def __init__(self, transform: v2.Transform):
        super().__init__(p=1.0)
        self.transform = transform

    def apply(self, img: np.ndarray | torch.Tensor, **params: Any) -> np.ndarray | torch.Tensor:
        if isinstance(img, torch.Tensor):
            return self.transform(img)
        if not img.flags.writeable:  # decoded images are read-only views; torch wants to own writable memory
            img = img.copy()
        return self.transform(torch.from_numpy(img).permute(2, 0, 1)).permute(1, 2, 0).numpy()

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("transform",)


class RandAugment(TorchvisionTransform):
    """``torchvision.transforms.v2.RandAugment(num_ops=2, magnitude=9, ...)`` (Cubuk et al. 2020)."""

    def __init__(self, **kwargs: Any):
        super().__init__(v2.RandAugment(**kwargs))


class TrivialAugmentWide(TorchvisionTransform):
    """``torchvision.transforms.v2.TrivialAugmentWide(...)`` (Müller & Hutter 2021)."""

    def __init__(self, **kwargs: Any):
        super().__init__(v2.TrivialAugmentWide(**kwargs))


class RandomErasing(TorchvisionTransform):
    """``torchvision.transforms.v2.RandomErasing(p=0.5, scale, ratio, value=0)`` (Zhong et al. 2020) on the
    normalised tensor."""

    after_normalize = True

    def __init__(self, **kwargs: Any):
        super().__init__(v2.RandomErasing(**kwargs))


_CUSTOM = {"PCALighting": PCALighting, "RandAugment": RandAugment, "TrivialAugmentWide": TrivialAugmentWide,
           "RandomErasing": RandomErasing}


def _preset_alexnet(size: int, train: bool) -> list:
    # Shorter side 256, central 256x256 crop; random 224 crops + flips + PCA lighting (S1 L126-161).
    scale = round(size * 256 / 224)
    base = [A.SmallestMaxSize(max_size=scale), A.CenterCrop(scale, scale)]
    if train:
        return base + [A.RandomCrop(size, size), A.HorizontalFlip(p=0.5), PCALighting()]
    return base + [A.CenterCrop(size, size)]


def _preset_scale_jitter(size: int, train: bool) -> list:
    # VGG / ResNet scale augmentation: shorter side random in [256, 480], 224 crop, flip, lighting
    # (S1 L391-393, S3 L1152-1215); single-scale evaluation at shorter side 256, centre crop.
    lo, hi = round(size * 256 / 224), round(size * 480 / 224)
    if train:
        return [A.SmallestMaxSize(max_size=list(range(lo, hi + 1))), A.RandomCrop(size, size),
                A.HorizontalFlip(p=0.5), PCALighting()]
    return [A.SmallestMaxSize(max_size=lo), A.CenterCrop(size, size)]


def _preset_small(size: int, train: bool) -> list:
    # CIFAR recipe (S1 L542-548): pad 4 pixels, random crop back to size, horizontal flip.
    base = [A.Resize(size, size)]
    if train:
        return base + [A.PadIfNeeded(size + 8, size + 8, border_mode=0, fill=0), A.RandomCrop(size, size),
                       A.HorizontalFlip(p=0.5)]
    return base


def _preset_none(size: int, train: bool) -> list:
    return [A.Resize(size, size)]


PRESETS = {"alexnet": _preset_alexnet, "vgg": _preset_scale_jitter, "resnet": _preset_scale_jitter,
           "small": _preset_small, "none": _preset_none}


def transform_from_spec(spec: dict[str, Any], where: str = "transforms") -> A.BasicTransform:
    """One ``{name: ..., **kwargs}`` entry -> an albumentations transform; errors name the entry."""
    if not isinstance(spec, dict) or "name" not in spec:
        raise ValueError(f"{where}: each transform is a mapping with a 'name' key, got {spec!r}")
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    name = spec["name"]
    cls = _CUSTOM.get(name) or getattr(A, name, None)
    if not isinstance(cls, type):
        raise ValueError(f"{where}: unknown transform {name!r} (albumentations transforms and "
                         f"{', '.join(_CUSTOM)} are available)")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {name}({kwargs}) is invalid: {err}") from err


def build_pipeline(spec: str | list[dict[str, Any]] | None, *, image_size: int, train: bool,
                   mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                   where: str = "transforms", **compose_kwargs) -> A.Compose:
    """A preset name (``alexnet``, ``vgg``, ``resnet``, ``small``, ``none``) or a list of transform specs,
    followed by normalisation and conversion to a float CHW tensor."""
    if spec is None or isinstance(spec, str):
        name = spec or "small"
        if name not in PRESETS:
            raise ValueError(f"{where}: unknown preset {name!r}; presets: {', '.join(PRESETS)}")
        steps = PRESETS[name](image_size, train)
    else:
        steps = [transform_from_spec(item, f"{where}[{i}]") for i, item in enumerate(spec)]
    before = [t for t in steps if not getattr(t, "after_normalize", False)]
    after = [t for t in steps if getattr(t, "after_normalize", False)]
    return A.Compose([*before, A.Normalize(mean=mean, std=std), ToTensorV2(), *after], **compose_kwargs)
