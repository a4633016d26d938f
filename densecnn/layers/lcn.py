"""Local contrast normalization, the ``N`` module of Jarrett et al. 2009 (S0 L200-230, L872-887).

Subtractive:  v_ijk = x_ijk - sum_ipq w_pq x_i,j+p,k+q
Divisive:     y_ijk = v_ijk / max(c, sigma_jk),  sigma_jk = (sum_ipq w_pq v^2_i,j+p,k+q)^(1/2)

``w`` is a Gaussian window (9x9 in the paper) normalised so that the sum over the window AND over the
feature maps ``i`` is 1: the mean and deviation are taken across maps as well as space, which is what makes
adjacent features compete. ``c`` is the mean of ``sigma`` over each sample's positions ("for each sample,
the constant c is set to the mean(sigma_jk)").

At the borders the window is renormalised over the positions that exist (the zero padding would
otherwise pull the local mean towards 0), so a constant image normalises to exactly 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def gaussian_window(size: int, sigma: float | None = None) -> torch.Tensor:
    """A ``size`` x ``size`` Gaussian that sums to 1 (sigma defaults to size / 4, as in Jarrett's code)."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"gaussian_window needs an odd size >= 1, got {size}")
    sigma = size / 4 if sigma is None else sigma
    ax = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(ax**2) / (2 * sigma**2))
    w = torch.outer(g, g)
    return (w / w.sum()).float()


class LocalContrastNorm(nn.Module):
    """Jarrett et al.'s ``N`` layer for inputs of ``channels`` feature maps; shape preserving.

    Args:
        channels: number of feature maps (the window is spread over all of them).
        size: odd spatial size of the Gaussian window (9 in the paper).
        sigma: the Gaussian's standard deviation (``size / 4`` by default).
        eps: floor of the divisor, so a flat input gives 0 rather than 0/0.
    """

    def __init__(self, channels: int, size: int = 9, sigma: float | None = None, eps: float = 1e-4):
        super().__init__()
        gaussian_window(size, sigma)  # validates size now rather than at the first forward
        self.channels, self.size, self.sigma, self.eps = channels, size, sigma, eps

    def _local_mean(self, x: torch.Tensor) -> torch.Tensor:
        # w_ipq = g_pq / channels sums to 1 over (i, p, q); sum_ipq w_ipq x_i = g conv (mean over i of x_i),
        # so one 2D Gaussian over the channel mean does it (built here: 81 numbers, no buffer to keep)
        weight = gaussian_window(self.size, self.sigma).to(x).view(1, 1, self.size, self.size)
        pad = self.size // 2
        total = F.conv2d(x.mean(dim=1, keepdim=True), weight, padding=pad)
        # the weight that fell inside the image at each position (1 away from the borders)
        ones = torch.ones(1, 1, *x.shape[-2:], dtype=x.dtype, device=x.device)
        coverage = F.conv2d(ones, weight, padding=pad)
        return total / coverage  # (N, 1, H, W): shared by every feature map at that site

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"LocalContrastNorm({self.channels}) expects (N, {self.channels}, H, W), "
                             f"got {tuple(x.shape)}")
        # subtracting a constant first changes nothing mathematically (the window sums to 1) but keeps a
        # large offset from leaving rounding noise that the division would amplify
        x = x - x.mean(dim=(1, 2, 3), keepdim=True)
        v = x - self._local_mean(x)
        sigma = self._local_mean(v * v).clamp_min(0).sqrt()
        c = sigma.mean(dim=(1, 2, 3), keepdim=True)
        return v / torch.maximum(sigma, c).clamp_min(self.eps)

    def extra_repr(self) -> str:
        return f"{self.channels}, size={self.size}"

