"""The README's ONNX Runtime scripts (docs/examples/onnx_classify.py, onnx_depth.py) against the task's own
predictions: the class they print and the depth PNG they write."""
from __future__ import annotations

import json
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from densecnn.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_pipeline
from densecnn.export import ExportSpec, export_spec_to
from densecnn.export.modules import DenseOutputs, Probabilities
from densecnn.export.preprocess import describe_pipeline, normalisation_entry
from tasks import ClassificationTask, DensePredictionTask

pytest.importorskip("onnxruntime")
EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
CLASSES = ["apple", "bus", "cloud", "dune"]
SMALL_HEAD = dict(coarse_pool=[2, 3], coarse_hidden=16, coarse_channels=4, coarse_size=[3, 4],
                  scale2_image_channels=8, scale2_widths=[8], scale3_image_channels=8, scale3_widths=[8])


def _photo(path: Path, height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth, non-square RGB picture (JPEG would change the pixels the task sees: PNG keeps them)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    rgb = np.stack([np.sin(6 * xx + rng.uniform(0, 3)), np.cos(5 * yy + rng.uniform(0, 3)), xx * yy], -1)
    rgb = ((rgb - rgb.min()) / np.ptp(rgb) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(path)
    return rgb


def _write_preprocess(out_dir: Path, pipeline: list, input_size, class_names, **extra) -> None:
    entry = {"input_size": list(input_size), **normalisation_entry(IMAGENET_MEAN, IMAGENET_STD),
             "resize": pipeline, "model_file": "model.onnx", "class_names": class_names, **extra}
    (out_dir / "preprocess.json").write_text(json.dumps(entry))


def _eval_pipeline():
    """An ImageNet-style evaluation pipeline at a small size: shorter side 36, centre 32x32."""
    return build_pipeline([{"name": "SmallestMaxSize", "max_size": 36},
                           {"name": "CenterCrop", "height": 32, "width": 32}], image_size=32, train=False)


def _depth_task():
    torch.manual_seed(0)
    return DensePredictionTask(backbone="cifar_resnet20", targets=["depth"], **SMALL_HEAD).eval()


def _classifier_export(out_dir: Path):
    """A classifier (softmax in the graph) exported with its evaluation pipeline in preprocess.json."""
    torch.manual_seed(0)
    task = ClassificationTask(backbone="cifar_resnet20", num_classes=len(CLASSES), class_names=CLASSES).eval()
    transform = _eval_pipeline()
    spec = ExportSpec(Probabilities(task.backbone), (torch.randn(2, 3, 32, 32),), ["image"], ["probs"])
    export_spec_to(spec, out_dir, fmt="onnx")
    _write_preprocess(out_dir, describe_pipeline(transform.transforms), (32, 32), CLASSES)
    return task, transform


def _depth_export(out_dir: Path, size=(24, 32)):
    task = _depth_task()
    # a fixed batch of one: the dense network's coarse scale fixes the batch size in torch.export's graph
    spec = ExportSpec(DenseOutputs(task, ["depth"]), (torch.randn(1, 3, *size),), ["image"], ["depth"],
                      dynamic_batch=False)
    export_spec_to(spec, out_dir, fmt="onnx")
    _write_preprocess(out_dir, [{"op": "resize", "size": list(size), "interpolation": "bilinear"}], size, [],
                      units={"depth": "metres"})
    return task


def _scores_with_margin(task, transform, rgb: np.ndarray) -> tuple[str, float]:
    """The task's own prediction, and how far the best class is ahead of the second (so that float noise between
    ONNX Runtime and PyTorch cannot flip it)."""
    prediction = task.predict_image(rgb, transform=transform)
    top2 = prediction["probs"].topk(2).values
    return prediction["label_name"], float(top2[0] - top2[1])


class TorchSession:
    """Stands in for ``onnxruntime.InferenceSession`` in the fast tests: runs the same PyTorch module on what the
    script prepared (the ONNX graph itself is checked against PyTorch by the export's verification and by the
    slow test below); it checks the script's preprocessing, output choice and what it prints or writes."""

    module: torch.nn.Module
    output_names: list[str]

    def __init__(self, path, *args, **kwargs):
        assert Path(path).name == "model.onnx"

    def get_inputs(self):
        return [type("Input", (), {"name": "image"})]

    def get_outputs(self):
        return [type("Output", (), {"name": n}) for n in self.output_names]

    def run(self, names, feeds):
        with torch.no_grad():
            out = self.module(torch.from_numpy(feeds["image"]))
        return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


def _run_script(name: str, monkeypatch, module, output_names, *args) -> None:
    fake = type("FakeOrt", (), {"InferenceSession": type("S", (TorchSession,), {"module": module,
                                                                               "output_names": output_names})})
    monkeypatch.setitem(sys.modules, "onnxruntime", fake)
    monkeypatch.setattr(sys, "argv", [name, *map(str, args)])
    runpy.run_path(str(EXAMPLES / name), run_name="__main__")


def test_classify_script_prints_the_tasks_class(tmp_path, monkeypatch, capsys):
    torch.manual_seed(0)
    task = ClassificationTask(backbone="cifar_resnet20", num_classes=len(CLASSES), class_names=CLASSES).eval()
    transform = _eval_pipeline()
    _write_preprocess(tmp_path, describe_pipeline(transform.transforms), (32, 32), CLASSES)
    # non-square, landscape and portrait; the first needs no resize (its shorter side is 36), so the pixels match
    # albumentations' exactly; the second is resized, where pillow's bilinear filter (antialiased when shrinking)
    # and OpenCV's differ slightly: the same class, probabilities within 0.01
    for seed, (h, w, tolerance) in enumerate([(36, 50, 1e-4), (60, 40, 1e-2)]):
        rgb = _photo(tmp_path / "photo.png", h, w, seed=seed)
        expected = task.predict_image(rgb, transform=transform)
        _run_script("onnx_classify.py", monkeypatch, Probabilities(task.backbone), ["probs"], tmp_path,
                    tmp_path / "photo.png")
        name, prob = capsys.readouterr().out.strip().split("\t")
        assert name == expected["label_name"]
        assert float(prob) == pytest.approx(float(expected["probs"].max()), abs=tolerance)


def test_depth_script_writes_the_tasks_depth_in_millimetres(tmp_path, monkeypatch):
    dense = _depth_task()
    _write_preprocess(tmp_path, [{"op": "resize", "size": [24, 32], "interpolation": "bilinear"}], (24, 32), [])
    rgb = _photo(tmp_path / "room.png", 24, 32, seed=2)
    _run_script("onnx_depth.py", monkeypatch, DenseOutputs(dense, ["depth"]), ["depth"], tmp_path,
                tmp_path / "room.png", tmp_path / "depth.png")
    written = np.asarray(Image.open(tmp_path / "depth.png"))
    expected_mm = np.round(dense.predict_image(rgb)["depth"].astype(np.float64) * 1000)
    assert written.dtype == np.uint16 and written.max() > 0
    assert np.abs(written.astype(np.int64) - expected_mm.astype(np.int64)).max() <= 1


@pytest.mark.slow
def test_both_scripts_as_processes_match_the_task(tmp_path):
    classify_dir, depth_dir = tmp_path / "classify", tmp_path / "depth"
    task, transform = _classifier_export(classify_dir)
    rgb = _photo(tmp_path / "photo.png", 36, 44, seed=1)
    label, _ = _scores_with_margin(task, transform, rgb)
    run = subprocess.run([sys.executable, str(EXAMPLES / "onnx_classify.py"), str(classify_dir),
                          str(tmp_path / "photo.png")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\t")[0] == label

    dense = _depth_export(depth_dir)
    rgb = _photo(tmp_path / "room.png", 24, 32, seed=2)  # at the network's input size: the resize is the identity
    expected_m = dense.predict_image(rgb)["depth"]
    run = subprocess.run([sys.executable, str(EXAMPLES / "onnx_depth.py"), str(depth_dir), str(tmp_path / "room.png"),
                          str(tmp_path / "depth.png")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    written = np.asarray(Image.open(tmp_path / "depth.png"))
    assert written.dtype == np.uint16 and written.shape == expected_m.shape
    # millimetres, rounded: at most 1 mm apart (ONNX Runtime vs PyTorch float noise may cross a rounding edge)
    assert np.abs(written.astype(np.int64) - np.round(expected_m * 1000).astype(np.int64)).max() <= 1
    assert written.max() > 0
