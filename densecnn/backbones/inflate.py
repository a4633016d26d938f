"""2D image networks on video: inflation to 3D (I3D) and the per-frame baseline.

Inflation (Carreira & Zisserman 2017, "Quo Vadis, Action Recognition?", Section 2.4): every k x k
convolution becomes t x k x k, its 2D kernel repeated t times along time and divided by t. A clip whose
frames are all the same image then gives every layer exactly the 2D network's activations on that image,
so an ImageNet checkpoint is a sound starting point for video ("boring-video fixed point"). Batch norm,
pooling and the classifier keep their parameters; pools become 1 x k x k (no temporal downsampling), so
``feature_info`` (channels and spatial stride) is the 2D network's.

``inflate`` recurses into every container, whatever its name (GoogLeNet's ``BasicConv2d``, Inception
modules, Jarrett's stages), down to the layers. Layers with nothing to inflate that only work on images
(Jarrett's local contrast normalization, stochastic pooling, GoogLeNet's training-only auxiliary
classifiers) run on each frame (``PerFrame``), keeping their parameter names; a leaf 2D layer with no 3D
counterpart is refused with its path.

Temporal padding replicates the first and last frame instead of adding zeros: with zero padding the fixed
point would hold only in the middle of the clip, and the global average over time would no longer equal the
2D output. Spatial padding stays zeros, as in the 2D network.

``create_backbone("inflated_resnet50", weights="torchvision:ResNet50_Weights.IMAGENET1K_V2")`` loads the 2D
state_dict into the 3D model (``adapt_state_dict`` inflates 4D kernels on the fly); 3D checkpoints of the
inflated model load as they are.

``FrameAveraged`` is the other way to use a 2D network on a clip: run it on every frame and average the
outputs over time. It cannot see motion (Tran et al.'s "2D vs 3D ConvNets" comparison); the video task
uses it for 2D backbones, and the temporal-modelling test shows the gap.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .base import Backbone, FeatureInfo
from .registry import get_entry, register_backbone
from .resnet import ZeroPadShortcut

TimeKernel = int | Literal["spatial"]


class InflatedConv3d(nn.Conv3d):
    """A ``Conv2d`` inflated to ``time_kernel x kh x kw`` (stride 1 in time, edge frames replicated)."""

    def __init__(self, conv: nn.Conv2d, time_kernel: int):
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(f"{conv} uses padding {conv.padding!r}/{conv.padding_mode!r}; only integer "
                             f"zero padding is supported")
        super().__init__(conv.in_channels, conv.out_channels, (time_kernel, *conv.kernel_size),
                         stride=(1, *conv.stride), padding=(0, *conv.padding), dilation=(1, *conv.dilation),
                         groups=conv.groups, bias=conv.bias is not None,
                         device=conv.weight.device, dtype=conv.weight.dtype)
        self.time_padding = ((time_kernel - 1) // 2, time_kernel // 2)
        with torch.no_grad():
            self.weight.copy_(inflate_kernel(conv.weight, time_kernel))
            if conv.bias is not None:
                self.bias.copy_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.time_padding):
            x = F.pad(x, (0, 0, 0, 0, *self.time_padding), mode="replicate")
        return super().forward(x)


def inflate_kernel(weight: torch.Tensor, time_kernel: int) -> torch.Tensor:
    """(out, in, kh, kw) -> (out, in, t, kh, kw): repeat over time and divide by t (I3D)."""
    return weight.unsqueeze(2).repeat(1, 1, time_kernel, 1, 1) / time_kernel


class ZeroPadShortcut3d(ZeroPadShortcut):
    """ResNet option A on clips: subsample H and W (not time) and zero-pad the new channels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, 0, 0, self.extra_channels))


def _time_kernel(conv: nn.Conv2d, policy: TimeKernel) -> int:
    kh = conv.kernel_size[0]
    if kh == 1:
        return 1  # 1x1 projections stay pointwise in time
    if policy == "spatial":
        return kh  # I3D: k x k -> k x k x k
    if not isinstance(policy, int) or policy < 1:
        raise ValueError(f"time_kernel must be a positive int or 'spatial', got {policy!r}")
    return policy


