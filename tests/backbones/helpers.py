"""Build big backbones cheaply for shape and contract tests: on the meta device, then materialised on the
CPU without running the (slow, 100M-parameter) initialisers; small tensors get random values, the huge FC
matrices zeros. Only for tests that check shapes and wiring, never values against a reference."""
from __future__ import annotations

import math

import torch
from torch import nn

from densecnn import create_backbone


def fast_backbone(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        model = create_backbone(name, **kwargs)
    model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.numel() > 4_000_000:
                p.zero_()
            elif p.dim() > 1:
                p.normal_(0, math.sqrt(2.0 / p[0].numel()), generator=generator)
            else:
                p.fill_(1.0 if pname.endswith("weight") or pname.endswith("gain") else 0.0)
        for bname, b in model.named_buffers():
            if bname.endswith("running_var"):
                b.fill_(1.0)
            elif b.is_floating_point() or bname.endswith("num_batches_tracked"):
                b.zero_()
    return model.eval()


def small_residual_branches(model: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Scale each residual block's last batch norm to 0.05-0.15, so the 600 blocks of cifar_resnet1202 stay
    finite with test weights (unit-variance branches add up to overflow)."""
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "last_bn"):
                m.last_bn().weight.uniform_(0.05, 0.15, generator=generator)
    return model
