"""``python -m densecnn export``: a trained checkpoint as ONNX or a ``torch.export`` ExportedProgram, verified.

    python -m densecnn export --config C.yaml --ckpt_path X --format onnx|exported_program [--output DIR]
        [--dynamic-batch/--no-dynamic-batch] [--opset N] [--overwrite] [--model.init_args.key value ...]

The task is built from the config and the checkpoint exactly as ``test`` builds it (``tasks.cli``: a checkpoint of
another task, backbone or class count is refused naming the file; the checkpoint's hyper-parameters fill what the
config leaves unset). The task says what to export (``BaseTask.export_spec``); ``densecnn.export`` writes the file
and runs it next to PyTorch on the checkpoint's own test pictures (the first test batch, when the DataModule has
its data) or the spec's fixed random input, and fails beyond the spec's tolerance.

The output directory (default ``<run dir of the checkpoint>/export/<format>``: the folder above ``checkpoints/``
when the checkpoint lies in one, else ``exports/<task>/<format>``) receives ``model.onnx`` or ``model.pt2``,
``preprocess.json``, and the model card and ``model.safetensors`` (``tasks.model_card``). Everything is written
into a temporary folder beside it and renamed at the end: a failed export leaves nothing behind, and a folder
that already holds an export is replaced only with ``--overwrite``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from densecnn.backbones.registry import get_entry
from densecnn.errors import ConfigError, UserError
from densecnn.export import (FORMATS, MODEL_FILES, ExportError, ExportSpec, export_spec_to, onnx_opset,
                             verify_export)
from densecnn.export.preprocess import describe_pipeline, normalisation_entry

from .checkpoints import CheckpointError

#: files whose presence marks a folder as holding an export
EXPORT_MARKERS = (*MODEL_FILES.values(), "preprocess.json")
#: the example batch of a spec: two samples (torch.export specialises a batch of one)
EXAMPLE_BATCH = 2


@dataclass
class ExportResult:
    """What ``export_task`` wrote: the model and ``preprocess.json`` paths, every file, and the largest absolute
    difference from PyTorch found by the verification (and on what input).
    """
    model_path: Path
    preprocess_path: Path
    max_abs_diff: float
    files: list[Path] = field(default_factory=list)
    #: where the verification input came from: "test batch" or "example input"
    verified_on: str = "example input"


# ---- what tasks use to build their ExportSpec ------------------------------------------------------------------
def attached_datamodule(task) -> Any:
    """The DataModule of the task's Trainer (the export command attaches the config's), or None."""
    return getattr(task.trainer, "datamodule", None) if task._trainer is not None else None


def attach_datamodule(task, datamodule) -> None:
    """Give ``task`` a Trainer holding ``datamodule`` (set up for testing), as a fit would, so that
    ``task.normalisation()`` and the export specs read the data's settings."""
    import pytorch_lightning as pl

    trainer = task._trainer
    if trainer is None:
        trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False)
        trainer.strategy.connect(task)
        task.trainer = trainer
    trainer._data_connector.attach_datamodule(task, datamodule=datamodule)


def backbone_input_size(task) -> tuple[int, int]:
    """(H, W) of the backbone's registered input (the paper's size), for a task without a DataModule."""
    name = task.hparams.backbone
    if name.startswith("timm:"):
        return (224, 224)
    size = get_entry(name).input_size
    return (int(size[-2]), int(size[-1]))


def example_images(*shape: int) -> torch.Tensor:
    """A fixed random batch (``EXAMPLE_BATCH`` samples): the same numbers on every call and machine."""
    return torch.randn(EXAMPLE_BATCH, *shape, generator=torch.Generator().manual_seed(0))


