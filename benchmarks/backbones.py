"""Forward + backward time of densecnn's ResNet-50, VGG-16 and GoogLeNet against torchvision's, with
identical weights, measured alternately in one process (so both see the same machine load).

    python benchmarks/backbones.py                         # CPU-sized defaults: batch 2 at 128x128
    python benchmarks/backbones.py --batch-size 64 --image-size 224 --channels-last --device cuda

Prints each pair's fastest and median step time and ``ratio = torchvision / densecnn`` of the fastest
(the least disturbed by other work on the machine; timeit's advice): 1.0 is parity, above 1 ours is
faster; the target is ratio >= 0.98. Training mode (batch norm statistics, dropout, GoogLeNet's two
auxiliary classifiers in both models), loss = mean of every output.

First it prints what computing only the maps used saves (``feature_maps`` / ``forward_features(x, max_index)``)
in Faster R-CNN's C4 layout (``box_head: last_stage``: the RPN reads map -2, conv4_x for ResNets, over the
whole image; the last stage runs only on the pooled RoIs): multiply-adds of ``forward_features`` over all maps
and up to map -2 on one ``--detection-size`` image (default 600x1000, Faster R-CNN's shorter side 600),
counted by ``torch.utils.flop_counter.FlopCounterMode`` on the meta device (no memory, no time).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from densecnn import create_backbone

PAIRS = {  # densecnn name -> torchvision builder (+ kwargs)
    "resnet50": ("resnet50", {}),
    "vgg16": ("vgg16", {}),
    "googlenet_torchvision": ("googlenet", {"aux_logits": True, "init_weights": True}),
}


def outputs_of(result) -> list[torch.Tensor]:
    if isinstance(result, torch.Tensor):
        return [result]
    return [t for t in result if isinstance(t, torch.Tensor)]


def step(model: nn.Module, x: torch.Tensor) -> None:
    # ours gives its auxiliary classifiers' outputs through forward_with_aux (forward returns the logits alone)
    forward_with_aux = getattr(model, "forward_with_aux", None)
    outputs = [o for part in forward_with_aux(x) for o in outputs_of(part)] if forward_with_aux else outputs_of(model(x))
    loss = sum(o.float().mean() for o in outputs)
    loss.backward()
    model.zero_grad(set_to_none=True)


def timed(model: nn.Module, x: torch.Tensor, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    step(model, x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def compare(name: str, args, device: torch.device) -> dict[str, list[float]]:
    tv_name, tv_kwargs = PAIRS[name]
    torch.manual_seed(0)
    reference = getattr(torchvision.models, tv_name)(**tv_kwargs)
    ours = create_backbone(name)
    ours.load_state_dict(reference.state_dict())  # identical weights (key for key)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    models = {"torchvision": reference, "densecnn": ours}
    for model in models.values():
        model.to(device=device, memory_format=memory_format).train()
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    x = x.contiguous(memory_format=memory_format)
    for _ in range(args.warmup):
        for model in models.values():
            step(model, x)
    times: dict[str, list[float]] = {key: [] for key in models}
    for i in range(args.repeats):
        order = list(models) if i % 2 == 0 else list(reversed(models))  # alternate who goes first
        for key in order:
            times[key].append(timed(models[key], x, device))
    return times


def feature_macs(name: str, height: int, width: int, max_index: int | None) -> float:
    """Multiply-adds (convolutions and matrix products; FlopCounterMode counts 2 FLOPs per MAC) of
    ``forward_features`` up to map ``max_index`` of one image, counted on the meta device."""
    with torch.device("meta"):
        model = create_backbone(name, num_classes=0).eval()
        x = torch.empty(1, 3, height, width)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.forward_features(x, max_index)
    return counter.get_total_flops() / 2


def print_c4_savings(names: list[str], height: int, width: int) -> None:
    print(f"C4 layout at {height}x{width}: forward_features MACs, every map vs up to map -2 (what the RPN reads)")
    print(f"{'model':<24} {'all maps GMAC':>14} {'up to -2 GMAC':>14} {'saved':>8} {'ratio all/-2':>13}")
    for name in names:
        full, bounded = (feature_macs(name, height, width, i) / 1e9 for i in (None, -2))
        print(f"{name:<24} {full:>14.2f} {bounded:>14.2f} {1 - bounded / full:>7.1%} {full / bounded:>13.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--channels-last", action="store_true", help="NHWC activations and weights")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on the CPU")
    parser.add_argument("--detection-size", type=int, nargs=2, default=(600, 1000), metavar=("H", "W"),
                        help="image for the C4-layout multiply-add count")
    parser.add_argument("--macs-only", action="store_true", help="print the multiply-add counts and stop")
    args = parser.parse_args(argv)
    print_c4_savings(args.models, *args.detection_size)
    if args.macs_only:
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    print(f"device={device} batch={args.batch_size} image={args.image_size} channels_last={args.channels_last} "
          f"repeats={args.repeats} threads={torch.get_num_threads()}")
    print(f"{'model':<24} {'torchvision s/step':>20} {'densecnn s/step':>20} {'ratio tv/ours':>14}")
    print(f"{'':<24} {'min / median':>20} {'min / median':>20} {'min (median)':>14}")
    worst = float("inf")
    for name in args.models:
        times = compare(name, args, device)
        tv, ours = min(times["torchvision"]), min(times["densecnn"])
        tv_med, ours_med = statistics.median(times["torchvision"]), statistics.median(times["densecnn"])
        worst = min(worst, tv / ours)
        print(f"{name:<24} {tv:>9.4f} / {tv_med:<8.4f} {ours:>9.4f} / {ours_med:<8.4f} "
              f"{tv / ours:>6.3f} ({tv_med / ours_med:.3f})", flush=True)
    print(f"worst ratio {worst:.3f} ({'meets' if worst >= 0.98 else 'below'} the 0.98 target)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