def _inflate_module(module: nn.Module, policy: TimeKernel) -> nn.Module | None:
    """The 3D counterpart of one 2D module, or None when it works on clips as it is."""
    if isinstance(module, nn.Conv2d):
        return InflatedConv3d(module, _time_kernel(module, policy))
    if isinstance(module, nn.BatchNorm2d):
        bn = nn.BatchNorm3d(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats)
        bn.load_state_dict(module.state_dict())
        bn.train(module.training)
        return bn
    if isinstance(module, nn.MaxPool2d):
        k, s, p, d = (_pair(v) for v in (module.kernel_size, module.stride, module.padding, module.dilation))
        return nn.MaxPool3d((1, *k), (1, *s), (0, *p), (1, *d), ceil_mode=module.ceil_mode)
    if isinstance(module, nn.AvgPool2d):
        k, s, p = (_pair(v) for v in (module.kernel_size, module.stride, module.padding))
        return nn.AvgPool3d((1, *k), (1, *s), (0, *p), ceil_mode=module.ceil_mode,
                            count_include_pad=module.count_include_pad)
    if isinstance(module, nn.AdaptiveAvgPool2d):
        return nn.AdaptiveAvgPool3d((1, *_pair(module.output_size)))
    if isinstance(module, nn.AdaptiveMaxPool2d):
        return nn.AdaptiveMaxPool3d((1, *_pair(module.output_size)))
    if isinstance(module, ZeroPadShortcut) and not isinstance(module, ZeroPadShortcut3d):
        shortcut = ZeroPadShortcut3d.__new__(ZeroPadShortcut3d)
        shortcut.__dict__.update(module.__dict__)
        return shortcut
    if isinstance(module, nn.Dropout2d):  # drops whole channels: of every frame alike
        return nn.Dropout3d(module.p, module.inplace)
    if isinstance(module, _per_frame_types()) and not isinstance(module, PerFrame):
        return per_frame(module)
    if next(module.children(), None) is not None:
        return None  # a container (BasicConv2d, an Inception module, a Jarrett stage): inflate its layers
    if "2d" in type(module).__name__.lower():
        raise ValueError(f"{type(module).__name__} ({module}) is a 2D layer with no 3D counterpart here")
    return None


def _per_frame_types() -> tuple[type, ...]:
    """Layers whose 3D counterpart is the 2D layer on each frame: they work on one image (functional 2D ops,
    4D-only checks) and have no kernel to inflate. A spatial window on each frame is what inflation makes of
    every pooling window (1 x k x k); Jarrett's contrast normalization then normalises each frame as the 2D
    network normalises an image; GoogLeNet's auxiliary classifiers (training only) average their per-frame
    logits over time, as ``FrameAveraged`` does."""
    from ..layers import LocalContrastNorm, StochasticPool2d
    from .googlenet import InceptionAux

    return LocalContrastNorm, StochasticPool2d, InceptionAux


class PerFrame:
    """Mixin: run the layer on every frame of (N, C, T, H, W) clips; maps come back stacked on time, vectors
    (a classifier's logits) are averaged over it. The layer keeps its class's parameters and names, so its
    state_dict keys (and 2D weights) are unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5:
            return super().forward(x)
        n, c, t, h, w = x.shape
        out = super().forward(x.transpose(1, 2).reshape(n * t, c, h, w))
        out = out.reshape(n, t, *out.shape[1:])
        return out.transpose(1, 2) if out.dim() == 5 else out.mean(dim=1)


_PER_FRAME_CLASSES: dict[type, type] = {}


def per_frame(module: nn.Module) -> nn.Module:
    """``module``, in place, as a ``PerFrame<Class>`` (its 2D layers stay 2D)."""
    cls = type(module)
    if cls not in _PER_FRAME_CLASSES:
        _PER_FRAME_CLASSES[cls] = type(f"PerFrame{cls.__name__}", (PerFrame, cls), {"__module__": __name__})
    module.__class__ = _PER_FRAME_CLASSES[cls]
    return module


def _pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


class Inflated:
    """Mixin of inflated models: 2D checkpoints are inflated as they load (``densecnn.weights``)."""

    time_kernel: TimeKernel

    def adapt_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        own = self.state_dict()
        out = {}
        for key, value in state.items():
            target = own.get(key)
            if target is not None and target.dim() == 5 and value.dim() == 4:
                value = inflate_kernel(value, target.shape[2])
            out[key] = value
        return out


_INFLATED_CLASSES: dict[type, type] = {}


def inflate(model: nn.Module, time_kernel: TimeKernel = "spatial") -> nn.Module:
    """Turn a 2D network into its inflated 3D counterpart, in place, and return it.

    Every Conv2d/BatchNorm2d/pooling layer is replaced (see the module docstring); the model keeps its
    attribute names, so its state_dict keys are the 2D model's. Its class becomes ``Inflated<Class>``,
    which adds ``adapt_state_dict`` so 2D checkpoints load into it.
    """
    if isinstance(model, Inflated):
        raise ValueError(f"inflate: {type(model).__name__} is already inflated")
    try:
        inflate_children(model, time_kernel)
    except ValueError as err:  # name the network, so a refusal says which family cannot be inflated
        raise ValueError(f"inflate: {type(model).__name__} cannot be inflated: {err}") from err
    cls = type(model)
    if cls not in _INFLATED_CLASSES:
        _INFLATED_CLASSES[cls] = type(f"Inflated{cls.__name__}", (Inflated, cls), {"__module__": __name__})
    model.__class__ = _INFLATED_CLASSES[cls]
    model.time_kernel = time_kernel
    return model


def inflate_children(module: nn.Module, time_kernel: TimeKernel) -> None:
    """Replace every 2D layer below ``module`` by its inflated counterpart, recursing into containers (custom
    blocks included, whatever their name) down to the layers themselves."""
    for name, child in list(module.named_children()):
        try:
            replacement = _inflate_module(child, time_kernel)
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from None
        if replacement is child:  # converted in place (a per-frame layer): its own layers stay 2D
            continue
        if replacement is not None:
            setattr(module, name, replacement)
        else:
            try:
                inflate_children(child, time_kernel)
            except ValueError as err:
                raise ValueError(f"{name}.{err}") from None


def _build_inflated(base: str, time_kernel: TimeKernel, num_classes: int | None, kwargs: dict) -> nn.Module:
    entry = get_entry(base)
    if len(entry.input_size) != 3:
        raise ValueError(f"inflate: {base!r} is not a 2D image backbone (input size {entry.input_size})")
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    try:
        return inflate(entry.builder(**kwargs), time_kernel)
    except ValueError as err:
        raise ValueError(f"inflated base={base!r}: {err}") from err


@register_backbone("inflated", paper="Carreira & Zisserman 2017 (I3D), Section 2.4: any 2D backbone, `base=`",
                   input_size=(3, 16, 224, 224), default_num_classes=1000)
def inflated(base: str = "resnet18", time_kernel: TimeKernel = "spatial", num_classes: int | None = None,
             **kwargs) -> nn.Module:
    """``create_backbone("inflated", base="googlenet")``: inflate any registered 2D backbone. Every family
    inflates: ResNets of every kind (plain, shortcuts A/B/C), GoogLeNet (I3D's own base network) and
    BN-Inception, VGG, AlexNet, ZF-Net, NiN, All-CNN, LeNet-5 and Jarrett's network (its contrast
    normalization per frame). A network with a 2D layer that has no 3D counterpart is refused with the
    family, the layer's path and its type."""
    return _build_inflated(base, time_kernel, num_classes, kwargs)


