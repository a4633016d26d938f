"""Maxout (Goodfellow et al. 2013; S0 L1131-1133, S4 L1267-1284): f = max_m (w_km^T x), i.e. the maximum
over groups of ``pieces`` consecutive feature maps (or features), "pooling across feature groups"."""
from __future__ import annotations

import torch
from torch import nn


class Maxout(nn.Module):
    """``(N, C * pieces, ...)`` -> ``(N, C, ...)``: put it after a conv/linear layer with ``pieces`` times
    the channels you want out."""

    def __init__(self, pieces: int):
        super().__init__()
        if pieces < 1:
            raise ValueError(f"Maxout needs pieces >= 1, got {pieces}")
        self.pieces = pieces

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        if channels % self.pieces:
            raise ValueError(f"Maxout({self.pieces}): {channels} channels are not a multiple of {self.pieces}")
        return x.view(x.shape[0], channels // self.pieces, self.pieces, *x.shape[2:]).amax(dim=2)

    def extra_repr(self) -> str:
        return f"pieces={self.pieces}"
