"""Tiny synthetic video data shared by the video tests (written once per session)."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.video.helpers import TINY


@pytest.fixture(scope="session")
def video_root(tmp_path_factory) -> Path:
    from densecnn.data.synthetic.video import write_video_dataset

    return write_video_dataset(tmp_path_factory.mktemp("video") / "synthetic", **TINY)
