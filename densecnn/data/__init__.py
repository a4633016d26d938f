"""Datasets, synthetic generators and transforms (plain PyTorch; the LightningDataModules are in ``tasks``)."""
from .image_folder import IMAGE_SUFFIXES, DataError, ImageFolderDataset, read_rgb
from .transforms import PRESETS, PCALighting, build_pipeline, rgb_pca

__all__ = ["DataError", "IMAGE_SUFFIXES", "ImageFolderDataset", "PCALighting", "PRESETS", "build_pipeline",
           "read_rgb", "rgb_pca"]
