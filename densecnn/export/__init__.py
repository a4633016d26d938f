"""Export a network as ONNX or a ``torch.export`` ExportedProgram, and check the file against eager PyTorch.

Plain PyTorch (no Lightning): a task describes what to export with an ``ExportSpec`` (``spec.py``);
``export_spec_to`` writes ``model.onnx`` or ``model.pt2`` and ``verify_export`` runs the file (onnxruntime or
``torch.export.load``) next to the eager module and compares every output.

Both formats start from one ``torch.export.export`` graph (non-strict), with dimension 0 of every input marked
dynamic when ``spec.dynamic_batch``; the ONNX file is that graph through the dynamo exporter
(``torch.onnx.export(exported_program, dynamo=True)``), so an op the exporter cannot translate can be traced back
to the module that called it (the graph nodes keep their ``nn_module_stack``).
"""
from __future__ import annotations

import inspect
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from densecnn.errors import UserError

from .spec import ExportSpec

__all__ = [
    "FORMATS",
    "MODEL_FILES",
    "ExportError",
    "ExportSpec",
    "export_spec_to",
    "exported_program",
    "onnx_opset",
    "second_batch",
    "verify_export",
]

FORMATS = ("onnx", "exported_program")
MODEL_FILES = {"onnx": "model.onnx", "exported_program": "model.pt2"}
#: the newest opset the dynamo exporter writes by default (torch 2.9+); ``--opset`` may ask for another
DEFAULT_OPSET = 18


class ExportError(UserError):
    """A network that cannot be exported, or whose exported file disagrees with PyTorch."""


def _check_spec(spec: ExportSpec) -> None:
    if len(spec.input_names) != len(spec.example_inputs):
        raise ValueError(f"ExportSpec: {len(spec.input_names)} input names for {len(spec.example_inputs)} inputs")
    if spec.dynamic_batch and any(x.shape[0] < 2 for x in spec.example_inputs):
        # torch.export specialises a size-1 dimension: a dynamic batch needs an example batch of at least two
        raise ValueError("ExportSpec: a dynamic batch needs example inputs with a batch of at least 2")


def exported_program(spec: ExportSpec) -> torch.export.ExportedProgram:
    """The spec's module as a ``torch.export`` graph (dimension 0 of every input dynamic when asked)."""
    _check_spec(spec)
    module = spec.module.eval()
    dynamic_shapes = None
    if spec.dynamic_batch:
        dynamic_shapes = _batch_dynamic_shapes(module, len(spec.example_inputs))
    try:
        with torch.no_grad():
            return torch.export.export(module, tuple(spec.example_inputs), dynamic_shapes=dynamic_shapes,
                                       strict=False)
    except Exception as err:  # torch.export raises many types (UserError, GuardOnDataDependent..., RuntimeError)
        hint = ("; the graph fixes the batch size somewhere: export with --no-dynamic-batch"
                if spec.dynamic_batch and "batch" in str(err) else "")
        raise ExportError(f"torch.export could not trace {type(module).__name__}: "
                          f"{_first_line(err)}{hint}") from err


def _batch_dynamic_shapes(module: nn.Module, count: int) -> tuple:
    """``dynamic_shapes`` marking dimension 0 of each of ``count`` positional inputs as one shared batch size;
    inputs that land in a ``*args`` parameter are grouped in one tuple, as ``torch.export`` expects."""
    batch = torch.export.Dim("batch", min=1)
    params = list(inspect.signature(module.forward).parameters.values())
    star = next((i for i, p in enumerate(params) if p.kind is inspect.Parameter.VAR_POSITIONAL), None)
    if star is None or star >= count:
        return tuple({0: batch} for _ in range(count))
    return (*({0: batch} for _ in range(star)), tuple({0: batch} for _ in range(count - star)))


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _unsupported_op(err: BaseException) -> str | None:
    """The aten op the ONNX exporter found no translation for, from its error chain (``DispatchError``)."""
    current: BaseException | None = err
    while current is not None:
        found = re.search(r"No ONNX function found for <OpOverload\(op='([\w.]+)', overload='(\w+)'\)>", str(current))
        if found:
            return f"{found.group(1)}.{found.group(2)}"
        current = current.__cause__ or current.__context__
    return None


def modules_calling(program: torch.export.ExportedProgram, op: str) -> list[str]:
    """The module paths (``head.scale2.conv``) and classes whose forward calls the aten op ``op`` in ``program``,
    before or after the exporter's decompositions."""
    for graph_program in (program, None):
        if graph_program is None:
            graph_program = program.run_decompositions()
        found = []
        for node in graph_program.graph.nodes:
            if node.op == "call_function" and str(node.target).removeprefix("aten.") == op.removeprefix("aten."):
                stack = node.meta.get("nn_module_stack") or {}
                if stack:
                    path, cls = list(stack.values())[-1]
                    cls_name = cls.rsplit(".", 1)[-1] if isinstance(cls, str) else getattr(cls, "__name__", str(cls))
                    found.append(f"{path or '<root>'} ({cls_name})")
                else:
                    found.append("<root>")
        if found:
            return list(dict.fromkeys(found))
    return []


