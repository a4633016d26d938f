"""GoogLeNet / Inception v1 (Szegedy et al. 2014, Table 1 and Fig. 2-3; S2 L795-936, S3 L1226-1335,
S4 L2539-2856) and BN-Inception (Ioffe & Szegedy 2015, Fig. 5; S3 L737-837).

An Inception module runs four branches on the same input and concatenates them on channels:
1x1 | 1x1 reduce -> 3x3 | 1x1 reduce -> 5x5 | 3x3 max-pool -> 1x1 "pool proj"; every convolution,
reductions and projections included, is followed by ReLU. Table 1 (output channels of each module):

    stem: conv 7x7/2 64 -> max-pool 3x3/2 -> LRN -> conv 1x1 64 -> conv 3x3 192 -> LRN -> max-pool 3x3/2
    3a 256, 3b 480 -> max-pool 3x3/2 -> 4a 512, 4b 512, 4c 512, 4d 528, 4e 832 -> max-pool 3x3/2
    -> 5a 832, 5b 1024 -> 7x7 average pool -> dropout 40% -> linear

Two auxiliary classifiers on 4a and 4d (5x5/3 average pool, 1x1 conv 128, FC 1024, dropout 70%, linear)
are used only in training (Section 5: "their loss is added with weight 0.3 and they are discarded at
inference"). ``forward`` returns the logits alone in every mode (the backbone contract: the per-frame video
baseline, TTA and export call it); ``forward_with_aux(x)`` returns ``(logits, [aux1, aux2])`` in training
(an empty list in eval mode or without the heads), and ``ClassificationTask`` calls it to add
``aux_loss_weight`` (0.3) x each auxiliary cross-entropy to the loss.

Local response normalisation (``googlenet`` only; twice in the stem): the paper gives no constants. We use
BVLC's reference GoogLeNet (``bvlc_googlenet/train_val.prototxt``): ``local_size 5, alpha 1e-4, beta 0.75`` and
Caffe's default ``k = 1``, with Caffe's formula b_i = a_i / (k + alpha/n * sum_j a_j^2)^beta -- exactly
``nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1)``. This differs from AlexNet's (Section 3.3, ``paper_lrn``:
k=2, n=5, alpha=1e-4, beta=0.75, with alpha applied to the sum, not divided by n): k is 1 instead of 2 and
the effective per-sum alpha is 1e-4/5 = 2e-5 instead of 1e-4; n and beta are the same.

Registered variants:

* ``googlenet``: the paper's network: convolutions with biases and no batch norm, the 5x5 branch,
  LRN in the stem, Caffe's ceil-mode pooling, BVLC's Xavier initialisation (biases 0.2).
* ``googlenet_torchvision``: torchvision's ``googlenet`` key for key (``GoogLeNet(aux_logits=True)``), so
  its state_dicts load unchanged. It differs from the paper where torchvision does: every conv is
  conv (no bias) + batch norm (eps 1e-3) + ReLU, the "5x5" branch is a 3x3 conv, no LRN, the pool after 4e
  is 2x2/2, the aux heads average to 4x4 adaptively, the final dropout is 0.2. ``transform_input``
  re-maps ImageNet-normalised input to the (x - 0.5) / 0.5 scale of the weights torchvision ported from
  TensorFlow. As in ``torchvision.models.googlenet``'s builder it is on whenever weights are loaded
  (``create_backbone(..., weights=...)``, any file or name ``load_weights`` reads) and off otherwise, unless
  given explicitly: pass ``transform_input=False`` for weights of a network trained without it (a densecnn
  checkpoint of a ``googlenet_torchvision`` trained from scratch). torchvision's ImageNet file holds
  auxiliary heads that were never trained (its builder warns so); they load, and fine-tuning trains them.
* ``bn_inception``: BN-Inception: batch norm before every ReLU, 5x5 convolutions replaced by two 3x3,
  three 28x28 modules with 3c and 4e reducing resolution by stride 2, average or max pooling inside the
  modules, no dropout (Section 4.2.1 removes it). The paper's depthwise-separable first conv is a plain 7x7.
  The module widths are the sums of Fig. 5's own branch columns (``BN_INCEPTION``): 4c and 4d give 160 + 160
  + 160 + 128 = 96 + 192 + 192 + 128 = 608 channels and 4e gives 192 + 256 + 608 (pass-through) = 1056,
  where the figure's output-size column says 576 and 1024; the columns win (as in the Caffe/Torch
  ports of the network), and 5a brings the width back to 1024.
"""
from __future__ import annotations

