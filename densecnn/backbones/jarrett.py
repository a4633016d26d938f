"""Jarrett, Kavukcuoglu, Ranzato & LeCun 2009, "What is the Best Multi-Stage Architecture for Object
Recognition?" (S0 L167-306 in shared/seeds): feature-extraction stages built from four modules,

    F_CSG  filter bank: y_j = g_j tanh(sum_i k_ij * x_i), valid convolution, a trainable gain g_j per map;
    R_abs  rectification: y = |x|;
    N      local contrast normalization (``densecnn.layers.LocalContrastNorm``);
    P_A / P_M  average ("boxcar") or max pooling with subsampling, spatial only,

composed as ``F_CSG-P_A``, ``F_CSG-R_abs-P_A``, ``F_CSG-R_abs-N-P_A`` (the best) or ``F_CSG-P_M``; one or
two stages, then multinomial logistic regression (a linear layer + softmax).

``jarrett`` is the paper's Caltech-101 network (Section 4.1, outside the seeds): 143x143 grey input,
64 F_CSG 9x9 -> 135x135, pool 10x10 / 5 -> 26x26; 256 F_CSG 9x9 -> 18x18, pool 6x6 / 4 -> 4x4;
logistic regression on the 256x4x4 = 4096 features. The paper's second stage connects each output map to
a random 16 of the 64 input maps; here every map sees all of them. The protocol "R" (random filters kept
fixed) is ``freeze_backbone: true`` in ``ClassificationTask``.

The filter bank has a trainable bias the paper does not: ``FilterBankCSG.conv`` is an ``nn.Conv2d`` with
its default ``bias=True``, so a map is y_j = g_j tanh(sum_i k_ij * x_i + b_j) (64 + 256 extra parameters in
``jarrett``), where the paper writes y_j = g_j tanh(sum_i k_ij * x_i). Under protocol "R" the biases are
random and frozen with the filters. The gains g_j start at 1.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ..layers.lcn import LocalContrastNorm
from .base import Backbone, FeatureInfo, linear_or_identity
from .registry import register_backbone

Composition = Literal["F-PA", "F-Rabs-PA", "F-Rabs-N-PA", "F-PM"]
COMPOSITIONS = ("F-PA", "F-Rabs-PA", "F-Rabs-N-PA", "F-PM")


class FilterBankCSG(nn.Module):
    """F_CSG: convolution (C), tanh (S), a trainable scalar gain per output map (G)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size)  # valid: m = n - l + 1
        self.gain = nn.Parameter(torch.ones(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.tanh(self.conv(x))
        return self.gain.view(1, -1, *[1] * (y.dim() - 2)) * y  # per map, on images or inflated clips


class AbsRectification(nn.Module):
    """R_abs: y = |x|."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.abs()


class JarrettStage(nn.Sequential):
    """One feature-extraction stage of Jarrett et al. 2009: filter bank F_CSG, then optionally |x| (R_abs),
    local contrast normalisation (N) and average or max pooling (P_A / P_M), as ``composition`` says.

    Args:
        in_channels, out_channels: maps in and out of the filter bank.
        kernel_size: the filter bank's square kernel.
        pool_size, pool_stride: the pooling window and subsampling.
        composition: ``F-PA``, ``F-Rabs-PA``, ``F-Rabs-N-PA`` (the paper's best) or ``F-PM``.
        lcn_size: the local contrast normalisation window.
    """
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, pool_size: int, pool_stride: int,
                 composition: Composition = "F-Rabs-N-PA", lcn_size: int = 9):
        if composition not in COMPOSITIONS:
            raise ValueError(f"stage composition must be one of {', '.join(COMPOSITIONS)}, got {composition!r}")
        parts = composition.split("-")
        layers: list[nn.Module] = [FilterBankCSG(in_channels, out_channels, kernel_size)]
        if "Rabs" in parts:
            layers.append(AbsRectification())
        if "N" in parts:
            layers.append(LocalContrastNorm(out_channels, lcn_size))
        pool = nn.MaxPool2d if parts[-1] == "PM" else nn.AvgPool2d  # AvgPool2d is the boxcar window
        layers.append(pool(pool_size, pool_stride))
        super().__init__(*layers)


class JarrettNet(Backbone):
    """One or two stages (``stages=1`` is the paper's single-letter protocols), then logistic regression.
    Feature maps: each stage's pooled output (strides 5 and 20)."""

    classifier_name = "classifier"

    def __init__(self, num_classes: int = 101, in_chans: int = 1, stages: int = 2,
                 composition: Composition = "F-Rabs-N-PA"):
        super().__init__()
        if stages not in (1, 2):
            raise ValueError(f"Jarrett et al. use one or two stages, got stages={stages}")
        self.num_classes = num_classes
        self.stage1 = JarrettStage(in_chans, 64, 9, 10, 5, composition)
        self.stage2 = JarrettStage(64, 256, 9, 6, 4, composition) if stages == 2 else None
        self.feature_info = [FeatureInfo(64, 5, "stage1")]
        if self.stage2 is not None:
            self.feature_info.append(FeatureInfo(256, 20, "stage2"))
        # 4x4 (stage 2) or 26x26 (stage 1) at 143x143 input: the maps the paper's classifier reads
        grid = 4 if stages == 2 else 26
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.num_features = self.feature_info[-1].num_chs * grid * grid
        self.classifier = linear_or_identity(self.num_features, num_classes)

    def stage_modules(self) -> list[list[str]]:
        return [["stage1"]] + ([["stage2"]] if self.stage2 is not None else [])

    def forward_features(self, x: torch.Tensor, max_index: int | None = None) -> list[torch.Tensor]:
        features = [self.stage1(x)]
        if self.stage2 is not None and self.feature_index(max_index) == 1:
            features.append(self.stage2(features[-1]))
        return features

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(x), 1))


@register_backbone("jarrett", paper="Jarrett et al. 2009, two F_CSG-R_abs-N-P_A stages (Caltech-101)",
                   input_size=(1, 143, 143), default_num_classes=101)
def jarrett(num_classes: int = 101, **kwargs) -> JarrettNet:
    """Jarrett et al. 2009's two-stage Caltech-101 network (Section 4.1): 143x143 grey input, 64 and 256
    9x9 filter banks, logistic regression on 4096 features.

    Args:
        num_classes: classifier width (101).
        **kwargs: passed to ``JarrettNet`` (``composition``, ``stages``, ...).
    """
    return JarrettNet(num_classes=num_classes, **kwargs)
