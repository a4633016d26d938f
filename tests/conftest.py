"""Shared fixtures: tiny generated datasets and helpers to run the CLI in-process or in a fresh process."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

# One thread per test process: the tests run many tiny ops, where a second thread only adds overhead.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def classification_root(tmp_path_factory) -> Path:
    """The synthetic shapes dataset, small: 10/4/4 images per class for train/val/test."""
    from densecnn.data.synthetic import write_classification_dataset

    root = tmp_path_factory.mktemp("data") / "shapes"
    write_classification_dataset(root, image_size=32, per_class={"train": 10, "val": 4, "test": 4})
    return root
