"""Name -> constructor registry behind ``densecnn.create_backbone`` and ``densecnn.list_backbones``."""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable

from torch import nn

TIMM_PREFIX = "timm:"


@dataclass(frozen=True)
class BackboneEntry:
    """A registered backbone: its builder, the paper (and table/section) it follows, the input size the paper
    uses and its default class count.
    """
    name: str
    builder: Callable[..., nn.Module]
    paper: str
    input_size: tuple[int, ...]  # (C, H, W) or (C, T, H, W) the paper uses; `summary` defaults to it
    default_num_classes: int


_REGISTRY: dict[str, BackboneEntry] = {}


def register_backbone(name: str, *, paper: str, input_size: tuple[int, ...] = (3, 224, 224),
                      default_num_classes: int = 1000):
    """Decorator: ``@register_backbone("resnet50", paper="He et al. 2015, Table 1")``."""

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is registered twice")
        _REGISTRY[name] = BackboneEntry(name, builder, paper, tuple(input_size), default_num_classes)
        return builder

    return decorate


def list_backbones() -> list[str]:
    """Registered backbone names; any timm model is available as ``timm:<name>`` as well."""
    return sorted(_REGISTRY)


def get_entry(name: str) -> BackboneEntry:
    """The registry entry of ``name`` (``timm:<name>`` for any timm model).

    Args:
        name: a registered name.

    Raises:
        ValueError: an unknown name, with the closest registered names as a hint.
    """
    if name.startswith(TIMM_PREFIX):
        return BackboneEntry(name, _build_timm, "timm", (3, 224, 224), 1000)
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown backbone {name!r}.{hint} Available: {', '.join(list_backbones())}, "
            f"or 'timm:<model name>' for any timm model."
        ) from None


def _build_timm(name: str, **kwargs) -> nn.Module:
    from .timm_adapter import TimmBackbone

    return TimmBackbone(name[len(TIMM_PREFIX):], **kwargs)