import warnings
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.init import init_xavier
from ..weights import WeightsError
from .base import Backbone, FeatureInfo, linear_or_identity
from .registry import register_backbone


def bvlc_lrn() -> nn.LocalResponseNorm:
    """BVLC GoogLeNet's LRN (local_size 5, alpha 1e-4, beta 0.75, Caffe's default k=1; the paper gives none).
    Caffe divides alpha by local_size, as ``nn.LocalResponseNorm`` does, so the constants carry over as they
    are written in the prototxt (see the module docstring for how they differ from AlexNet's)."""
    return nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)


class BasicConv2d(nn.Module):
    """conv -> [batch norm] -> ReLU; torchvision's ``BasicConv2d`` keys (``conv``, ``bn``) when ``bn=True``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 bn: bool = False, bn_eps: float = 1e-3):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=not bn)
        self.bn = nn.BatchNorm2d(out_channels, eps=bn_eps) if bn else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x, inplace=True)


ConvBlock = Callable[..., nn.Module]


class Inception(nn.Module):
    """Fig. 2(b): the module with dimension reductions. ``kernel5`` is 5 in the paper (3 in torchvision)."""

    def __init__(self, in_channels: int, ch1x1: int, ch3x3red: int, ch3x3: int, ch5x5red: int, ch5x5: int,
                 pool_proj: int, conv: ConvBlock, kernel5: int = 5):
        super().__init__()
        self.branch1 = conv(in_channels, ch1x1, 1)
        self.branch2 = nn.Sequential(conv(in_channels, ch3x3red, 1), conv(ch3x3red, ch3x3, 3, padding=1))
        self.branch3 = nn.Sequential(conv(in_channels, ch5x5red, 1), conv(ch5x5red, ch5x5, kernel5,
                                                                          padding=kernel5 // 2))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True),
                                     conv(in_channels, pool_proj, 1))
        self.out_channels = ch1x1 + ch3x3 + ch5x5 + pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class InceptionAux(nn.Module):
    """Section 5's auxiliary classifier: average pool 5x5/3 (4x4 on 4a/4d's 14x14), 1x1 conv 128 + ReLU,
    FC 1024 + ReLU, dropout 70%, linear. ``paper_pool=False`` is torchvision's adaptive 4x4 average."""

    def __init__(self, in_channels: int, num_classes: int, conv: ConvBlock, paper_pool: bool = True,
                 dropout: float = 0.7):
        super().__init__()
        self.paper_pool = paper_pool
        self.conv = conv(in_channels, 128, 1)
        self.fc1 = nn.Linear(2048, 1024)
        self.fc2 = nn.Linear(1024, num_classes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.paper_pool and min(x.shape[-2:]) >= 5:
            x = F.avg_pool2d(x, 5, stride=3)
        x = F.adaptive_avg_pool2d(x, 4)  # an identity after the 5x5/3 pool at 224 input
        x = torch.flatten(self.conv(x), 1)
        x = self.dropout(F.relu(self.fc1(x), inplace=True))
        return self.fc2(x)


def run_stages(model: nn.Module, stages: tuple[tuple[str, ...], ...], x: torch.Tensor, last: int
               ) -> list[torch.Tensor]:
    """Run the layers named in ``stages`` one after another, keeping each stage's output, up to stage ``last``
    (the Inception networks' feature path is such a chain)."""
    features = []
    for stage in stages[:last + 1]:
        for name in stage:
            x = getattr(model, name)(x)
        features.append(x)
    return features


# Table 1: (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj)
INCEPTION_V1 = {
    "3a": (64, 96, 128, 16, 32, 32), "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64), "4b": (160, 112, 224, 24, 64, 64), "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64), "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128), "5b": (384, 192, 384, 48, 128, 128),
}


