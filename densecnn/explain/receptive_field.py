"""Receptive fields from the layer arithmetic: which input pixels a unit of a layer can see.

Every convolution or pooling window of kernel k, stride s, padding p and dilation d maps a field
``(size, jump, start)`` -- the extent of one unit's field in input pixels, the input distance between
neighbouring units, and the input coordinate where unit 0's field begins -- to

    size' = size + d (k - 1) jump,    jump' = jump s,    start' = start - p jump,

the same quantities ``densecnn.conv_output_size`` (o = floor((i + 2p - d(k-1) - 1)/s) + 1, S4 L27-47) counts
with. Element-wise layers (ReLU, BN, LRN, dropout) keep the field; where branches meet (a residual sum, an
Inception concatenation) the field is the union of the branches' boxes. Unit ``u`` of a layer then sees input
pixels ``start + u jump`` .. ``start + u jump + size - 1`` (clipped to the image: padding has no pixels). This
box is where Zeiler & Fergus's image patches come from (S0 L1212-1249).

The graph comes from ``torch.fx`` (branches included); a model fx cannot trace is read as a chain of its leaf
modules in call order, exact for the sequential families.
"""
from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..errors import UserError

_WINDOWED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
             nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
# Layers that act on each position alone (their output unit (y, x) depends only on input position (y, x)).
_POINTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh,
              nn.Hardtanh, nn.Softplus, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
              nn.AlphaDropout, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LocalResponseNorm,
              nn.Softmax, nn.LogSoftmax)
_POINTWISE_FUNCTIONS = {operator.add, operator.mul, operator.sub, operator.truediv, operator.iadd, operator.imul,
                        torch.add, torch.mul, torch.sub, torch.cat, torch.relu, torch.sigmoid, torch.tanh,
                        torch.abs, torch.sqrt, F.relu, F.relu6, F.leaky_relu, F.dropout, F.gelu, F.silu,
                        F.batch_norm, F.local_response_norm, torch.stack}
_POINTWISE_METHODS = {"relu", "relu_", "sigmoid", "tanh", "abs", "add", "add_", "mul", "mul_", "contiguous",
                      "clone", "float", "to", "sqrt"}
_WINDOW_FUNCTIONS = {F.max_pool2d: "pool", F.avg_pool2d: "pool", F.conv2d: "conv", torch.conv2d: "conv",
                     F.max_pool3d: "pool", F.avg_pool3d: "pool", F.conv3d: "conv"}


@dataclass(frozen=True)
class ReceptiveField:
    """Per spatial axis (H, W; or T, H, W for video): ``size`` of one unit's field in input pixels, ``jump``
    (input distance between neighbouring units, the layer's effective stride) and ``start`` (input coordinate
    where unit 0's field begins; negative where padding was added)."""

    size: tuple[int, ...]
    jump: tuple[int, ...]
    start: tuple[int, ...]

    @classmethod
    def identity(cls, ndim: int = 2) -> ReceptiveField:
        return cls((1,) * ndim, (1,) * ndim, (0,) * ndim)

    def window(self, k: Sequence[int], s: Sequence[int], p: Sequence[int], d: Sequence[int]) -> ReceptiveField:
        """The field after a window of kernel ``k``, stride ``s``, padding ``p``, dilation ``d`` (per axis)."""
        return ReceptiveField(tuple(r + dd * (kk - 1) * j for r, kk, dd, j in zip(self.size, k, d, self.jump)),
                              tuple(j * ss for j, ss in zip(self.jump, s)),
                              tuple(st - pp * j for st, pp, j in zip(self.start, p, self.jump)))

    def union(self, other: ReceptiveField) -> ReceptiveField:
        """Where two branches meet: the box covering both (their units must be on the same grid spacing)."""
        if self.jump != other.jump:
            raise UserError(f"branches with different strides {self.jump} and {other.jump} meet: their units are "
                            f"not on one grid, so no single receptive field describes the sum")
        start = tuple(min(a, b) for a, b in zip(self.start, other.start))
        end = tuple(max(a + sa, b + sb) for a, sa, b, sb in zip(self.start, self.size, other.start, other.size))
        return ReceptiveField(tuple(e - s for e, s in zip(end, start)), self.jump, start)

    def box(self, *unit: int, input_size: Sequence[int] | None = None) -> tuple[tuple[int, int], ...]:
        """The input pixels unit ``unit`` (one index per axis, e.g. ``(y, x)``) sees: ``((y0, y1), (x0, x1))``,
        end-exclusive; clipped to ``input_size`` (e.g. ``(H, W)``) when given."""
        if len(unit) != len(self.size):
            raise ValueError(f"a unit of this {len(self.size)}-D layer needs {len(self.size)} indices, got {unit}")
        spans = []
        for axis, u in enumerate(unit):
            lo = self.start[axis] + u * self.jump[axis]
            hi = lo + self.size[axis]
            if input_size is not None:
                lo, hi = max(lo, 0), min(hi, input_size[axis])
            spans.append((lo, hi))
        return tuple(spans)


