"""DropConnect (Wan et al., ICML 2013; S3 L3727-3745): a fully connected layer whose *weights*, not its
outputs, are dropped at random during training.

Training draws a Bernoulli(1 - p) mask M and computes ((M * W) / (1 - p)) x + b: the division keeps the
expected pre-activation equal to W x + b, so inference uses W unchanged (the "inverted" scaling that
``nn.Dropout`` also uses; the paper's Gaussian moment-matching inference is not reproduced).
The paper draws a mask per example; ``per_sample=True`` does that (memory grows as batch x out x in),
the default draws one mask per mini-batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DropConnectLinear(nn.Linear):
    """A linear layer with DropConnect (Wan et al. 2013): in training each weight is dropped with probability
    ``p`` (one mask per batch, or per sample), and the rest are scaled by 1/(1-p); at test it is the plain layer
    (the mean-field approximation rather than the paper's Gaussian sampling).

    Args:
        in_features, out_features, bias: as ``nn.Linear``.
        p: the probability of dropping a weight, in [0, 1).
        per_sample: draw a mask per example as the paper does (memory grows as batch x out x in).
    """
    def __init__(self, in_features: int, out_features: int, bias: bool = True, p: float = 0.5,
                 per_sample: bool = False):
        super().__init__(in_features, out_features, bias=bias)
        if not 0.0 <= p < 1.0:
            raise ValueError(f"DropConnect probability must be in [0, 1), got {p}")
        self.p, self.per_sample = p, per_sample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return F.linear(x, self.weight, self.bias)
        keep = 1.0 - self.p
        if self.per_sample and x.dim() == 2:
            mask = torch.empty(x.shape[0], *self.weight.shape, device=x.device, dtype=x.dtype).bernoulli_(keep)
            out = torch.einsum("noi,ni->no", mask * self.weight / keep, x)
            return out + self.bias if self.bias is not None else out
        mask = torch.empty_like(self.weight).bernoulli_(keep)
        return F.linear(x, self.weight * mask / keep, self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", p={self.p}, per_sample={self.per_sample}"
