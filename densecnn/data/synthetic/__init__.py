"""Deterministic synthetic datasets written to disk in the real formats, read back by the normal loaders."""
from .classification import CLASS_NAMES as CLASSIFICATION_CLASSES
from .classification import write_classification_dataset
from .common import has_files, write_atomically
from .dense import DENSE_CLASSES, write_dense_dataset  # noqa: F401

__all__ = ["CLASSIFICATION_CLASSES", "has_files", "write_atomically", "write_classification_dataset"]
from .detection import DETECTION_CLASSES, write_detection_dataset  # noqa: F401
