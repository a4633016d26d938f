"""What a task hands the exporter: the module to trace, example inputs and the facts ``preprocess.json`` records.

Every task family builds one with ``BaseTask.export_spec(dynamic_batch=...)`` (``tasks``); ``densecnn.export``
turns it into an ONNX file or an ExportedProgram and verifies it against eager PyTorch.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn


@dataclass
class ExportSpec:
    """One exportable network.

    Attributes:
        module: the network to export, in eval mode, returning a tensor or a tuple of tensors in the units
            ``preprocess`` states (class probabilities, depth in metres, unit normals, boxes in pixels, ...).
        example_inputs: a tuple of tensors the module accepts (traced, and the verification's default input).
        input_names, output_names: the graph's input and output names, one per tensor.
        dynamic_batch: whether dimension 0 of every input (and output) may vary in the exported graph.
        preprocess: what ``preprocess.json`` holds: input size, mean/std, channel order, resize rule, class
            names, output units, and anything a caller must do before or after the graph.
        atol, rtol: the verification tolerance (exported against eager outputs).
        notes: what the export does not include (e.g. OverFeat's window decoding), for the card and the log.
        inputs_from_batch: turns one batch of the task's test DataLoader into the graph's inputs (the export
            command verifies on the checkpoint's own test pictures with it); None: verify on ``example_inputs``.
        exporter: ``dynamo`` (default: one ``torch.export`` graph for both formats) or ``legacy``: ONNX through
            the TorchScript-based ``torch.onnx.export(..., dynamo=False)``, for graphs the dynamo exporter cannot
            translate (torchvision's ``roi_pool``, NMS-sized outputs: the detectors, ``tasks.detection.export``).
        dynamic_axes: with ``legacy``, the named dynamic dimensions per input/output name (``torch.onnx.export``'s
            ``dynamic_axes``); they replace the batch-only axes ``dynamic_batch`` gives.
        min_opset: the lowest ONNX opset the graph exports to (RoIAlign's ``aligned`` needs 16).
    """

    module: nn.Module
    example_inputs: tuple[torch.Tensor, ...]
    input_names: list[str]
    output_names: list[str]
    dynamic_batch: bool = True
    preprocess: dict[str, Any] = field(default_factory=dict)
    atol: float = 1e-4
    rtol: float = 1e-4
    notes: str = ""
    inputs_from_batch: Callable[[Any], tuple[torch.Tensor, ...]] | None = None
    exporter: Literal["dynamo", "legacy"] = "dynamo"
    dynamic_axes: dict[str, dict[int, str]] | None = None
    min_opset: int | None = None