def _tuple(value, ndim: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * ndim


def _module_window(module: nn.Module) -> tuple[tuple[int, ...], ...]:
    ndim = int(type(module).__name__[-2])  # Conv2d -> 2
    k = _tuple(module.kernel_size, ndim)
    s = _tuple(module.stride if module.stride is not None else module.kernel_size, ndim)
    p = _tuple(module.padding, ndim)
    if isinstance(module.padding, str):  # "same": (k - 1) / 2 each side at stride 1
        p = tuple((dd * (kk - 1)) // 2 for kk, dd in zip(k, _tuple(module.dilation, ndim))) \
            if module.padding == "same" else (0,) * ndim
    d = _tuple(getattr(module, "dilation", 1), ndim)
    return k, s, p, d


def _through_module(module: nn.Module, field: ReceptiveField, name: str) -> ReceptiveField | None:
    """The field after ``module``; ``None`` for a layer whose units see the whole input (FC, adaptive pooling)."""
    if isinstance(module, _WINDOWED):
        return field.window(*_module_window(module))
    if isinstance(module, _POINTWISE):
        return field
    if isinstance(module, (nn.Linear, nn.Flatten, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
                           nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool3d, nn.AdaptiveAvgPool1d)):
        return None
    raise UserError(f"receptive field: layer {name!r} is a {type(module).__name__}, whose spatial arithmetic "
                    f"densecnn.explain does not know (known: convolutions, pooling, element-wise layers)")


def _slice_field(field: ReceptiveField, index) -> ReceptiveField:
    """``x[:, :, a::s, b::s]`` (ResNet option-A shortcuts subsample this way): a 1-wide window of stride s."""
    spatial = list(index[-len(field.size):]) if isinstance(index, tuple) and len(index) >= len(field.size) + 2 \
        else []
    if not spatial or not all(isinstance(i, slice) for i in spatial):
        return field
    ones = (1,) * len(field.size)
    return field.window(ones, tuple(i.step or 1 for i in spatial), tuple(-(i.start or 0) for i in spatial), ones)


def _pad_field(field: ReceptiveField, pad: Sequence[int]) -> ReceptiveField:
    """``F.pad``: pairs (before, after) from the last axis backwards; only the spatial ones move the field."""
    ndim = len(field.size)
    before = [0] * ndim
    for pair, axis in zip(range(0, len(pad), 2), range(ndim - 1, -1, -1)):
        before[axis] = pad[pair]
    ones = (1,) * ndim
    return field.window(ones, ones, tuple(before), ones)


def _through_function(node: fx.Node, fields: dict[str, ReceptiveField | None]) -> ReceptiveField | None:
    inputs = [fields.get(a.name) for a in node.all_input_nodes]
    if not inputs or any(f is None for f in inputs):
        return None
    first = inputs[0]
    if node.op == "call_function" and node.target is operator.getitem:
        return _slice_field(first, node.args[1])
    if node.op == "call_function" and node.target is F.pad:
        return _pad_field(first, node.args[1] if len(node.args) > 1 else node.kwargs["pad"])
    if node.op == "call_function" and node.target in _WINDOW_FUNCTIONS:
        if _WINDOW_FUNCTIONS[node.target] == "conv":
            raise UserError(f"receptive field: functional convolution {node.name!r} has no kernel size known "
                            f"before running; use nn.Conv modules")
        args = dict(zip(("kernel_size", "stride", "padding"), node.args[1:]), **node.kwargs)
        ndim = len(first.size)
        k = _tuple(args["kernel_size"], ndim)
        return first.window(k, _tuple(args.get("stride") or k, ndim), _tuple(args.get("padding", 0), ndim),
                            (1,) * ndim)
    pointwise = (node.op == "call_function" and node.target in _POINTWISE_FUNCTIONS) or \
                (node.op == "call_method" and node.target in _POINTWISE_METHODS)
    if not pointwise:
        return None  # flatten, view, mean, adaptive pooling: every unit sees the whole input
    for other in inputs[1:]:
        first = first.union(other)
    return first


def _fx_fields(model: nn.Module, ndim: int) -> dict[str, ReceptiveField | None]:
    """The field of every module's output, keyed by attribute path. A container's output is the last node
    that runs inside it (a ResNet block's final ReLU); a module that runs twice is read at its last call."""
    graph = fx.symbolic_trace(model).graph
    fields: dict[str, ReceptiveField | None] = {}
    by_module: dict[str, ReceptiveField | None] = {}
    for node in graph.nodes:
        if node.op == "placeholder":
            fields[node.name] = ReceptiveField.identity(ndim)
            continue
        if node.op in ("get_attr", "output"):
            continue
        if node.op == "call_module":
            source = fields.get(node.args[0].name) if node.args and isinstance(node.args[0], fx.Node) else None
            fields[node.name] = None if source is None else _through_module(model.get_submodule(node.target),
                                                                            source, node.target)
        else:
            fields[node.name] = _through_function(node, fields)
        for key in node.meta.get("nn_module_stack", {}):
            by_module[key.split("@")[0]] = fields[node.name]
        if node.op == "call_module":
            by_module[node.target] = fields[node.name]
    return by_module


def _chain_fields(model: nn.Module, example: torch.Tensor) -> dict[str, ReceptiveField | None]:
    """Leaf modules composed in the order they run: exact for a chain of layers (no branches)."""
    order: list[str] = []
    handles = [m.register_forward_hook(lambda mod, a, o, name=name: order.append(name))
               for name, m in model.named_modules() if name and not any(True for _ in m.children())]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    field: ReceptiveField | None = ReceptiveField.identity(example.dim() - 2)
    by_module: dict[str, ReceptiveField | None] = {}
    for name in order:
        if field is not None:
            field = _through_module(model.get_submodule(name), field, name)
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):  # the containers holding it end (so far) with this layer
            by_module[".".join(parts[:depth])] = field
    return by_module


def layer_name(model: nn.Module, layer: str | int) -> str:
    """A layer given as a module path (``"features.4"``, ``"layer2.1.relu"``) or as an index of the backbone's
    ``feature_info`` (the module producing that feature map)."""
    if isinstance(layer, int) or (isinstance(layer, str) and layer.lstrip("-").isdigit()):
        info = getattr(model, "feature_info", None)
        if info is None:
            raise UserError(f"layer {layer!r}: {type(model).__name__} has no feature_info; name the module path")
        index = model.feature_index(int(layer)) if hasattr(model, "feature_index") else int(layer)
        return info[index].module
    try:
        model.get_submodule(layer)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n][:12]
        raise UserError(f"layer {layer!r} is not a module of {type(model).__name__} (e.g. {', '.join(names)}, ...)"
                        ) from None
    return layer


