"""The small wrappers a task exports: the network plus what turns its raw output into the units
``preprocess.json`` states (softmax probabilities; depth in metres, unit normals)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from densecnn.heads.dense import encode_input_map


class Probabilities(nn.Module):
    """``softmax(net(x))`` over the class dimension: the exported classifier gives probabilities."""

    def __init__(self, net: nn.Module, dim: int = -1):
        super().__init__()
        self.net, self.dim = net, dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).softmax(dim=self.dim)


class DenseOutputs(nn.Module):
    """A dense network ``net(images, maps) -> {target: map}`` as ``(image, *input maps) -> (map, ...)``: the
    outputs in ``targets`` order, the extra inputs (depth in metres (N, H, W), unit normals (N, 3, H, W)) in
    ``input_maps`` order, encoded inside the graph as the network expects them (``encode_input_map``)."""

    def __init__(self, net: nn.Module, targets: Sequence[str], input_maps: Sequence[str] = ()):
        super().__init__()
        self.net, self.targets, self.input_maps = net, list(targets), list(input_maps)

    def forward(self, image: torch.Tensor, *maps: torch.Tensor) -> tuple[torch.Tensor, ...]:
        encoded = {name: encode_input_map(name, value) for name, value in zip(self.input_maps, maps)} or None
        out = self.net(image, encoded)
        return tuple(out[t] for t in self.targets)
