"""Export core: each task family's network as ONNX and ExportedProgram, run in onnxruntime / ``torch.export.load``
against eager PyTorch (the oracle), a second batch size through the dynamic graph, ``preprocess.json`` against the
task's own settings, depth in metres against the task's ``predict_step``, and the errors that name what is wrong."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from densecnn.errors import UserError
from densecnn.export import ExportError, ExportSpec, export_spec_to, verify_export
from densecnn.export.modules import Probabilities
from tasks import ClassificationTask, DensePredictionTask, VideoClassificationTask
from tasks.export import export_task

CLASSES = ["bars", "cross", "disk", "ring"]


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def classifier() -> ClassificationTask:
    torch.manual_seed(0)
    return ClassificationTask(backbone="lenet5", num_classes=4, class_names=CLASSES,
                              backbone_kwargs={"in_chans": 3}).eval()


@pytest.fixture(scope="module")
def classifier_onnx(classifier, tmp_path_factory):
    return export_task(classifier, tmp_path_factory.mktemp("cls") / "onnx", fmt="onnx", allow_guessed_data=True)


def test_classification_onnx_matches_pytorch_at_two_batch_sizes(classifier, classifier_onnx):
    assert classifier_onnx.model_path.name == "model.onnx" and classifier_onnx.max_abs_diff < 1e-5
    session = _session(classifier_onnx.model_path)
    assert [i.name for i in session.get_inputs()] == ["image"]
    images = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(3))  # not the export's batch of 2
    (probs,) = session.run(None, {"image": images.numpy()})
    with torch.no_grad():
        expected = classifier.backbone(images).softmax(dim=1)
    assert probs.shape == (5, 4)
    np.testing.assert_allclose(probs, expected.numpy(), atol=1e-5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)  # the softmax is in the graph


def test_classification_preprocess_json_states_the_task_settings(classifier, classifier_onnx):
    doc = json.loads(classifier_onnx.preprocess_path.read_text())
    mean, std = classifier.normalisation()
    assert doc["mean"] == list(mean) and doc["std"] == list(std)
    assert doc["class_names"] == CLASSES and doc["channel_order"] == "RGB" and doc["max_pixel_value"] == 255
    assert doc["input_size"] == [32, 32]  # lenet5's registered input, as no DataModule says otherwise
    assert doc["inputs"] == [{"name": "image", "shape": ["N", 3, 32, 32], "dtype": "float32"}]
    assert [(o["name"], o["shape"]) for o in doc["outputs"]] == [("probs", ["N", 4])]
    assert doc["format"] == "onnx" and doc["opset"] == 18 and doc["dynamic_batch"] is True
    assert doc["verification"]["max_abs_diff"] == classifier_onnx.max_abs_diff
    assert doc["verification"]["batch_sizes"] == [2, 3]


def test_classification_resize_rule_comes_from_the_eval_transform(classifier, tmp_path):
    from tasks.datamodules.image_folder import ImageFolderDataModule

    datamodule = ImageFolderDataModule(str(tmp_path), image_size=24, train_transforms="resnet",
                                       mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    task = ClassificationTask(backbone="lenet5", num_classes=4, class_names=CLASSES, backbone_kwargs={"in_chans": 3})
    trainer = pl.Trainer(logger=False, enable_checkpointing=False)
    task.trainer = trainer
    trainer._data_connector.attach_datamodule(task, datamodule=datamodule)
    spec = task.export_spec()
    # the ResNet evaluation preset at image_size 24: shorter side round(24 * 256 / 224) = 27, centre crop 24
    assert spec.preprocess["resize"] == [{"op": "resize_shorter_side", "size": 27, "interpolation": "bilinear"},
                                         {"op": "center_crop", "size": [24, 24]}]
    assert spec.preprocess["mean"] == [0.5, 0.4, 0.3] and spec.preprocess["std"] == [0.2, 0.25, 0.3]
    assert tuple(spec.example_inputs[0].shape) == (2, 3, 24, 24)


def test_classification_exported_program_round_trip(classifier, tmp_path):
    result = export_task(classifier, tmp_path / "ep", fmt="exported_program", allow_guessed_data=True)
    assert result.model_path.name == "model.pt2" and result.max_abs_diff == pytest.approx(0, abs=1e-6)
    program = torch.export.load(str(result.model_path)).module()
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(program(images), classifier.backbone(images).softmax(dim=1))


@pytest.fixture(scope="module")
def depth_task() -> DensePredictionTask:
    torch.manual_seed(0)
    return DensePredictionTask(backbone="lenet5", targets=["depth", "normals"], backbone_kwargs={"in_chans": 3},
                               coarse_pool=(1, 1), coarse_hidden=16, coarse_channels=4, coarse_size=(4, 4),
                               scale2_image_channels=4, scale2_widths=[4], scale3_image_channels=4,
                               scale3_widths=[4], input_maps=[]).eval()


def test_dense_onnx_outputs_depth_in_metres_and_unit_normals(depth_task, tmp_path):
    result = export_task(depth_task, tmp_path / "dense", fmt="onnx", allow_guessed_data=True)
    session = _session(result.model_path)
    assert [o.name for o in session.get_outputs()] == ["depth", "normals"]
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    depth, normals = session.run(None, {"image": images.numpy()})
    with torch.no_grad():
        expected = depth_task.predict_step({"image": images}, 0)  # the task's own prediction: metres
        log_depth = depth_task.resize_output("depth", depth_task.forward_scales(images)[-1]["depth"], (32, 32))
    assert depth.shape == (3, 32, 32) and normals.shape == (3, 3, 32, 32)
    np.testing.assert_allclose(depth, expected["depth"].numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(depth, log_depth[:, 0].exp().numpy(), rtol=1e-4, atol=1e-5)  # exp of the log head
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-4)
    doc = json.loads(result.preprocess_path.read_text())
    assert doc["units"] == {"depth": "metres", "normals": "unit vectors"} and doc["targets"] == ["depth", "normals"]
    assert [o["shape"] for o in doc["outputs"]] == [["N", 32, 32], ["N", 3, 32, 32]]


@pytest.mark.slow
def test_dense_input_maps_become_graph_inputs_in_metres(tmp_path):
    torch.manual_seed(0)
    task = DensePredictionTask(backbone="lenet5", targets=["normals"], input_maps=["depth"],
                               backbone_kwargs={"in_chans": 3}, coarse_pool=(1, 1), coarse_hidden=16,
                               coarse_channels=4, coarse_size=(4, 4), scale2_image_channels=4, scale2_widths=[4],
                               scale3_image_channels=4, scale3_widths=[4], input_map_channels=4).eval()
    result = export_task(task, tmp_path / "maps", fmt="exported_program", allow_guessed_data=True)
    program = torch.export.load(str(result.model_path)).module()
    images, depth = torch.randn(2, 3, 32, 32), torch.rand(2, 32, 32) * 5 + 0.5
    depth[0, :4] = 0  # missing depth
    with torch.no_grad():
        (normals,) = program(images, depth)
        expected = task.predict_step({"image": images, "depth": depth}, 0)["normals"]
    torch.testing.assert_close(normals, expected)
    doc = json.loads(result.preprocess_path.read_text())
    assert [i["name"] for i in doc["inputs"]] == ["image", "depth"]
    assert doc["input_maps"]["depth"].startswith("metres")


@pytest.fixture(scope="module")
def video_task() -> VideoClassificationTask:
    torch.manual_seed(0)
    return VideoClassificationTask(backbone="c3d", num_classes=3, clip_len=4, crop_size=16, class_names=["a", "b", "c"],
                                   backbone_kwargs={"width_mult": 0.125, "batch_norm": True, "dropout": 0.0}).eval()


def test_video_c3d_onnx_on_a_fixed_clip(video_task, tmp_path):
    result = export_task(video_task, tmp_path / "video", fmt="onnx", allow_guessed_data=True)
    session = _session(result.model_path)
    clips = torch.randn(3, 3, 4, 16, 16, generator=torch.Generator().manual_seed(7))
    (probs,) = session.run(None, {"video": clips.numpy()})
    with torch.no_grad():
        expected = video_task.predict_step({"video": clips}, 0)["probs"]  # one clip per video: its softmax
    np.testing.assert_allclose(probs, expected.numpy(), atol=1e-5)
    doc = json.loads(result.preprocess_path.read_text())
    assert doc["clip_len"] == 4 and doc["crop_size"] == 16 and doc["class_names"] == ["a", "b", "c"]
    assert doc["layout"] == "NCTHW" and doc["inputs"][0]["shape"] == ["N", 3, 4, 16, 16]


@pytest.mark.slow
def test_video_2d_backbone_per_frame_exports(tmp_path):
    torch.manual_seed(0)
    task = VideoClassificationTask(backbone="lenet5", num_classes=3, clip_len=3, crop_size=32,
                                   backbone_kwargs={"in_chans": 3}).eval()
    result = export_task(task, tmp_path / "frames", fmt="onnx", allow_guessed_data=True)
    clips = torch.randn(2, 3, 3, 32, 32)
    (probs,) = _session(result.model_path).run(None, {"video": clips.numpy()})
    with torch.no_grad():  # FrameAveraged: the 2D network on every frame, logits averaged over time, then softmax
        frames = clips.permute(0, 2, 1, 3, 4).flatten(0, 1)
        expected = task.backbone.model(frames).view(2, 3, -1).mean(dim=1).softmax(dim=1)
    np.testing.assert_allclose(probs, expected.numpy(), atol=1e-5)


@pytest.mark.slow
def test_fixed_batch_export_refuses_another_batch_size(classifier, tmp_path):
    result = export_task(classifier, tmp_path / "fixed", fmt="onnx", dynamic_batch=False, allow_guessed_data=True)
    session = _session(result.model_path)
    assert session.get_inputs()[0].shape == [2, 3, 32, 32]
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        session.run(None, {"image": np.zeros((3, 3, 32, 32), np.float32)})


class _Eig(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.eig(x)[0].real  # complex eigenvalues: the ONNX exporter has no translation


class _NetWithEig(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 3), _Eig())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_op_without_onnx_support_names_op_and_module(tmp_path):
    spec = ExportSpec(_NetWithEig().eval(), (torch.randn(2, 3, 3),), ["x"], ["eigenvalues"])
    with pytest.raises(ExportError, match=r"aten\.linalg_eig.*body\.1 \(_Eig\)"):
        export_spec_to(spec, tmp_path, fmt="onnx")
    # the ExportedProgram has every aten op: that format works for the same network
    path = export_spec_to(spec, tmp_path, fmt="exported_program")
    assert verify_export(path, spec) == pytest.approx(0, abs=1e-5)


def test_verification_names_the_output_that_differs(tmp_path):
    net = Probabilities(nn.Linear(4, 3), dim=1).eval()
    spec = ExportSpec(net, (torch.randn(2, 4),), ["x"], ["probs"])
    path = export_spec_to(spec, tmp_path, fmt="exported_program")
    with torch.no_grad():
        net.net.bias[0] += 0.5  # the eager module moves on: the file no longer matches it
    with pytest.raises(ExportError, match=r"output 'probs' differs from PyTorch by up to"):
        verify_export(path, spec)


def test_existing_export_is_not_overwritten(classifier, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"an earlier export")
    with pytest.raises(ExportError, match="already holds an export.*--overwrite"):
        export_task(classifier, out, fmt="onnx", allow_guessed_data=True)
    assert (out / "model.onnx").read_bytes() == b"an earlier export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no half-written folder beside it


def test_failed_export_leaves_nothing_behind(tmp_path):
    class Unexportable(ClassificationTask):
        def export_spec(self, *, dynamic_batch: bool = True):
            return ExportSpec(_NetWithEig().eval(), (torch.randn(2, 3, 3),), ["x"], ["y"], dynamic_batch=dynamic_batch)

    task = Unexportable(backbone="lenet5", num_classes=4, backbone_kwargs={"in_chans": 3})
    with pytest.raises(ExportError, match="linalg_eig"):
        export_task(task, tmp_path / "out", fmt="onnx", allow_guessed_data=True)
    assert list(tmp_path.iterdir()) == []


def test_task_without_export_support_says_so():
    from tasks.base import BaseTask

    class NoExport(ClassificationTask):
        export_spec = BaseTask.export_spec

    with pytest.raises(UserError, match="NoExport: export to ONNX / ExportedProgram is not supported"):
        NoExport(backbone="lenet5", num_classes=4, backbone_kwargs={"in_chans": 3}).export_spec()


def test_a_task_without_data_is_refused_and_datamodule_gives_the_trained_size(tmp_path):
    """A notebook's reloaded task has no DataModule: its input size and normalisation would be guessed (the
    backbone's registered size, ImageNet statistics), so export refuses; ``datamodule=`` gives the data's."""
    from densecnn.errors import UserError
    from tasks import ImageFolderDataModule

    task = ClassificationTask(backbone="cifar_resnet20", num_classes=6).eval()
    with pytest.raises(UserError, match="no DataModule attached"):
        export_task(task, tmp_path / "refused", fmt="onnx")
    assert not (tmp_path / "refused").exists()
    data = ImageFolderDataModule(str(tmp_path / "shapes"), synthetic=True, image_size=28, mean=(0.5, 0.5, 0.5),
                                 std=(0.25, 0.25, 0.25), batch_size=4)
    data.prepare_data()
    data.setup("test")
    result = export_task(task, tmp_path / "out", fmt="onnx", datamodule=data)
    doc = json.loads(result.preprocess_path.read_text())
    assert doc["inputs"][0]["shape"][2:] == [28, 28] and doc["mean"] == [0.5, 0.5, 0.5] and doc["std"] == [0.25] * 3