def export_spec_to(spec: ExportSpec, out_dir: Path, *, fmt: Literal["onnx", "exported_program"],
                   opset: int | None = None) -> Path:
    """Write ``out_dir/model.onnx`` or ``out_dir/model.pt2`` for ``spec`` and return its path. An op without an
    ONNX translation raises ``ExportError`` naming the op and the module that uses it."""
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / MODEL_FILES[fmt]
    if fmt == "onnx" and spec.exporter == "legacy":
        return _export_legacy_onnx(spec, path, opset)
    program = exported_program(spec)
    if fmt == "exported_program":
        torch.export.save(program, path)
        return path
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes on opset conversion and deprecated options
            torch.onnx.export(program, tuple(spec.example_inputs), str(path), dynamo=True, verbose=False,
                              input_names=list(spec.input_names), output_names=list(spec.output_names),
                              opset_version=opset or DEFAULT_OPSET, external_data=False, optimize=True)
    except Exception as err:  # the exporter wraps everything in torch.onnx.OnnxExporterError
        op = _unsupported_op(err)
        if op is None:
            raise ExportError(f"ONNX export of {type(spec.module).__name__} failed: {_first_line(err)}") from err
        where = modules_calling(program, op) or ["an unknown module"]
        raise ExportError(f"ONNX has no translation for the op {op}, used by {', '.join(where)}: export with "
                          f"--format exported_program, or replace that layer") from err
    written = onnx_opset(path)
    if opset is not None and written != opset:
        # the dynamo exporter writes opset 18+ and converts down with onnx's version converter, which fails on
        # some graphs and then keeps the file at its own opset
        raise ExportError(f"--opset {opset}: the ONNX exporter wrote opset {written} and could not convert this "
                          f"network to {opset}; use --opset {written} or newer")
    return path


def _export_legacy_onnx(spec: ExportSpec, path: Path, opset: int | None) -> Path:
    """ONNX through the TorchScript-based exporter, at ``opset`` (default ``DEFAULT_OPSET``), never below
    ``spec.min_opset``."""
    version = opset or DEFAULT_OPSET
    if spec.min_opset is not None and version < spec.min_opset:
        raise ExportError(f"--opset {version}: {type(spec.module).__name__} needs opset {spec.min_opset} or newer")
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the tracer's notes on Python values it records as constants
            torch.onnx.export(spec.module.eval(), tuple(spec.example_inputs), str(path), dynamo=False,
                              opset_version=version, input_names=list(spec.input_names),
                              output_names=list(spec.output_names), dynamic_axes=spec.dynamic_axes)
    except Exception as err:  # the TorchScript exporter raises SymbolicValueError, RuntimeError, ...
        raise ExportError(f"ONNX export of {type(spec.module).__name__} failed: {_first_line(err)}") from err
    return path


def onnx_opset(path: Path) -> int:
    """The default-domain opset an ONNX file declares."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def second_batch(inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The same inputs with one more sample (the first repeated at the end): another batch size for a dynamic
    graph."""
    return tuple(torch.cat([x, x[:1]]) for x in inputs)


def _load_exported(path: Path) -> Callable[[tuple[torch.Tensor, ...]], list[torch.Tensor]]:
    """A function running the exported file: an onnxruntime session (CPU) or the loaded ExportedProgram."""
    if path.suffix == ".onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]

        def run_onnx(inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
            feeds = {name: x.detach().cpu().numpy() for name, x in zip(names, inputs)}
            return [torch.from_numpy(out) for out in session.run(None, feeds)]

        return run_onnx
    module = torch.export.load(str(path)).module()

    def run_program(inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        with torch.no_grad():
            outputs = module(*inputs)
        return [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)

    return run_program


def _run_eager(spec: ExportSpec, inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    spec.module.eval()
    with torch.no_grad():
        outputs = spec.module(*inputs)
    return [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)


def verify_export(path: Path, spec: ExportSpec, inputs: tuple[torch.Tensor, ...] | None = None) -> float:
    """Run the exported file and the eager module on ``inputs`` (default: the spec's example inputs) and, for a
    dynamic batch, on one more sample; every output must agree within ``spec.atol + spec.rtol * |eager|``.
    Returns the largest absolute difference; raises ``ExportError`` naming the output that differs."""
    path = Path(path)
    inputs = tuple(spec.example_inputs if inputs is None else inputs)
    batches = [inputs, second_batch(inputs)] if spec.dynamic_batch else [inputs]
    largest = 0.0
    try:
        run = _load_exported(path)
    except Exception as err:  # onnxruntime's InvalidGraph/Fail, torch's deserialisation errors
        raise ExportError(f"{path}: cannot load the exported model: {_first_line(err)}") from err
    for batch in batches:
        expected = _run_eager(spec, batch)
        try:
            got = run(batch)
        except Exception as err:  # onnxruntime's own errors (Fail, InvalidArgument) and torch's
            raise ExportError(f"{path}: running the exported model on a batch of {len(batch[0])} failed: "
                              f"{_first_line(err)}") from err
        if len(got) != len(expected):
            raise ExportError(f"{path}: {len(got)} outputs, PyTorch gives {len(expected)}")
        for name, want, have in zip(spec.output_names, expected, got):
            want, have = want.detach().float().cpu(), have.float()
            if tuple(want.shape) != tuple(have.shape):
                raise ExportError(f"{path}: output {name!r} has shape {tuple(have.shape)}, PyTorch gives "
                                  f"{tuple(want.shape)} (batch of {len(batch[0])})")
            diff = (want - have).abs()
            worst = float(diff.max()) if diff.numel() else 0.0
            largest = max(largest, worst)
            if not bool((diff <= spec.atol + spec.rtol * want.abs()).all()):
                raise ExportError(f"{path}: output {name!r} differs from PyTorch by up to {worst:.3g} (batch of "
                                  f"{len(batch[0])}; tolerance atol={spec.atol:g}, rtol={spec.rtol:g})")
    return largest
