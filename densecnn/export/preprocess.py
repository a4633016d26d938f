"""``preprocess.json``: the evaluation pipeline a caller must reproduce before the exported graph, as data."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: OpenCV's interpolation flags (what albumentations stores) by name
INTERPOLATIONS = {0: "nearest", 1: "bilinear", 2: "bicubic", 3: "area", 4: "lanczos"}
#: steps of a pipeline that are not geometry: normalisation is recorded as ``mean``/``std``, the tensor
#: conversion as ``layout``
NOT_GEOMETRY = ("Normalize", "ToTensorV2")


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


def describe_step(step: Any) -> dict[str, Any]:
    """One albumentations step as ``{"op": ..., ...}``: ``resize_shorter_side`` (size), ``resize_longer_side``,
    ``resize`` ([height, width]), ``center_crop`` ([height, width]), else the class name and its arguments."""
    name = type(step).__name__
    args = step.get_transform_init_args() if hasattr(step, "get_transform_init_args") else {}
    interpolation = INTERPOLATIONS.get(args.get("interpolation"), args.get("interpolation"))
    if name in ("SmallestMaxSize", "LongestMaxSize"):
        op = "resize_shorter_side" if name == "SmallestMaxSize" else "resize_longer_side"
        return {"op": op, "size": _plain(args["max_size"]), "interpolation": interpolation}
    if name == "Resize":
        return {"op": "resize", "size": [args["height"], args["width"]], "interpolation": interpolation}
    if name == "CenterCrop":
        return {"op": "center_crop", "size": [args["height"], args["width"]]}
    return {"op": name, **{k: _plain(v) for k, v in args.items() if k != "p"}}


def describe_pipeline(steps: Sequence[Any]) -> list[dict[str, Any]]:
    """The geometric steps of an evaluation pipeline (an albumentations ``Compose``'s ``transforms``), in order."""
    return [describe_step(s) for s in steps if type(s).__name__ not in NOT_GEOMETRY]


def normalisation_entry(mean: Sequence[float], std: Sequence[float]) -> dict[str, Any]:
    """How pixels become the graph's input: RGB, 0..255 divided by 255, minus ``mean``, divided by ``std``
    (albumentations' ``Normalize`` with ``max_pixel_value=255``), channels first."""
    return {"channel_order": "RGB", "max_pixel_value": 255.0, "mean": [float(m) for m in mean],
            "std": [float(s) for s in std]}
