"""Backbone tests run many tiny forward passes: one intra-op thread is faster than two for those, and
on a shared, loaded machine two OpenMP threads can be ~100x slower (spin-waiting on a busy core)."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