class GoogLeNet(Backbone):
    """Attribute names follow torchvision (conv1, maxpool1, conv2, conv3, maxpool2, inception3a, ..., aux1,
    aux2, avgpool, dropout, fc). Feature maps: conv1 (64, /2), conv3 (192, /4), 3b (480, /8), 4e (832, /16),
    5b (1024, /32)."""

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, aux_logits: bool = True,
                 torchvision_layout: bool = False, transform_input: bool | None = None, dropout: float | None = None,
                 dropout_aux: float = 0.7, init_weights: bool = True):
        super().__init__()
        tv = torchvision_layout
        if transform_input and (not tv or in_chans != 3):
            raise ValueError("transform_input is torchvision's RGB re-normalisation: googlenet_torchvision only")
        conv: ConvBlock = (lambda *a, **k: BasicConv2d(*a, bn=True, **k)) if tv else BasicConv2d
        self.num_classes, self.torchvision_layout = num_classes, tv
        self.transform_input = bool(transform_input)
        # None: torchvision's builder default, on as soon as weights are loaded (adapt_state_dict)
        self.transform_input_follows_weights = transform_input is None and tv and in_chans == 3
        self.aux_logits = aux_logits and num_classes > 0
        # Caffe rounds pooled sizes up (112 -> 56 -> 28 -> 14 -> 7): ceil_mode.
        self.conv1 = conv(in_chans, 64, 7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.lrn1 = nn.Identity() if tv else bvlc_lrn()
        self.conv2 = conv(64, 64, 1)
        self.conv3 = conv(64, 192, 3, padding=1)
        self.lrn2 = nn.Identity() if tv else bvlc_lrn()
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        channels = 192
        kernel5 = 3 if tv else 5
        for name in ("3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b"):
            module = Inception(channels, *INCEPTION_V1[name], conv=conv, kernel5=kernel5)
            setattr(self, f"inception{name}", module)
            channels = module.out_channels
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.maxpool4 = nn.MaxPool2d(2, stride=2, ceil_mode=True) if tv else nn.MaxPool2d(3, stride=2, ceil_mode=True)
        if self.aux_logits:
            self.aux1 = InceptionAux(512, num_classes, conv, paper_pool=not tv, dropout=dropout_aux)
            self.aux2 = InceptionAux(528, num_classes, conv, paper_pool=not tv, dropout=dropout_aux)
        else:
            self.aux1 = self.aux2 = None
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout((0.2 if tv else 0.4) if dropout is None else dropout)
        self.fc = linear_or_identity(1024, num_classes)
        self.num_features = 1024
        self.feature_info = [FeatureInfo(64, 2, "conv1"), FeatureInfo(192, 4, "conv3"),
                             FeatureInfo(480, 8, "inception3b"), FeatureInfo(832, 16, "inception4e"),
                             FeatureInfo(1024, 32, "inception5b")]
        if init_weights:
            self._init_weights(tv)

    def _init_weights(self, tv: bool) -> None:
        if tv:  # torchvision's init_weights=True
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    nn.init.trunc_normal_(m.weight, mean=0.0, std=0.01, a=-2, b=2)
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
        else:  # BVLC's reference GoogLeNet: Xavier weights, conv biases 0.2, FC biases 0
            init_xavier(self, bias=0.2)
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    nn.init.zeros_(m.bias)

    def adapt_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Called by ``densecnn.load_weights``: the auxiliary classifiers are classifiers too. Without them
        (``aux_logits=False`` or ``num_classes=0``) their weights are ignored, as torchvision does; with them,
        their last layer is dropped with a message when it was trained for another number of classes.
        Loading weights turns ``transform_input`` on unless it was given (torchvision's builder rule)."""
        if not self.torchvision_layout and "conv1.bn.weight" in state_dict:
            raise WeightsError("these are torchvision's GoogLeNet weights (batch-norm convolutions): build "
                               "'googlenet_torchvision' to load them; 'googlenet' is the paper's network")
        if self.transform_input_follows_weights:
            self.transform_input = True
        if self.aux1 is None:
            return {k: v for k, v in state_dict.items() if not k.startswith(("aux1.", "aux2."))}
        own = self.state_dict()
        dropped = [k for k, v in state_dict.items()
                   if k.startswith(("aux1.fc2.", "aux2.fc2.")) and k in own and own[k].shape != v.shape]
        if dropped:
            warnings.warn(f"auxiliary classifier weights {', '.join(dropped)} were trained for another number "
                          f"of classes; they keep their fresh initialisation.", stacklevel=3)
        # keeping our own tensors for them loads everything else strictly
        return {k: (own[k] if k in dropped else v) for k, v in state_dict.items()}

    def _transform_input(self, x: torch.Tensor) -> torch.Tensor:
        if not self.transform_input:
            return x
        # torchvision: from ImageNet mean/std normalisation to (x - 0.5) / 0.5
        shape = (1, 3, *[1] * (x.dim() - 2))  # images, or inflated clips (N, C, T, H, W)
        scale = torch.tensor([0.229, 0.224, 0.225], device=x.device, dtype=x.dtype).view(shape) / 0.5
        shift = (torch.tensor([0.485, 0.456, 0.406], device=x.device, dtype=x.dtype).view(shape) - 0.5) / 0.5
        return x * scale + shift

    def _forward(self, x: torch.Tensor, with_aux: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        aux = []
        x = self.conv1(self._transform_input(x))
        c1 = x
        x = self.lrn1(self.maxpool1(x))
        x = self.conv3(self.conv2(x))
        c3 = x
        x = self.maxpool2(self.lrn2(x))
        x = self.inception3b(self.inception3a(x))
        i3 = x
        x = self.inception4a(self.maxpool3(x))
        if with_aux:
            aux.append(self.aux1(x))
        x = self.inception4d(self.inception4c(self.inception4b(x)))
        if with_aux:
            aux.append(self.aux2(x))
        x = self.inception4e(x)
        i4 = x
        x = self.inception5b(self.inception5a(self.maxpool4(x)))
        return [c1, c3, i3, i4, x], aux

    # The layers between two maps, in the order _forward runs them; the auxiliary heads are classifiers and
    # belong to no stage (as ``fc``).
    STAGES = (("conv1",), ("maxpool1", "lrn1", "conv2", "conv3"),
              ("lrn2", "maxpool2", "inception3a", "inception3b"),
              ("maxpool3", "inception4a", "inception4b", "inception4c", "inception4d", "inception4e"),
              ("maxpool4", "inception5a", "inception5b"))

    def stage_modules(self) -> list[list[str]]:
        return [list(stage) for stage in self.STAGES]

    def forward_features(self, x: torch.Tensor, max_index: int | None = None) -> list[torch.Tensor]:
        # STAGES is the order _forward runs the layers in, so chaining it gives _forward's maps without the
        # auxiliary heads, and can stop after any map
        return run_stages(self, self.STAGES, self._transform_input(x), self.feature_index(max_index))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))

    def forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The logits and the auxiliary classifiers' logits (aux1 on 4a, aux2 on 4d) in training; the list is
        empty in eval mode, where the paper discards them, and without the heads."""
        features, aux = self._forward(x, with_aux=self.training and self.aux_logits)
        return self.forward_head(features[-1]), aux

    # ``forward`` is Backbone's: the logits alone, in training as in eval, without running the auxiliary heads


@register_backbone("googlenet", paper="Szegedy et al. 2014, Table 1 (Inception v1, aux classifiers)")
def googlenet(num_classes: int = 1000, **kwargs) -> GoogLeNet:
    """GoogLeNet (Inception v1) as in Szegedy et al. 2014, Table 1, with the two auxiliary classifiers (Section 5).

    Args:
        num_classes: classifier width.
        **kwargs: passed to ``GoogLeNet`` (``aux_logits``, ``dropout``, ``dropout_aux``, ``in_chans``).
    """
    return GoogLeNet(num_classes=num_classes, **kwargs)


@register_backbone("googlenet_torchvision", paper="Szegedy et al. 2014 as torchvision builds it (BN convs)")
def googlenet_torchvision(num_classes: int = 1000, **kwargs) -> GoogLeNet:
    """GoogLeNet as torchvision builds it (batch-norm convolutions, 3x3 in place of the 5x5 branch): its
    state_dicts load unchanged.

    Args:
        num_classes: classifier width.
        **kwargs: passed to ``GoogLeNet``.
    """
    return GoogLeNet(num_classes=num_classes, torchvision_layout=True, **kwargs)


# ---- BN-Inception -------------------------------------------------------------------------------------------
class BNInceptionModule(nn.Module):
    """Ioffe & Szegedy's module: 1x1 | 1x1 -> 3x3 | 1x1 -> 3x3 -> 3x3 ("double 3x3", replacing the 5x5) |
    avg- or max-pool -> 1x1 proj. With ``stride=2`` (3c, 4e) there is no 1x1 branch, the last conv of the
    3x3 and double-3x3 branches and the max-pool stride by 2, and the pool branch passes through."""

    def __init__(self, in_channels: int, ch1x1: int, ch3x3red: int, ch3x3: int, dbl_red: int, dbl: int,
                 pool: str, pool_proj: int, stride: int = 1):
        super().__init__()
        conv = lambda *a, **k: BasicConv2d(*a, bn=True, bn_eps=1e-5, **k)  # noqa: E731
        self.branch1 = conv(in_channels, ch1x1, 1) if ch1x1 else None
        self.branch2 = nn.Sequential(conv(in_channels, ch3x3red, 1), conv(ch3x3red, ch3x3, 3, stride, 1))
        self.branch3 = nn.Sequential(conv(in_channels, dbl_red, 1), conv(dbl_red, dbl, 3, padding=1),
                                     conv(dbl, dbl, 3, stride, 1))
        pool_layer = (nn.AvgPool2d(3, stride, 1, count_include_pad=False) if pool == "avg"
                      else nn.MaxPool2d(3, stride, 1))
        self.branch4 = nn.Sequential(pool_layer, conv(in_channels, pool_proj, 1)) if pool_proj else pool_layer
        self.out_channels = ch1x1 + ch3x3 + dbl + (pool_proj or in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.branch2(x), self.branch3(x), self.branch4(x)]
        if self.branch1 is not None:
            branches.insert(0, self.branch1(x))
        return torch.cat(branches, 1)


# Figure 5: (#1x1, #3x3 reduce, #3x3, double #3x3 reduce, double #3x3, pool, pool proj, stride)
BN_INCEPTION = {
    "3a": (64, 64, 64, 64, 96, "avg", 32, 1), "3b": (64, 64, 96, 64, 96, "avg", 64, 1),
    "3c": (0, 128, 160, 64, 96, "max", 0, 2),
    "4a": (224, 64, 96, 96, 128, "avg", 128, 1), "4b": (192, 96, 128, 96, 128, "avg", 128, 1),
    "4c": (160, 128, 160, 128, 160, "avg", 128, 1), "4d": (96, 128, 192, 160, 192, "avg", 128, 1),
    "4e": (0, 128, 192, 192, 256, "max", 0, 2),
    "5a": (352, 192, 320, 160, 224, "avg", 128, 1), "5b": (352, 192, 320, 192, 224, "max", 128, 1),
}


class BNInception(Backbone):
    """Feature maps: conv1 (64, /2), conv3 (192, /4), 3b (320, /8), 4d (608, /16), 5b (1024, /32)."""

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, dropout: float = 0.0):
        super().__init__()
        conv = lambda *a, **k: BasicConv2d(*a, bn=True, bn_eps=1e-5, **k)  # noqa: E731
        self.num_classes = num_classes
        self.conv1 = conv(in_chans, 64, 7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = conv(64, 64, 1)
        self.conv3 = conv(64, 192, 3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        channels = 192
        for name, spec in BN_INCEPTION.items():
            module = BNInceptionModule(channels, *spec)
            setattr(self, f"inception{name}", module)
            channels = module.out_channels
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = linear_or_identity(1024, num_classes)
        self.num_features = 1024
        self.feature_info = [FeatureInfo(64, 2, "conv1"), FeatureInfo(192, 4, "conv3"),
                             FeatureInfo(320, 8, "inception3b"), FeatureInfo(608, 16, "inception4d"),
                             FeatureInfo(1024, 32, "inception5b")]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    # The layers between two maps, in the order forward_features runs them.
    STAGES = (("conv1",), ("maxpool1", "conv2", "conv3"), ("maxpool2", "inception3a", "inception3b"),
              ("inception3c", "inception4a", "inception4b", "inception4c", "inception4d"),
              ("inception4e", "inception5a", "inception5b"))

    def stage_modules(self) -> list[list[str]]:
        return [list(stage) for stage in self.STAGES]

    def forward_features(self, x: torch.Tensor, max_index: int | None = None) -> list[torch.Tensor]:
        return run_stages(self, self.STAGES, x, self.feature_index(max_index))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))


@register_backbone("bn_inception", paper="Ioffe & Szegedy 2015, Fig. 5 (BN-Inception)")
def bn_inception(num_classes: int = 1000, **kwargs) -> BNInception:
    """BN-Inception of Ioffe & Szegedy 2015 (Fig. 5): Inception with batch norm, 5x5 branches as two 3x3.

    Args:
        num_classes: classifier width.
        **kwargs: passed to ``BNInception``.
    """
    return BNInception(num_classes=num_classes, **kwargs)