def receptive_fields(model: nn.Module, spatial_dims: int = 2, example: torch.Tensor | None = None
                     ) -> dict[str, ReceptiveField | None]:
    """The receptive field of every module's output, keyed by module path (``None``: the units see the whole
    input). ``example`` (an input batch) is needed only for models ``torch.fx`` cannot trace."""
    try:
        return _fx_fields(model, spatial_dims)
    except (fx.proxy.TraceError, TypeError, NotImplementedError):
        if example is None:
            raise UserError(f"{type(model).__name__} cannot be traced by torch.fx; pass an example input to read "
                            f"its layers in call order") from None
        return _chain_fields(model, example)


def receptive_field(model: nn.Module, layer: str | int, spatial_dims: int = 2,
                    example: torch.Tensor | None = None) -> ReceptiveField:
    """The receptive field of ``layer``'s output units (a module path or a ``feature_info`` index)."""
    name = layer_name(model, layer)
    fields = receptive_fields(model, spatial_dims, example)
    if name not in fields:
        raise UserError(f"layer {name!r} does not run in {type(model).__name__}'s forward pass")
    field = fields[name]
    if field is None:
        raise UserError(f"layer {name!r} follows a fully connected or adaptive pooling layer: each of its units "
                        f"sees the whole input, so it has no receptive-field box")
    return field
