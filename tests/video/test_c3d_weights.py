"""C3D: the public Sports-1M PyTorch port's state_dict (DavideA/c3d-pytorch ``c3d.pickle``) loads into ours, and
the configured normalisation is the one the Caffe weights expect."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from densecnn import WeightsError, create_backbone
from densecnn.backbones.c3d import C3D_SPORTS1M_MEAN, C3D_SPORTS1M_STD, PORT_CONV_NAMES
from tasks.datamodules.video import video_pipeline

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "video"

# The port's layers and their exact shapes (C3D_model.py of DavideA/c3d-pytorch): (out, in) per layer.
PORT_LAYERS = {"conv1": (64, 3), "conv2": (128, 64), "conv3a": (256, 128), "conv3b": (256, 256),
               "conv4a": (512, 256), "conv4b": (512, 512), "conv5a": (512, 512), "conv5b": (512, 512),
               "fc6": (4096, 8192), "fc7": (4096, 4096), "fc8": (487, 4096)}


def port_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors in the port's key layout and shapes, scaled so activations keep a sensible size."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, (out, inp) in PORT_LAYERS.items():
        shape = (out, inp) if name.startswith("fc") else (out, inp, 3, 3, 3)
        fan_in = inp * (1 if name.startswith("fc") else 27)
        state[f"{name}.weight"] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
        state[f"{name}.bias"] = torch.randn(out, generator=g) * 0.01
    return state


def port_forward(state: dict[str, torch.Tensor], bgr: torch.Tensor) -> torch.Tensor:
    """The port's forward pass (C3D_model.py) written out: oracle for our logits. Input: BGR clips, as Caffe."""
    h = bgr
    for name in PORT_LAYERS:
        if not name.startswith("conv"):
            break
        h = F.relu(F.conv3d(h, state[f"{name}.weight"], state[f"{name}.bias"], padding=1))
        if name in ("conv1", "conv2", "conv3b", "conv4b", "conv5b"):
            kernel = (1, 2, 2) if name == "conv1" else (2, 2, 2)
            h = F.max_pool3d(h, kernel, kernel, padding=(0, 1, 1) if name == "conv5b" else 0)
    h = h.view(-1, 8192)
    h = F.relu(F.linear(h, state["fc6.weight"], state["fc6.bias"]))
    h = F.relu(F.linear(h, state["fc7.weight"], state["fc7.bias"]))
    return F.linear(h, state["fc8.weight"], state["fc8.bias"])


@pytest.fixture(scope="module")
def port_file(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    state = port_state_dict()
    path = tmp_path_factory.mktemp("c3d") / "c3d.pickle"
    torch.save(state, path)
    return path, state


def test_port_weights_load_and_logits_equal_the_ports_forward(port_file):
    path, state = port_file
    model = create_backbone("c3d", weights=str(path), pool5="port").eval()  # 487 classes: fc8 loads too
    own = model.state_dict()
    for name, (out, _) in PORT_LAYERS.items():
        ours = PORT_CONV_NAMES.get(name, name)
        expected = state[f"{name}.weight"].flip(1) if name == "conv1" else state[f"{name}.weight"]  # BGR -> RGB
        torch.testing.assert_close(own[f"{ours}.weight"], expected, rtol=0, atol=0, msg=name)
        torch.testing.assert_close(own[f"{ours}.bias"], state[f"{name}.bias"], rtol=0, atol=0, msg=name)
    assert model.pool5_shape == (512, 1, 4, 4)  # fc6's 8192 inputs at 16x112x112

    rgb = torch.rand(1, 3, 16, 112, 112, generator=torch.Generator().manual_seed(1)) * 255 - 100
    with torch.no_grad():
        ours = model(rgb)
        oracle = port_forward(state, rgb.flip(1))  # the port is fed BGR
    assert ours.shape == (1, 487)
    scale = float(oracle.abs().max())  # float32 sums of 8192-long dot products in another order: relative to it
    torch.testing.assert_close(ours, oracle, rtol=0, atol=1e-5 * scale)
    model.stage5.pool5 = torch.nn.MaxPool3d(2, 2, ceil_mode=True)  # Caffe's pool5 windows: not the port's numbers
    with torch.no_grad():
        assert float((model(rgb) - oracle).abs().max()) > 1e-2 * scale


def test_fc8_is_dropped_with_a_warning_into_101_classes_and_ignored_by_a_feature_extractor(port_file):
    path, state = port_file
    with pytest.warns(UserWarning, match=r"c3d.pickle: classifier weights fc8.weight, fc8.bias were trained for "
                                         r"another number of classes"):
        model = create_backbone("c3d", num_classes=101, weights=str(path))
    torch.testing.assert_close(model.fc7.weight, state["fc7.weight"], rtol=0, atol=0)
    assert model.fc8.weight.shape == (101, 4096)
    extractor = create_backbone("c3d", num_classes=0, weights=str(path))  # strict: no fc8, no complaint
    torch.testing.assert_close(extractor.stage5.conv5b.weight, state["conv5b.weight"], rtol=0, atol=0)


def test_clips_whose_fc6_does_not_fit_the_port_are_an_error_naming_the_file(port_file):
    path, _ = port_file
    with pytest.raises(WeightsError, match=r"c3d.pickle: shapes do not match this C3D: fc6.weight: file "
                                           r"\(4096, 8192\) vs model \(4096, 4608\).*3x16x112x112 clips"):
        create_backbone("c3d", weights=str(path), input_size=(3, 16, 96, 96))


def test_the_configured_normalisation_is_the_caffe_mean_without_std_scaling():
    # Caffe: a BGR pixel in 0-255 minus the Sports-1M mean (90.25, 97.66, 101.41) BGR, no scaling.
    config = yaml.safe_load((CONFIGS / "ucf101_c3d_features.yaml").read_text())["data"]["init_args"]
    np.testing.assert_allclose(config["mean"], C3D_SPORTS1M_MEAN, rtol=0, atol=1e-8)
    np.testing.assert_allclose(config["std"], C3D_SPORTS1M_STD, rtol=0, atol=1e-8)
    pipeline = video_pipeline("none", crop_size=4, train=False, mean=config["mean"], std=config["std"], where="test")
    rgb = np.full((2, 4, 4, 3), (200, 120, 40), dtype=np.uint8)
    out = pipeline(images=rgb)["images"]
    out = np.stack([np.asarray(frame) for frame in out])  # (T, C, H, W) tensors or (T, H, W, C) arrays
    values = out[0, :, 0, 0] if out.shape[1] == 3 else out[0, 0, 0, :]
    caffe_bgr = np.array([40, 120, 200]) - np.array([90.25, 97.66, 101.41])
    np.testing.assert_allclose(values, caffe_bgr[::-1], rtol=0, atol=1e-3)
