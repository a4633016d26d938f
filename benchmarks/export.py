"""Inference latency of PyTorch eager against ONNX Runtime for the same exported networks, measured alternately
in one process on the CPU (so both see the same machine load), with the same number of threads.

    python benchmarks/export.py                      # resnet18 classifier at 224 (batch 1, 8), dense at 228x304
    python benchmarks/export.py --threads 4 --repeats 30 --dense-backbone vgg16

Models: a ``ClassificationTask`` network with its softmax (what ``densecnn export`` writes for classification, the
batch dynamic) and Eigen & Fergus's three-scale depth network (``DensePredictionTask``, depth in metres) at the
NYU crop 304x228 (its coarse scale fixes the batch in the graph, so one export per batch size). Each is exported
with ``densecnn.export.export_spec_to`` (``torch.onnx.export(..., dynamo=True)``) and checked against eager first.
Prints each case's fastest and median latency in ms and ``ratio = eager / onnxruntime`` of the fastest (the
least disturbed by other work; timeit's advice): above 1, ONNX Runtime is faster.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from densecnn.export import ExportSpec, export_spec_to
from densecnn.export.modules import DenseOutputs, Probabilities


def timings(fn, repeats: int) -> list[float]:
    fn()  # warm-up (allocations, ONNX Runtime's first-run graph setup)
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


def export(module: torch.nn.Module, x: torch.Tensor, folder: Path, dynamic_batch: bool) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return export_spec_to(ExportSpec(module.eval(), (x,), ["image"], ["out"], dynamic_batch=dynamic_batch),
                              folder, fmt="onnx")


def compare(name: str, module: torch.nn.Module, x: torch.Tensor, path: Path, repeats: int, threads: int) -> None:
    import onnxruntime as ort

    module.eval()
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.numpy()}
    with torch.inference_mode():
        eager_out = module(x)
        eager_out = eager_out[0] if isinstance(eager_out, tuple) else eager_out
        diff = float(np.abs(session.run(None, feed)[0] - eager_out.numpy()).max())
        eager, onnx = [], []
        for _ in range(2):  # alternate halves, so a burst of load on the machine hits both
            eager += timings(lambda: module(x), repeats // 2)
            onnx += timings(lambda: session.run(None, feed), repeats // 2)
    ratio = min(eager) / min(onnx)
    print(f"{name:<34} eager {min(eager):8.2f} ms (median {statistics.median(eager):8.2f})   onnxruntime "
          f"{min(onnx):8.2f} ms (median {statistics.median(onnx):8.2f})   ratio {ratio:5.2f}   max |diff| {diff:.1e}",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--dense-backbone", default="resnet18")
    parser.add_argument("--dense-size", type=int, nargs=2, default=[228, 304], metavar=("H", "W"))
    parser.add_argument("--dense-batch-sizes", type=int, nargs="+", default=[1])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()

    from tasks import ClassificationTask, DensePredictionTask

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, {args.repeats} runs each; ratio = eager / onnxruntime")
    with tempfile.TemporaryDirectory() as tmp:
        classifier = Probabilities(ClassificationTask(backbone=args.backbone, num_classes=1000).backbone)
        # one dynamic-batch export serves every batch size, as densecnn export writes it
        path = export(classifier, torch.randn(2, 3, args.image_size, args.image_size), Path(tmp) / "classifier", True)
        for batch in args.batch_sizes:
            compare(f"{args.backbone} {args.image_size}px batch {batch}", classifier,
                    torch.randn(batch, 3, args.image_size, args.image_size), path, args.repeats, args.threads)
        dense = DenseOutputs(DensePredictionTask(backbone=args.dense_backbone, targets=["depth"]), ["depth"])
        for batch in args.dense_batch_sizes:
            x = torch.randn(batch, 3, *args.dense_size)
            path = export(dense, x, Path(tmp) / f"dense{batch}", False)
            compare(f"dense depth {args.dense_backbone} {args.dense_size[1]}x{args.dense_size[0]} batch {batch}",
                    dense, x, path, args.repeats, args.threads)


if __name__ == "__main__":
    main()
