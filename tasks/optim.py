"""Optimizer parameter groups and learning-rate schedules that stay right when groups are added mid-run."""
from __future__ import annotations

from fnmatch import fnmatch
from typing import Iterable

from torch import nn


def no_weight_decay_patterns(model: nn.Module) -> set[str]:
    """Parameter names (fnmatch patterns, relative to ``model``) that modules exempt from weight decay through
    timm's ``no_weight_decay()`` (a ViT's ``pos_embed`` and ``cls_token``)."""
    patterns: set[str] = set()
    for path, module in model.named_modules():
        declared = getattr(module, "no_weight_decay", None)
        if callable(declared):
            prefix = f"{path}." if path else ""
            patterns.update(prefix + name for name in declared())
    return patterns


def param_groups(named_params: Iterable[tuple[str, nn.Parameter]], lr: float, weight_decay: float,
                 decay_norm_and_bias: bool = False, no_weight_decay: Iterable[str] = ()) -> list[dict]:
    """Optimizer groups at ``lr``: one with ``weight_decay`` and one without for norm layers' weights and biases,
    all biases, layer scales (timm's convention: every parameter with ``ndim <= 1``) and names matching a
    ``no_weight_decay`` pattern. With ``decay_norm_and_bias`` everything decays, in one group. Empty groups are
    left out."""
    patterns = tuple(no_weight_decay)
    decay, exempt = [], []
    for name, param in named_params:
        free = not decay_norm_and_bias and (param.ndim <= 1 or name.endswith(".bias")
                                            or any(fnmatch(name, p) for p in patterns))
        (exempt if free else decay).append(param)
    groups = [{"params": decay, "lr": lr, "weight_decay": weight_decay},
              {"params": exempt, "lr": lr, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def _nested(scheduler) -> list:
    inner = getattr(scheduler, "_schedulers", None)  # SequentialLR, ChainedScheduler
    return [scheduler] + [s for child in inner for s in _nested(child)] if inner else [scheduler]


def extend_schedulers(schedulers: Iterable) -> None:
    """Make schedulers drive parameter groups added to their optimizer after they were built.

    The recursive updates (``group["lr"] *= ratio``) already reach every group, but closed forms and special
    cases (SequentialLR's milestone, cosine's end of period) zip ``base_lrs`` with the groups and fail or skip
    the new ones; a new group's base is its ``initial_lr``."""
    for top in schedulers:
        for scheduler in _nested(top):
            base_lrs = getattr(scheduler, "base_lrs", None)
            if base_lrs is not None:
                groups = scheduler.optimizer.param_groups
                base_lrs.extend(g.get("initial_lr", g["lr"]) for g in groups[len(base_lrs):])
