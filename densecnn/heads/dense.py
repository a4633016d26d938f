"""Eigen & Fergus's common multi-scale architecture for depth, surface normals and semantic labels
(arXiv 1411.4734, "Predicting Depth, Surface Normals and Semantic Labels with a Common Multi-Scale
Convolutional Architecture", Section 3 and Fig. 1; S3 L4248-4382 in shared/seeds).

    scale 1  the backbone over the whole image up to its own pool5 (``backbone_pool5``: 8x6 for AlexNet on
             the 304x228 input), then two fully connected layers (full_s1_6: 4096 units, full_s1_7: a
             64-channel map at 1/16 of the input, 19x14 for the 304x228 input) that give every output pixel
             the global context; upsampled to the scale-2 grid.
    scale 2  conv 9x9/2 (96) + max-pool 3x3/2 over the image at 1/4 resolution (74x55), concatenated with the
             scale-1 map ("96+64"), then 5x5 convolutions (64, 64, 64) and a 5x5 output layer per target
             (C channels: depth 1, normals 3, semantic one per class), upsampled x2.
    scale 3  conv 9x9/2 (64) + max-pool 3x3/1 over the image at 1/2 resolution (147x109), concatenated with
             the scale-2 predictions ("64+C"), then 5x5 convolutions (64, 64) and the 5x5 output layer.

Sources, since the seeds give channel labels only (S3 L4248-4300: "96 256 384 384 256 4096", scale 2
"64 128 64 64", scale 3 "63 64 64 64" and, for the multi-task figure, "64 64+C 64 64"; input 320x240,
output 147x109): kernel sizes, strides, the 9x9/96 first layer of scale 2 and the 1/16 19x14x64 output of
scale 1 follow the paper's architecture table as we know it; the number of 5x5 layers and the padding follow
the layer structure of the authors' released depth+normals VGG model as third-party ports load it (scale-2
stack conv_s2_2..conv_s2_5, scale-3 stack conv_s3_2..conv_s3_4, 9x9/2 convolutions padded by one pixel,
max-pools 3x3/2 and 3x3/1), which reproduces the 74x55 and 147x109 maps exactly. The slides' older figure
uses 64 instead of 96 at scale 2 and 63+1 at scale 3; both are a ``scale*_image_channels`` argument away.

Extra input maps (NYU semantic labelling; S3 L4368-4382, the inputs Table 7 compares): ground-truth
``depth`` and ``normals`` can be fed to scales 2 and 3 beside the RGB image, each through its own bank of
32 9x9 filters whose outputs are concatenated with the image's and the previous scale's ("RGB, depth and
normals each get their own 32x9x9 filter bank"). Scale 1 stays RGB-only, as in the paper.

Targets share scale 1 and the first (image) layer of scales 2 and 3; each target has its own 5x5 stacks, as
in the released depth+normals model. Scale 3 sees every target's scale-2 prediction. Normals are L2-normalised
per pixel inside the network so the loss backpropagates through the normalisation (Sec. 4.2); depth is
predicted as log depth (the loss of Sec. 4.1 is on log depth); semantic outputs are class scores (Sec. 4.3).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: the paper's three targets and their fixed channel counts (semantic: one per class, given separately)
DENSE_TARGETS = ("depth", "normals", "semantic")
#: maps that can be inputs beside the image (S3 L4368-4382) and their channels; see ``encode_input_map``
INPUT_MAP_CHANNELS = {"depth": 1, "normals": 3}


def encode_input_map(name: str, value: torch.Tensor) -> torch.Tensor:
    """A ground-truth map as a network input ``(N, C, H, W)``: log depth (0 where depth is missing) or unit
    normals (zero where missing), so holes read as a neutral value rather than NaN or -inf."""
    if name == "depth":
        depth = value if value.dim() == 4 else value.unsqueeze(1)
        valid = torch.isfinite(depth) & (depth > 0)
        return torch.where(valid, depth.clamp(min=1e-6).log(), torch.zeros_like(depth))
    if name == "normals":
        return torch.nan_to_num(value, nan=0.0, posinf=0.0, neginf=0.0)
    raise ValueError(f"unknown input map {name!r}; input maps: {', '.join(INPUT_MAP_CHANNELS)}")


def target_channels(targets: Sequence[str], num_classes: int | None) -> dict[str, int]:
    """Output channels per dense target: depth 1, normals 3, semantic ``num_classes`` (Eigen & Fergus Section 3.3).

    Args:
        targets: any of ``depth``, ``normals``, ``semantic``.
        num_classes: semantic classes (required with ``semantic``).

    Raises:
        ValueError: an unknown target or missing ``num_classes``.
    """
    channels = {}
    for target in targets:
        if target == "depth":
            channels[target] = 1
        elif target == "normals":
            channels[target] = 3
        elif target == "semantic":
            if not num_classes or num_classes < 2:
                raise ValueError("the semantic target needs num_classes >= 2")
            channels[target] = num_classes
        else:
            raise ValueError(f"unknown dense target {target!r}; targets: {', '.join(DENSE_TARGETS)}")
    if not channels:
        raise ValueError(f"at least one dense target is needed ({', '.join(DENSE_TARGETS)})")
    return channels


def finish_prediction(target: str, x: torch.Tensor) -> torch.Tensor:
    """Normals: unit length per pixel (Sec. 4.2); depth (log) and semantic scores are used as they are."""
    return F.normalize(x, dim=1, eps=1e-6) if target == "normals" else x


def backbone_pool5(backbone: nn.Module) -> nn.Module | None:
    """The backbone's own pool5: the layers its ImageNet network runs between the deepest feature map
    (``feature_info[-1]``) and the flattening for fc6, or None where the family has no such layers.

    Eigen & Fergus's scale 1 is the ImageNet network's convolutional part through its pool5, then full_s1_6
    (Sec. 3.1). What that is, per family:

    * AlexNet (all three variants), ZF-Net, VGG (``SequentialBackbone``): the deepest map is conv5 after its
      ReLU and the layers of ``features`` after it are the max-pool 5 (3x3/2, ZF-Net's with ceil rounding;
      VGG's 2x2/2), returned as the very module objects. On a 304x228 input pool5 is 8x6 (W x H) for
      AlexNet, 9x6 for ZF-Net, 9x7 for VGG.
    * NiN and All-CNN: their ``features`` end at the deepest map (the classifier is a global average): None.
    * ResNet, GoogLeNet / BN-Inception, Jarrett, LeNet-5 and timm models: no pool5 module follows the deepest
      map (ResNet and GoogLeNet go straight to a global average, which would drop the spatial layout
      full_s1_6 reads): None.

    Where this is None, scale 1 reads the deepest map itself (``CoarseScale`` then averages it adaptively to
    ``coarse_pool`` when its size differs). The returned module has no parameters or buffers, so a task's
    state_dict does not change with it.
    """
    taps, features = getattr(backbone, "tap_indices", None), getattr(backbone, "features", None)
    if taps is None or not isinstance(features, nn.Sequential):
        return None
    layers = list(features[taps[-1] + 1:])
    if not layers:
        return None
    if any(True for layer in layers for _ in layer.parameters()):
        raise ValueError(f"{type(backbone).__name__}: the layers after its deepest feature map ({layers}) have "
                         f"parameters; scale 1 expects only pool5 there")
    return nn.Sequential(*layers)


class CoarseScale(nn.Module):
    """Scale 1's fully connected part: the pool5 map brought to ``pool_size`` if it is not already that size,
    full_s1_6 (4096, ReLU, dropout 0.5), full_s1_7 (``channels`` x ``coarse_size`` map, ReLU).

    Input: the backbone's deepest feature map. ``pool5`` (``backbone_pool5``: the backbone's own max-pool 5,
    shared with it) runs first where the family has one; the families without a separate pool5 give their
    deepest map as it is. When the result is ``pool_size`` (H, W) -- AlexNet's pool5 on the paper's 304x228
    input is 6x8, ZF-Net's 6x9, VGG's 7x9 -- it goes to full_s1_6 untouched, as in the paper. Otherwise it
    is averaged adaptively to ``pool_size`` (``F.adaptive_avg_pool2d``: of an H-row map, output row i averages
    rows floor(i*H/h) .. ceil((i+1)*H/h) - 1, likewise for columns), which fixes full_s1_6's width for any
    backbone and input size. Those cells change with the input size, so keep the paper's input (or set
    ``coarse_pool`` to pool5's size) to keep pool5 exactly as pretrained.
    """

    def __init__(self, in_channels: int, *, pool_size: tuple[int, int] = (6, 8), hidden: int = 4096,
                 channels: int = 64, coarse_size: tuple[int, int] = (14, 19), dropout: float = 0.5,
                 pool5: nn.Module | None = None):
        super().__init__()
        self.pool_size, self.coarse_size, self.channels = tuple(pool_size), tuple(coarse_size), channels
        self.pool5 = pool5 if pool5 is not None else nn.Identity()
        self.full6 = nn.Linear(in_channels * self.pool_size[0] * self.pool_size[1], hidden)
        self.drop6 = nn.Dropout(dropout)
        self.full7 = nn.Linear(hidden, channels * self.coarse_size[0] * self.coarse_size[1])

    def pooled(self, features: torch.Tensor) -> torch.Tensor:
        """What full_s1_6 reads, before flattening: pool5 of the deepest map ``features``, averaged adaptively
        to ``pool_size`` only when it is not that size already."""
        x = self.pool5(features)
        if tuple(x.shape[-2:]) == self.pool_size:
            return x
        return F.adaptive_avg_pool2d(x, self.pool_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.pooled(features), 1)
        x = self.drop6(F.relu(self.full6(x)))
        x = F.relu(self.full7(x))
        # unflatten, not view(len(x), ...): len() would fix the batch size in an exported graph
        return x.unflatten(1, (self.channels, *self.coarse_size))


def _conv_stack(in_channels: int, widths: Sequence[int], out_channels: int, kernel_size: int,
                batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in widths:
        layers.append(nn.Conv2d(in_channels, width, kernel_size, padding=kernel_size // 2, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(width))
        layers.append(nn.ReLU(inplace=True))
        in_channels = width
    layers.append(nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2))  # linear output
    return nn.Sequential(*layers)


class RefineScale(nn.Module):
    """Scales 2 and 3: a 9x9/2 convolution of the image and a 3x3 max-pool (stride ``pool_stride``), the same for
    each extra input map with its own filters (``input_maps``: name -> channels), concatenated with the previous
    scale's output, then per-target 5x5 stacks ending in a linear output layer."""

    def __init__(self, in_chans: int, context_channels: int, out_channels: Mapping[str, int], *,
                 image_channels: int, widths: Sequence[int], pool_stride: int, image_kernel: int = 9,
                 kernel_size: int = 5, batch_norm: bool = False, input_maps: Mapping[str, int] | None = None,
                 input_map_channels: int = 32):
        super().__init__()
        # 9x9 stride 2 "valid" convolution padded by one pixel and a 3x3 max-pool: 304x228 -> 149x111 ->
        # 74x55 (stride 2, scale 2) or 147x109 (stride 1, scale 3), the sizes of the paper's table.
        self.image_conv = nn.Conv2d(in_chans, image_channels, image_kernel, stride=2, padding=1)
        self.map_convs = nn.ModuleDict({
            name: nn.Conv2d(channels, input_map_channels, image_kernel, stride=2, padding=1)
            for name, channels in (input_maps or {}).items()})
        self.image_pool = nn.MaxPool2d(3, stride=pool_stride)
        features = image_channels + input_map_channels * len(self.map_convs) + context_channels
        self.stacks = nn.ModuleDict({
            name: _conv_stack(features, widths, channels, kernel_size, batch_norm)
            for name, channels in out_channels.items()})

    def image_features(self, image: torch.Tensor, maps: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        parts = [self.image_pool(F.relu(self.image_conv(image)))]
        for name, conv in self.map_convs.items():
            if maps is None or name not in maps:
                raise ValueError(f"this network takes the {name!r} map as an input beside the image; none was given")
            parts.append(self.image_pool(F.relu(conv(maps[name]))))
        return torch.cat(parts, dim=1)

    def forward(self, image: torch.Tensor, context: torch.Tensor,
                maps: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        features = self.image_features(image, maps)
        context = F.interpolate(context, size=features.shape[-2:], mode="bilinear", align_corners=False)
        x = torch.cat([features, context], dim=1)
        return {name: finish_prediction(name, stack(x)) for name, stack in self.stacks.items()}


class MultiScaleDenseHead(nn.Module):
    """Scales 1 (pool5 and the fully connected part), 2 and 3 over a backbone's deepest feature map and the image.

    Args:
        backbone_channels: channels of the backbone's deepest map (``feature_info[-1].num_chs``).
        pool5: the backbone's own pool5 (``backbone_pool5(backbone)``), run on the deepest map before scale 1's
            fully connected layers; None where the backbone has none (the deepest map is then read directly).
        targets: any of ``depth``, ``normals``, ``semantic``; ``num_classes`` for semantic.
        in_chans: image channels seen by scales 2 and 3.
        coarse_pool, coarse_hidden, coarse_channels, coarse_size: scale 1's FC layers (paper: AlexNet's 8x6
            (W x H) pool5 grid, 4096, 64 channels on a 19x14 grid). full_s1_6 reads ``coarse_pool`` (H, W); a
            pool5 map of another size is averaged adaptively to it (``CoarseScale``).
        scale2_image_channels, scale2_widths: scale 2 (paper: 96; 64, 64, 64).
        scale3_image_channels, scale3_widths: scale 3 (paper: 64; 64, 64). ``scale3: false`` stops at
            scale 2 (the "scales 1+2" row of Table 6).
        batch_norm: batch norm in the 5x5 stacks (not in the paper; helps short runs from scratch).
        input_maps, input_map_channels: maps fed to scales 2 and 3 beside the image, each through its own
            ``input_map_channels`` 9x9 filters (paper, NYU labelling: depth and normals, 32 each); the maps are
            given to ``forward`` encoded by ``encode_input_map``.
    """

    def __init__(self, backbone_channels: int, targets: Sequence[str] = ("depth",), num_classes: int | None = None,
                 *, in_chans: int = 3, coarse_pool: tuple[int, int] = (6, 8), coarse_hidden: int = 4096,
                 coarse_channels: int = 64, coarse_size: tuple[int, int] = (14, 19), coarse_dropout: float = 0.5,
                 scale2_image_channels: int = 96, scale2_widths: Sequence[int] = (64, 64, 64),
                 scale3_image_channels: int = 64, scale3_widths: Sequence[int] = (64, 64), scale3: bool = True,
                 batch_norm: bool = False, input_maps: Sequence[str] = (), input_map_channels: int = 32,
                 pool5: nn.Module | None = None):
        super().__init__()
        self.out_channels = target_channels(targets, num_classes)
        unknown = [m for m in input_maps if m not in INPUT_MAP_CHANNELS]
        if unknown:
            raise ValueError(f"unknown input map(s) {unknown}; input maps: {', '.join(INPUT_MAP_CHANNELS)}")
        self.input_maps = list(input_maps)
        extra = {"input_maps": {m: INPUT_MAP_CHANNELS[m] for m in self.input_maps},
                 "input_map_channels": input_map_channels}
        self.scale1 = CoarseScale(backbone_channels, pool_size=coarse_pool, hidden=coarse_hidden,
                                  channels=coarse_channels, coarse_size=coarse_size, dropout=coarse_dropout,
                                  pool5=pool5)
        self.scale2 = RefineScale(in_chans, coarse_channels, self.out_channels, image_channels=scale2_image_channels,
                                  widths=scale2_widths, pool_stride=2, batch_norm=batch_norm, **extra)
        self.scale3 = (RefineScale(in_chans, sum(self.out_channels.values()), self.out_channels,
                                   image_channels=scale3_image_channels, widths=scale3_widths, pool_stride=1,
                                   batch_norm=batch_norm, **extra) if scale3 else None)

    @property
    def targets(self) -> list[str]:
        return list(self.out_channels)

    def forward_scales(self, image: torch.Tensor, features: torch.Tensor,
                       maps: Mapping[str, torch.Tensor] | None = None, *,
                       through_scale3: bool = True) -> list[dict[str, torch.Tensor]]:
        """Predictions of scale 2 (1/4 resolution) and, when present and ``through_scale3``, scale 3 (1/2
        resolution); ``maps``: the encoded ``input_maps`` at the image's size."""
        coarse = self.scale1(features)
        scale2 = self.scale2(image, coarse, maps)
        if self.scale3 is None or not through_scale3:
            return [scale2]
        previous = torch.cat([scale2[name] for name in self.out_channels], dim=1)
        return [scale2, self.scale3(image, previous, maps)]

    def forward(self, image: torch.Tensor, features: torch.Tensor,
                maps: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        return self.forward_scales(image, features, maps)[-1]


class MultiScaleDenseNet(nn.Module):
    """A backbone (scale 1's convolutions) plus ``MultiScaleDenseHead``: ``net(x) -> {target: map}`` at the
    last scale's resolution (147x109 for a 304x228 input); depth is log depth, normals are unit vectors.

    >>> from densecnn import create_backbone
    >>> net = MultiScaleDenseNet(create_backbone("resnet18", num_classes=0), targets=["depth", "normals"])
    """

    def __init__(self, backbone: nn.Module, targets: Sequence[str] = ("depth",), num_classes: int | None = None,
                 **head_kwargs):
        super().__init__()
        self.backbone = backbone
        self.head = MultiScaleDenseHead(backbone.feature_info[-1].num_chs, targets, num_classes,
                                        pool5=backbone_pool5(backbone), **head_kwargs)

    def forward_scales(self, x: torch.Tensor, maps: Mapping[str, torch.Tensor] | None = None
                       ) -> list[dict[str, torch.Tensor]]:
        return self.head.forward_scales(x, self.backbone.forward_features(x)[-1], maps)

    def forward(self, x: torch.Tensor, maps: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        return self.forward_scales(x, maps)[-1]
