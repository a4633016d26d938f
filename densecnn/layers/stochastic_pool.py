"""Stochastic pooling (Zeiler & Fergus, ICLR 2013; S3 L3746-3792).

In each pooling region the (rectified, so non-negative) activations a_i become probabilities
p_i = a_i / sum_k a_k; training samples one location l from that multinomial and outputs a_l.
E.g. a region holding 1.6 and 2.4 (and zeros) picks them with p = 0.4 and 0.6.

At test time the paper uses "probabilistic weighting": the output is sum_i p_i a_i, the average of the
activations weighted by their probabilities (the seeds do not give this rule; it is Section 3.1 of the
paper). A region of zeros outputs 0 in both modes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair


class StochasticPool2d(nn.Module):
    """Drop-in for ``nn.MaxPool2d(kernel_size, stride, padding)`` after a ReLU.

    Negative inputs get probability 0 (they would have been rectified away in the paper's networks).
    """

    def __init__(self, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None,
                 padding: int | tuple[int, int] = 0):
        super().__init__()
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride if stride is not None else kernel_size)
        self.padding = _pair(padding)

    def probabilities(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """Each window's activations ``(N, C, k*k, L)``, their probabilities, and the output size."""
        n, c, h, w = x.shape
        windows = F.unfold(x.reshape(n * c, 1, h, w), self.kernel_size, padding=self.padding, stride=self.stride)
        out_h = (h + 2 * self.padding[0] - self.kernel_size[0]) // self.stride[0] + 1
        out_w = (w + 2 * self.padding[1] - self.kernel_size[1]) // self.stride[1] + 1
        windows = windows.view(n, c, -1, out_h * out_w)
        weights = windows.clamp_min(0)
        total = weights.sum(dim=2, keepdim=True)
        probs = torch.where(total > 0, weights / total.clamp_min(torch.finfo(x.dtype).tiny), torch.zeros_like(weights))
        return windows, probs, (out_h, out_w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"StochasticPool2d expects (N, C, H, W), got {tuple(x.shape)}")
        windows, probs, (out_h, out_w) = self.probabilities(x)
        n, c = x.shape[:2]
        if self.training:
            # inverse-CDF sampling of one location per window: the first index whose cumulative
            # probability exceeds u ~ U(0, 1); the gradient flows to the sampled activation only.
            cdf = probs.cumsum(dim=2)
            u = torch.rand(n, c, 1, cdf.shape[-1], dtype=x.dtype, device=x.device) * cdf[:, :, -1:, :]
            index = (cdf <= u).sum(dim=2, keepdim=True).clamp_max(windows.shape[2] - 1)
            out = windows.gather(2, index) * (cdf[:, :, -1:, :] > 0)
        else:
            out = (probs * windows).sum(dim=2, keepdim=True)
        return out.view(n, c, out_h, out_w)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