def _register_inflated_resnet(depth: int) -> None:
    @register_backbone(f"inflated_resnet{depth}", paper=f"I3D inflation (Carreira & Zisserman 2017) of ResNet-{depth}",
                       input_size=(3, 16, 224, 224), default_num_classes=1000)
    def build(num_classes: int = 1000, time_kernel: TimeKernel = "spatial", **kwargs) -> nn.Module:
        return _build_inflated(f"resnet{depth}", time_kernel, num_classes, kwargs)


for _depth in (18, 34, 50, 101, 152):
    _register_inflated_resnet(_depth)


class FrameAveraged(Backbone):
    """A 2D backbone applied to every frame of a clip, its outputs averaged over time (no motion)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.num_classes = getattr(model, "num_classes", 0)
        self.num_features = getattr(model, "num_features", 0)
        self.feature_info = [FeatureInfo(f.num_chs, f.reduction, f"model.{f.module}")
                             for f in getattr(model, "feature_info", [])]
        inner = getattr(model, "classifier_name", None)
        self.classifier_name = f"model.{inner}" if inner else "model"

    def stage_modules(self) -> list[list[str]]:
        return [[f"model.{path}" for path in stage] for stage in self.model.stage_modules()]

    @staticmethod
    def _frames(x: torch.Tensor) -> tuple[torch.Tensor, int]:
        if x.dim() != 5:
            raise ValueError(f"FrameAveraged expects clips (N, C, T, H, W), got shape {tuple(x.shape)}")
        n, c, t, h, w = x.shape
        return x.transpose(1, 2).reshape(n * t, c, h, w), t

    def forward_features(self, x: torch.Tensor, max_index: int | None = None) -> list[torch.Tensor]:
        """Per-frame feature maps (up to ``max_index``: the 2D model stops there too), stacked back into
        (N, C, T, h, w)."""
        frames, t = self._frames(x)
        maps = self.model.forward_features(frames, self.feature_index(max_index))
        return [f.reshape(-1, t, *f.shape[1:]).transpose(1, 2) for f in maps]

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        n, c, t, h, w = x.shape
        out = self.model.forward_head(x.transpose(1, 2).reshape(n * t, c, h, w))
        return out.reshape(n, t, -1).mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames, t = self._frames(x)
        out = self.model(frames)
        return out.reshape(-1, t, *out.shape[1:]).mean(dim=1)
