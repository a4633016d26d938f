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

Public Sports-1M weights. The widely used PyTorch port of the Caffe model (``c3d.pickle`` of DavideA/c3d-pytorch)
names its layers ``conv1, conv2, conv3a ... conv5b, fc6, fc7, fc8`` (fc8: 487 Sports-1M classes, fc6: 8192 inputs).
``weights: c3d.pickle`` loads it: ``C3D.adapt_state_dict`` maps those names onto ours (``conv1`` ->
``stage1.conv1a``, ``conv3b`` -> ``stage3.conv3b``, fc6-fc8 unchanged) and reverses conv1's input channels,
because the Caffe model was trained on OpenCV's BGR frames while densecnn's loaders give RGB: conv1 with
reversed channels on an RGB clip is conv1 on the BGR clip. Into a 101-class model fc8 is dropped with a
warning (``load_weights``); a feature extractor (``num_classes=0``) ignores it. Two details of the port:

* its pool5 is ``MaxPool3d(2, 2, padding=(0, 1, 1))`` (floor rounding): on the 2x7x7 conv5b map the windows
  start at -1, 1, 3, 5, while Caffe's ceil rounding (ours by default, ``pool5="caffe"``) starts them at
  0, 2, 4, 6. Both give 1x4x4 = 8192 fc6 inputs at 16x112x112, so the weights load either way; ``pool5="port"``
  reproduces the port's outputs exactly (``backbone_kwargs: {pool5: port}``), the default follows the Caffe
  network the weights were trained in;
* the flatten order is the same as ours (C, T, H, W of the contiguous pool5 map: ``view(-1, 8192)``).

Input normalisation the Caffe weights expect (Tran et al.'s C3D code; DavideA/c3d-pytorch issues 1 and 4):
pixels in 0-255 minus the Sports-1M mean clip (``sport1m_train16_128_mean.binaryproto``, 3x16x128x171), with
no std scaling. Per channel that mean is (90.25, 97.66, 101.41) in BGR order; as RGB data-module settings
(``mean``/``std`` are in 0-1 units, albumentations multiplies both by 255) it is ``C3D_SPORTS1M_MEAN`` =
(101.41, 97.66, 90.25)/255 and ``C3D_SPORTS1M_STD`` = 1/255 per channel (``configs/video/ucf101_c3d*.yaml``).
The per-channel mean stands in for the per-pixel mean clip (Caffe subtracts the clip, a difference of a few
grey levels across the frame). torchvision's ``r3d_18``/``mc3_18``/``r2plus1d_18`` Kinetics weights expect
instead 0-1 pixels normalised by mean (0.43216, 0.394666, 0.37645) and std (0.22803, 0.22145, 0.216989)
(``KINETICS_MEAN``/``KINETICS_STD``), and ImageNet's mean/std is for 2D backbones and inflated ones.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Literal, Sequence

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
POOL5_MODES = ("caffe", "port")

# What the Caffe Sports-1M weights (and their PyTorch port) expect, as RGB mean/std in 0-1 units: the Sports-1M
# mean clip's per-channel average (BGR 90.25, 97.66, 101.41 in 0-255), no std scaling (std 1/255 undoes /255).
C3D_SPORTS1M_MEAN = (101.41 / 255, 97.66 / 255, 90.25 / 255)
C3D_SPORTS1M_STD = (1 / 255, 1 / 255, 1 / 255)
# torchvision's video ResNets (r3d_18, mc3_18, r2plus1d_18: KINETICS400_V1 weights' transforms)
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)

# The public PyTorch port's layer names (DavideA/c3d-pytorch ``c3d.pickle``) -> ours; fc6-fc8 are the same.
PORT_CONV_NAMES = {"conv1": "stage1.conv1a", "conv2": "stage2.conv2a", "conv3a": "stage3.conv3a",
                   "conv3b": "stage3.conv3b", "conv4a": "stage4.conv4a", "conv4b": "stage4.conv4b",
                   "conv5a": "stage5.conv5a", "conv5b": "stage5.conv5b"}


def is_port_state_dict(state: dict[str, torch.Tensor]) -> bool:
    """The port's key layout: top-level ``conv1.weight`` ... rather than our ``stage1.conv1a.weight``."""
    return "conv1.weight" in state and "conv5b.weight" in state and not any(k.startswith("stage") for k in state)


def port_to_densecnn(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a port state_dict to our keys, and turn conv1 from BGR input (Caffe's) to RGB input (ours)."""
    out = {}
    for key, value in state.items():
        layer, _, param = key.partition(".")
        out[f"{PORT_CONV_NAMES[layer]}.{param}" if layer in PORT_CONV_NAMES else key] = value
    out["stage1.conv1a.weight"] = out["stage1.conv1a.weight"].flip(1)
    return out


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
                 batch_norm: bool = False, pool5: Literal["caffe", "port"] = "caffe"):
        super().__init__()
        if pool5 not in POOL5_MODES:
            raise ValueError(f"C3D: pool5 must be one of {', '.join(POOL5_MODES)}, got {pool5!r}")
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
            if stage == 5 and pool5 == "port":  # the public port's pool5: pad H and W by 1, floor rounding
                layers["pool5"] = nn.MaxPool3d(kernel, kernel, padding=(0, 1, 1))
                frames = frames // 2
                height, width = ((s + 2 - 2) // 2 + 1 for s in (height, width))
            else:
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

    def adapt_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Called by ``densecnn.load_weights``: the public Sports-1M port's keys (see the module docstring) are
        renamed to ours and its conv1 turned to RGB input; our own state_dicts pass unchanged."""
        return port_to_densecnn(state) if is_port_state_dict(state) else state

    def weights_mismatch_hint(self, keys: list[str]) -> str:
        """Why fc6 may not fit: its inputs are pool5's size, set by the clip size (and ``pool5``)."""
        if not any(k.startswith("fc6.") for k in keys):
            return ""
        c, t, h, w = self.input_size
        return (f". C3D's fc6 takes pool5's {'x'.join(map(str, self.pool5_shape))} map of {c}x{t}x{h}x{w} clips; "
                f"the Sports-1M weights need 3x16x112x112 clips (fc6 of 512x1x4x4 = 8192 inputs), full width "
                f"(width_mult 1) and no batch_norm")

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
    """C3D of Tran et al. 2015 (arXiv:1412.0767, Fig. 3): 8 3x3x3 convolutions, 5 max-pools, fc6/fc7 of 4096.

    Args:
        num_classes: classifier width (487: Sports-1M; 101 for UCF101).
        **kwargs: passed to ``C3D`` (``width_mult``, ``batch_norm``, ``pool5``, ...).
    """
    return C3D(num_classes=num_classes, **kwargs)