def image_preprocess(task, size: Sequence[int], steps: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The part of ``preprocess.json`` every image task shares: input size, resize rule, normalisation."""
    mean, std = task.normalisation()
    return {"task": type(task).__name__, "backbone": task.hparams.backbone,
            "input_size": [int(s) for s in size], "layout": "NCHW", "dtype": "float32",
            **normalisation_entry(mean, std),
            "resize": steps if steps is not None else [{"op": "resize", "size": [int(s) for s in size],
                                                         "interpolation": "bilinear"}]}


def eval_steps(datamodule) -> list[dict[str, Any]] | None:
    """The evaluation pipeline's geometric steps, for a DataModule with an albumentations ``eval_transform``."""
    transform = getattr(datamodule, "eval_transform", None)
    steps = getattr(transform, "transforms", None)
    return describe_pipeline(steps) if steps is not None else None


# ---- the export --------------------------------------------------------------------------------------------------
def _holds_export(folder: Path) -> bool:
    return folder.is_dir() and any((folder / name).exists() for name in EXPORT_MARKERS)


def _verification_inputs(task, spec: ExportSpec, datamodule) -> tuple[tuple[torch.Tensor, ...], str]:
    """The first test batch as the graph's inputs when the DataModule can give one, else the spec's examples."""
    if datamodule is None or spec.inputs_from_batch is None:
        return tuple(spec.example_inputs), "example input"
    try:
        datamodule.setup("test")
        if hasattr(datamodule, "num_workers"):  # one batch: worker processes would only cost their start-up
            datamodule.num_workers = 0
        batch = next(iter(datamodule.test_dataloader()))
        inputs = tuple(x.float() for x in spec.inputs_from_batch(batch))
    except (UserError, OSError, StopIteration, AttributeError, KeyError) as err:
        print(f"export: no test batch from {type(datamodule).__name__} ({err}); verifying on a fixed random input",
              file=sys.stderr)
        return tuple(spec.example_inputs), "example input"
    n = len(spec.example_inputs[0])
    shapes_fit = all(tuple(a.shape[1:]) == tuple(b.shape[1:]) for a, b in zip(inputs, spec.example_inputs))
    if not shapes_fit or (not spec.dynamic_batch and len(inputs[0]) < n):
        got = [tuple(x.shape) for x in inputs]
        print(f"export: the test batch's shapes {got} do not fit the exported input "
              f"{[tuple(x.shape) for x in spec.example_inputs]}; verifying on a fixed random input", file=sys.stderr)
        return tuple(spec.example_inputs), "example input"
    if not spec.dynamic_batch:
        inputs = tuple(x[:n] for x in inputs)
    return inputs, "test batch"


def preprocess_document(spec: ExportSpec, fmt: str, model_path: Path) -> dict[str, Any]:
    """``preprocess.json``: the spec's preprocessing, the format, and the graph's inputs and outputs."""
    with torch.no_grad():
        outputs = spec.module.eval()(*spec.example_inputs)
    outputs = (outputs,) if isinstance(outputs, torch.Tensor) else tuple(outputs)
    batch = "N" if spec.dynamic_batch else None

    def shape(t: torch.Tensor) -> list:
        return [batch or int(t.shape[0]), *map(int, t.shape[1:])]

    meanings = spec.preprocess.get("outputs") if isinstance(spec.preprocess.get("outputs"), dict) else {}
    preprocess = {k: v for k, v in spec.preprocess.items() if k != "outputs"}
    return {**preprocess, "format": fmt, "model_file": model_path.name,
            "opset": onnx_opset(model_path) if fmt == "onnx" else None,
            "dynamic_batch": spec.dynamic_batch,
            "inputs": [{"name": n, "shape": shape(x), "dtype": str(x.dtype).removeprefix("torch.")}
                       for n, x in zip(spec.input_names, spec.example_inputs)],
            "outputs": [{"name": n, "shape": shape(y), "dtype": str(y.dtype).removeprefix("torch."),
                         **({"meaning": meanings[n]} if n in meanings else {})}
                        for n, y in zip(spec.output_names, outputs)],
            "tolerance": {"atol": spec.atol, "rtol": spec.rtol},
            **({"notes": spec.notes} if spec.notes else {})}


def _write_card(task, folder: Path, checkpoint_path: str | Path | None, config: Any) -> list[Path]:
    """The model card and ``model.safetensors`` (``tasks.model_card``), when that module is there."""
    try:
        from .model_card import write_card_and_weights
    except ImportError:
        print("export: tasks.model_card is not available; no model card or safetensors written", file=sys.stderr)
        return []
    return list(write_card_and_weights(task, folder, checkpoint_path=checkpoint_path, config=config))


def export_task(task, out_dir: str | Path, *, fmt: str = "onnx", dynamic_batch: bool = True,
                opset: int | None = None, overwrite: bool = False, inputs: tuple[torch.Tensor, ...] | None = None,
                checkpoint_path: str | Path | None = None, config: Any = None, datamodule: Any = None,
                allow_guessed_data: bool = False) -> ExportResult:
    """Export ``task``'s network to ``out_dir`` (``model.onnx`` or ``model.pt2``, ``preprocess.json``, card and
    safetensors) and verify it on ``inputs`` (default: the attached DataModule's first test batch, else the spec's
    example inputs). ``out_dir`` holding an export is refused unless ``overwrite``.

    The input size, resize rule and normalisation in ``preprocess.json`` come from the task's DataModule: the
    command attaches the config's; in a notebook pass ``datamodule=`` (the data the task was trained on). A task
    with neither is refused (``allow_guessed_data=True`` exports at the backbone's registered size with
    ImageNet statistics, which is right only for a network trained that way)."""
    if datamodule is not None:
        attach_datamodule(task, datamodule)
    elif attached_datamodule(task) is None and not allow_guessed_data:
        raise UserError(f"export_task: {type(task).__name__} has no DataModule attached, so the input size, resize "
                        f"rule and normalisation of preprocess.json would be guessed (the backbone's registered "
                        f"size, ImageNet statistics); pass datamodule= (the data it was trained on), or "
                        f"allow_guessed_data=True")
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    out_dir = Path(out_dir)
    if _holds_export(out_dir) and not overwrite:
        found = ", ".join(name for name in EXPORT_MARKERS if (out_dir / name).exists())
        raise ExportError(f"{out_dir} already holds an export ({found}); pass --overwrite to replace it, or choose "
                          f"another --output")
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"--output {out_dir} is a file, not a folder")
    task.eval()
    spec = task.export_spec(dynamic_batch=dynamic_batch)
    verified_on = "given input"
    if inputs is None:
        inputs, verified_on = _verification_inputs(task, spec, attached_datamodule(task))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model_path = export_spec_to(spec, staging, fmt=fmt, opset=opset)
        max_diff = verify_export(model_path, spec, tuple(inputs))
        preprocess_path = staging / "preprocess.json"
        document = preprocess_document(spec, fmt, model_path)
        document["verification"] = {"input": verified_on, "max_abs_diff": max_diff,
                                    "batch_sizes": [len(inputs[0])] + ([len(inputs[0]) + 1] if dynamic_batch else [])}
        preprocess_path.write_text(json.dumps(document, indent=2) + "\n")
        _write_card(task, staging, checkpoint_path, config)
        if out_dir.exists():  # overwrite: only now, when the new export is complete and verified
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out_dir, old)
            os.replace(staging, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    files = sorted(p for p in out_dir.rglob("*") if p.is_file())
    return ExportResult(out_dir / model_path.name, out_dir / "preprocess.json", max_diff, files, verified_on)


# ---- the command ---------------------------------------------------------------------------------------------------
def output_beside_run(checkpoint_path: Path, folder: str, fallback: str, task_name: str, leaf: str) -> Path:
    """``<run dir>/<folder>/<leaf>`` where the checkpoint lies in a run's ``checkpoints/`` folder, else
    ``<fallback>/<task>/<leaf>`` under the current directory (``export`` and ``explain`` outputs)."""
    parent = checkpoint_path.resolve().parent
    if parent.name == "checkpoints":
        return parent.parent / folder / leaf
    return Path(fallback) / task_name / leaf


def default_output(checkpoint_path: Path, task_name: str, fmt: str) -> Path:
    """``<run dir>/export/<format>``, else ``exports/<task>/<format>`` (``output_beside_run``)."""
    return output_beside_run(checkpoint_path, "export", "exports", task_name, fmt)


def parse_export_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Parse ``densecnn export`` arguments; the ``--model.*``/``--data.*`` overrides come back unparsed.

    Args:
        argv: the arguments after ``export``.
    """
    parser = argparse.ArgumentParser(
        prog="densecnn export", description="Export a checkpoint as ONNX or an ExportedProgram, verified against "
        "PyTorch. Other --key value arguments (--model.init_args.x, --data.init_args.y) override the config.")
    parser.add_argument("--config", "-c", action="append", required=True, help="the run's YAML config")
    parser.add_argument("--ckpt_path", "--ckpt-path", required=True, help="the checkpoint to export")
    parser.add_argument("--format", choices=FORMATS, default="onnx")
    parser.add_argument("--output", type=Path, default=None,
                        help="default: <run dir>/export/<format>, or exports/<task>/<format>")
    parser.add_argument("--dynamic-batch", action=argparse.BooleanOptionalAction, default=True,
                        help="let the batch size vary in the exported graph (default: on)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    parser.add_argument("--overwrite", action="store_true", help="replace an export already in --output")
    return parser.parse_known_args(list(argv))


def build_from_config(configs: Sequence[str], checkpoint_path: str, overrides: Sequence[str]):
    """The task and DataModule of ``configs`` + ``overrides`` with the checkpoint's weights, checked as ``test``
    checks a checkpoint (``tasks.cli``). Returns (task, datamodule, config)."""
    from jsonargparse import Namespace

    from .checkpoints import read_checkpoint
    from .cli import DenseCNNCLI, merge_checkpoint_model

    class ExportCLI(DenseCNNCLI):
        def before_instantiate_classes(self) -> None:
            checkpoint = self._checkpoint
            explicit_model = self._explicit_config().get("model")
            merged = merge_checkpoint_model(self.config.model, explicit_model, checkpoint, checkpoint_path)
            self.config = self.parser.parse_object({"model": merged}, self.config)

    checkpoint = read_checkpoint(checkpoint_path)
    ExportCLI._checkpoint = checkpoint
    args = [a for path in configs for a in ("--config", path)] + list(overrides)
    args += ["--trainer.logger", "false", "--trainer.enable_checkpointing", "false"]
    cli = ExportCLI(args=args, run=False, save_config_callback=None)
    task, datamodule = cli.model, cli.datamodule
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"{checkpoint_path}: holds no state_dict (not a Lightning checkpoint)")
    try:
        task.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"{checkpoint_path}: its weights do not fit {type(task).__name__} built from the "
                              f"config: {' '.join(str(err).split())[:500]}") from err
    cli.trainer.strategy.connect(task)
    task.trainer = cli.trainer
    cli.trainer._data_connector.attach_datamodule(task, datamodule=datamodule)  # task.normalisation() reads it
    # the resolved config as plain YAML-able values (the model card records it), without the config files' paths
    config = cli.config.as_dict() if isinstance(cli.config, Namespace) else dict(cli.config)
    config = json.loads(json.dumps({k: v for k, v in config.items() if k != "config"}, default=str))
    return task, datamodule, config


def reject_unknown_overrides(command: str, overrides: Sequence[str]) -> None:
    """``densecnn export``/``explain`` pass ``--model.*``, ``--data.*``, ``--trainer.*`` and ``--seed_everything``
    on to the config; any other option is a ``ConfigError`` naming it."""
    unknown = [a for a in overrides if a.startswith("-") and not a.startswith(("--model.", "--data.", "--trainer.",
                                                                                 "--seed_everything"))]
    if unknown:
        raise ConfigError(f"densecnn {command}: unknown argument(s) {', '.join(unknown)}; see densecnn {command} "
                          f"--help")


def main(argv: Sequence[str] | None = None) -> ExportResult:
    """``python -m densecnn export``: rebuild the task from config and checkpoint as ``test`` does, export it,
    verify the file against PyTorch and write the model card.

    Args:
        argv: the arguments (default: ``sys.argv[2:]``).

    Returns:
        What was written.
    """
    args, overrides = parse_export_args(sys.argv[2:] if argv is None else argv)
    reject_unknown_overrides("export", overrides)
    checkpoint_path = Path(args.ckpt_path)
    task, _, config = build_from_config(args.config, str(checkpoint_path), overrides)
    output = args.output or default_output(checkpoint_path, type(task).__name__, args.format)
    result = export_task(task, output, fmt=args.format, dynamic_batch=args.dynamic_batch, opset=args.opset,
                         overwrite=args.overwrite, checkpoint_path=checkpoint_path, config=config)
    print(f"exported {type(task).__name__} ({task.hparams.backbone}) from {checkpoint_path} to {output}:")
    for path in result.files:
        print(f"  {path}  ({path.stat().st_size:,} bytes)")
    print(f"verified against PyTorch on the {result.verified_on}: max abs difference {result.max_abs_diff:.3g}")
    return result


def run(argv: Sequence[str] | None = None) -> int:
    """``python -m densecnn export``: a user error prints one line and a hint and returns 2."""
    from .cli import run_command

    return run_command(main, argv)
