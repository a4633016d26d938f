"""What a backbone computes: each layer's output shape, parameters and multiply-adds, then totals.

    python -m densecnn summary resnet50 [--input-size 3x224x224] [--num-classes 1000]
    python -m densecnn summary --table        # the README's table of every registered backbone

Multiply-adds are counted by ``torch.utils.flop_counter.FlopCounterMode`` (convolutions, matrix products,
attention), never by hand-written formulas: a multiply-add is 2 FLOPs, so mult-adds = FLOPs / 2. This is
the convention the papers' "FLOPs" columns use (ResNet-50: 3.8 x 10^9). Element-wise work (ReLU, BN,
pooling, LRN) is not counted, as in the papers.

Rows are the leaf modules in call order (a module called twice gives two rows; its parameters are counted
on the first). The input is one image at ``input_size`` (the backbone's paper size by default), in eval mode.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass
class LayerRow:
    """One row of ``python -m densecnn summary``: a layer's name, type, output shape, parameters and
    multiply-adds.
    """
    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    mult_adds: int


@dataclass
class ModelSummary:
    """A backbone's summary at one input size: per-layer rows and the totals (parameters, trainable parameters,
    multiply-adds counted with ``torch.utils.flop_counter``, FLOPs / 2).
    """
    name: str
    input_size: tuple[int, ...]
    rows: list[LayerRow] = field(default_factory=list)
    params: int = 0
    trainable_params: int = 0
    mult_adds: int = 0

    def format(self) -> str:
        head = f"{'layer':<40} {'type':<20} {'output shape':<22} {'params':>12} {'mult-adds':>16}"
        lines = [f"{self.name}  input {'x'.join(map(str, self.input_size))}", head, "-" * len(head)]
        for r in self.rows:
            shape = "x".join(map(str, r.output_shape[1:])) if r.output_shape else "-"
            lines.append(f"{r.name[:40]:<40} {r.kind[:20]:<20} {shape:<22} {r.params:>12,} {r.mult_adds:>16,}")
        lines += ["-" * len(head),
                  f"total parameters:     {self.params:>16,} ({self.params / 1e6:.2f} M)",
                  f"trainable parameters: {self.trainable_params:>16,}",
                  f"multiply-adds:        {self.mult_adds:>16,} ({format_count(self.mult_adds)})"]
        return "\n".join(lines)


def format_count(n: float) -> str:
    """A count with a G/M/K suffix and two decimals (as the backbone table prints it).

    Args:
        n: the count.
    """
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(int(n))


def parse_input_size(text: str) -> tuple[int, ...]:
    """``"3x224x224"`` -> ``(3, 224, 224)``; ``"3x16x112x112"`` for video backbones."""
    try:
        size = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--input-size {text!r}: expected dimensions joined by 'x', e.g. 3x224x224") from None
    if len(size) not in (3, 4) or min(size) < 1:
        raise ValueError(f"--input-size {text!r}: expected CxHxW or CxTxHxW with positive sizes")
    return size


def _input_size_arg(text: str) -> tuple[int, ...]:
    try:
        return parse_input_size(text)
    except ValueError as err:  # argparse shows an ArgumentTypeError's own message
        raise argparse.ArgumentTypeError(str(err)) from None


def _first_shape(output) -> tuple[int, ...]:
    if isinstance(output, torch.Tensor):
        return tuple(output.shape)
    if isinstance(output, (tuple, list)) and output:
        return _first_shape(output[0])
    return ()


def summarize(model: nn.Module | str, input_size: tuple[int, ...] | None = None, *, device: str = "meta",
              **kwargs) -> ModelSummary:
    """Summarise ``model`` (a module, or a registered name built with ``**kwargs``) on one input.

    A name is built on ``device``: ``"meta"`` (the default) allocates no memory and computes nothing but
    shapes, which is all the counts need; a model that cannot be built there is built on the CPU.
    """
    name = model if isinstance(model, str) else type(model).__name__
    if isinstance(model, str):
        from .backbones import create_backbone, get_entry

        input_size = input_size or get_entry(model).input_size
        try:
            with torch.device(device):
                model = create_backbone(model, **kwargs)
        except (RuntimeError, NotImplementedError):
            if device == "cpu":
                raise
            model = create_backbone(model, **kwargs)
    if input_size is None:
        raise ValueError("summarize needs input_size for a module")
    summary = ModelSummary(name, tuple(input_size))
    summary.params = sum(p.numel() for p in model.parameters())
    summary.trainable_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    counter = FlopCounterMode(display=False)
    seen: set[int] = set()
    starts: dict[int, list[int]] = {}

    def flops_so_far() -> int:
        return sum(counter.flop_counts["Global"].values())

    def before(module, args):
        starts.setdefault(id(module), []).append(flops_so_far())

    def after(module_name):
        def hook(module, args, output):
            flops = flops_so_far() - starts[id(module)].pop()
            params = 0 if id(module) in seen else sum(p.numel() for p in module.parameters(recurse=False))
            seen.add(id(module))
            summary.rows.append(LayerRow(module_name, type(module).__name__, _first_shape(output), params,
                                         flops // 2))
        return hook

    handles = []
    for module_name, module in model.named_modules():
        if module_name and not any(True for _ in module.children()):
            handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after(module_name))]
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device if any(True for _ in model.parameters()) else "cpu"
        with torch.no_grad(), counter:
            model(torch.randn(1, *input_size, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    summary.mult_adds = counter.get_total_flops() // 2
    return summary


def backbone_table(names: list[str] | None = None) -> str:
    """A Markdown table: name, parameters, multiply-adds at the paper's input size, paper reference."""
    from .backbones import get_entry, list_backbones

    lines = ["| backbone | input | params | mult-adds | paper |", "|---|---|---:|---:|---|"]
    for name in names or list_backbones():
        entry = get_entry(name)
        s = summarize(name)
        lines.append(f"| `{name}` | {'x'.join(map(str, entry.input_size))} | {s.params / 1e6:.2f} M "
                     f"| {format_count(s.mult_adds)} | {entry.paper} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m densecnn summary``: one backbone's layer table, or ``--table`` for every registered backbone.

    Args:
        argv: the arguments after ``summary``.

    Returns:
        The process exit code.
    """
    parser = argparse.ArgumentParser(prog="python -m densecnn summary",
                                     description="Per-layer output shapes, parameters and multiply-adds of a backbone.")
    parser.add_argument("backbone", nargs="?", help="a registered name (densecnn.list_backbones()) or timm:<name>")
    parser.add_argument("--input-size", type=_input_size_arg, default=None,
                        help="CxHxW (or CxTxHxW for video); default: the paper's input size")
    parser.add_argument("--num-classes", type=int, default=None, help="classifier width (default: the paper's)")
    parser.add_argument("--table", action="store_true", help="print the Markdown table of all registered backbones")
    args = parser.parse_args(argv)
    if args.table:
        print(backbone_table())
        return 0
    if not args.backbone:
        parser.error("name a backbone (or pass --table)")
    kwargs = {} if args.num_classes is None else {"num_classes": args.num_classes}
    try:
        print(summarize(args.backbone, args.input_size, **kwargs).format())
    except ValueError as err:
        parser.exit(2, f"error: {err}\n")
    return 0
