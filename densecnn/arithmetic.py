"""Convolution arithmetic (S4 L27-47, S2 L186-190 in shared/seeds)."""
from __future__ import annotations


def conv_output_size(i: int, k: int, s: int = 1, p: int = 0, d: int = 1) -> int:
    """Output length of a convolution or pooling window: o = floor((i + 2p - d(k - 1) - 1) / s) + 1.

    With ``d = 1`` this is the seeds' o = floor((i + 2p - k) / s) + 1; e.g. AlexNet's conv1,
    ``conv_output_size(227, 11, 4) == 55``. A window that does not fit the input raises ValueError.
    """
    if min(i, k, s, d) < 1 or p < 0:
        raise ValueError(f"conv_output_size needs i, k, s, d >= 1 and p >= 0, got i={i} k={k} s={s} p={p} d={d}")
    span = i + 2 * p - d * (k - 1) - 1
    if span < 0:
        raise ValueError(f"a kernel of extent {d * (k - 1) + 1} does not fit an input of {i} padded by {p}")
    return span // s + 1
