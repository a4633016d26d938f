"""C3D (Tran et al., "Learning Spatiotemporal Features with 3D Convolutional Networks", arXiv:1412.0767).

The seeds (S3 L4147-4160) give the outline: 8 convolution, 5 pooling and 2 fully-connected layers, all
convolution kernels 3x3x3, 2x2x2 pooling. The rest is the paper's Fig. 3 / Section 3.2:

    input 3 x 16 x 112 x 112 (clips of 16 frames resized to 128x171, then cropped to 112)
    conv1a  64   pool1 1x2x2  (keeps time early: "not to merge the temporal signal too early")
    conv2a 128   pool2 2x2x2
    conv3a 256   conv3b 256   pool3 2x2x2
    conv4a 512   conv4b 512   pool4 2x2x2
    conv5a 512   conv5b 512   pool5 2x2x2
    fc6 4096   fc7 4096   (dropout 0.5 after each)   fc8 num_classes (487 for Sports-1M, 101 for UCF101)

Convolutions are 3x3x3 with stride 1 and padding 1 (shape preserving); pools are max pools. The Caffe
model pools with ceil rounding, so pool5 turns the 2x7x7 map into 1x4x4 and fc6 sees 512*4*4 = 8192
inputs; ``ceil_mode=True`` reproduces that. ``width_mult`` scales every width (conv and fc) for the reduced
models that train on a CPU; ``input_size`` sizes fc6 for clips other than 16x112x112; ``batch_norm=True``
(not in the paper, which predates batch norm) puts a BatchNorm3d after each convolution, which lets the
small CPU models train from scratch in a few hundred steps.

The paper's feature protocol takes fc6 activations as the clip descriptor (Section 3.3); ``embed``
returns them (or fc7's).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn

from .base import Backbone, FeatureInfo, linear_or_identity
from .registry import register_backbone

# (name, output width) per convolution, grouped by the pool that follows the group.
C3D_STAGES: tuple[tuple[str, ...], ...] = (("conv1a",), ("conv2a",), ("conv3a", "conv3b"),
                                          ("conv4a", "conv4b"), ("conv5a", "conv5b"))
C3D_WIDTHS: tuple[int, ...] = (64, 128, 256, 256, 512, 512, 512, 512)
C3D_FC_WIDTH = 4096
C3D_INPUT_SIZE = (3, 16, 112, 112)


def conv_output_size_ceil(size: int, kernel: int, stride: int) -> int:
    """Max-pool output length with ceil rounding (Caffe's, and ``ceil_mode=True``)."""
    return -(-(size - kernel) // stride) + 1


class C3D(Backbone):
    """Tran et al.'s C3D; layers are named as in the paper's Fig. 3: ``stage<k>`` (one feature map per pool)
    holds ``conv<k>a`` (and ``conv<k>b``), each followed by ``relu<k>a``/``relu<k>b`` (``bn<k>a`` before it with
    ``batch_norm``), then ``pool<k>``; e.g. ``stage3.conv3b``, ``stage5.pool5``; then ``fc6``, ``fc7``, ``fc8``."""

    classifier_name = "fc8"

    def __init__(self, num_classes: int = 487, *, width_mult: float = 1.0, fc_width: int | None = None,
                 input_size: Sequence[int] = C3D_INPUT_SIZE, dropout: float = 0.5, in_chans: int | None = None,
                 batch_norm: bool = False):
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"C3D: width_mult must be positive, got {width_mult}")
        if len(input_size) != 4:
            raise ValueError(f"C3D: input_size is (C, T, H, W), got {tuple(input_size)}")
        channels, frames, height, width = (int(v) for v in input_size)
        channels = in_chans or channels
        self.num_classes = num_classes
        widths = [max(1, round(w * width_mult)) for w in C3D_WIDTHS]
        fc_width = fc_width or max(1, round(C3D_FC_WIDTH * width_mult))
        self.input_size = (channels, frames, height, width)
        self.feature_info = []
        self.stage_names: list[str] = []
        index, reduction, previous = 0, 1, channels
        for stage, names in enumerate(C3D_STAGES, start=1):
            layers: dict[str, nn.Module] = {}
            for name in names:  # conv3a, conv3b, ...: the paper's names (Fig. 3)
                suffix = name[len("conv"):]
                layers[name] = nn.Conv3d(previous, widths[index], 3, padding=1, bias=not batch_norm)
                if batch_norm:
                    layers[f"bn{suffix}"] = nn.BatchNorm3d(widths[index])
                layers[f"relu{suffix}"] = nn.ReLU(inplace=True)
                previous, index = widths[index], index + 1
            # pool1 is 1x2x2 (Section 3.2: keep the temporal signal through the first layer), others 2x2x2
            kernel = (1, 2, 2) if stage == 1 else (2, 2, 2)
            layers[f"pool{stage}"] = nn.MaxPool3d(kernel, kernel, ceil_mode=True)
            frames = conv_output_size_ceil(frames, kernel[0], kernel[0])
            height, width = (conv_output_size_ceil(s, 2, 2) for s in (height, width))
            reduction *= 2  # spatial stride, timm's convention
            setattr(self, f"stage{stage}", nn.Sequential(OrderedDict(layers)))
            self.stage_names.append(f"stage{stage}")
            self.feature_info.append(FeatureInfo(previous, reduction, f"stage{stage}"))
        self.pool5_shape = (previous, frames, height, width)
        self.fc6 = nn.Linear(previous * frames * height * width, fc_width)
        self.fc7 = nn.Linear(fc_width, fc_width)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout)
        self.num_features = fc_width
        self.fc8 = linear_or_identity(fc_width, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # He et al.'s initialisation rather than the Caffe model's N(0, 0.01)/N(0, 0.005): C3D has no batch
        # norm, and with those small Gaussians an 11-layer ReLU net starts on a long plateau (no learning in
        # hundreds of steps from scratch); with He init the signal keeps its scale from layer to layer.
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                if m is self.fc8:
                    nn.init.normal_(m.weight, 0.0, 0.01)
                else:  # fc6/fc7 feed ReLUs: He init keeps the signal's scale through the 2 hidden layers
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def stage_modules(self) -> list[list[str]]:
        return [[name] for name in self.stage_names]  # conv group + its pool; fc6/fc7 are the head

    def forward_features(self, x: torch.Tensor, max_index: int | None = None) -> list[torch.Tensor]:
        if x.dim() != 5:
            raise ValueError(f"C3D expects clips (N, C, T, H, W), got a tensor of shape {tuple(x.shape)}")
        features = []
        for name in self.stage_names[:self.feature_index(max_index) + 1]:
            x = getattr(self, name)(x)
            features.append(x)
        return features

    def _check_pool5(self, x: torch.Tensor) -> None:
        if tuple(x.shape[1:]) != self.pool5_shape:
            c, t, h, w = self.input_size
            raise ValueError(f"C3D was built for {c}x{t}x{h}x{w} clips (pool5 {self.pool5_shape}) but pool5 is "
                             f"{tuple(x.shape[1:])}: pass input_size=(C, T, H, W) matching the data")

    def embed(self, x: torch.Tensor, layer: str = "fc6") -> torch.Tensor:
        """Clip descriptors: fc6 (the paper's features, after ReLU) or fc7 activations."""
        if layer not in ("fc6", "fc7"):
            raise ValueError(f"C3D.embed: layer must be 'fc6' or 'fc7', got {layer!r}")
        pool5 = self.forward_features(x)[-1]
        self._check_pool5(pool5)
        h = self.relu(self.fc6(torch.flatten(pool5, 1)))
        return h if layer == "fc6" else self.relu(self.fc7(self.dropout(h)))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        self._check_pool5(x)
        h = self.dropout(self.relu(self.fc6(torch.flatten(x, 1))))
        h = self.dropout(self.relu(self.fc7(h)))
        return self.fc8(h)


@register_backbone("c3d", paper="Tran et al. 2015 (arXiv:1412.0767), Fig. 3: 8 conv, 5 pool, 2 fc",
                   input_size=C3D_INPUT_SIZE, default_num_classes=487)
def c3d(num_classes: int = 487, **kwargs) -> C3D:
    return C3D(num_classes=num_classes, **kwargs)
