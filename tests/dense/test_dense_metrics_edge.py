"""Dense metrics at the edges: an epoch with no valid pixel is -1 (undefined, as detection), never NaN; the one
ignore label."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from densecnn.constants import IGNORE_LABEL
from densecnn.metrics import (
    DEPTH_KEYS,
    NORMAL_KEYS,
    SEMANTIC_KEYS,
    DepthMetrics,
    NormalMetrics,
    SemanticMetrics,
)
from densecnn.metrics.detection import UNDEFINED
from tasks import DensePredictionTask

SMALL_HEAD = dict(coarse_pool=[2, 3], coarse_hidden=16, coarse_channels=4, coarse_size=[3, 4],
                  scale2_image_channels=8, scale2_widths=[8], scale3_image_channels=8, scale3_widths=[8])


def test_an_epoch_without_valid_pixels_is_undefined_not_nan():
    depth = DepthMetrics(max_depth=10.0)
    depth.update(torch.rand(2, 4, 5) + 1, torch.zeros(2, 4, 5))  # 0 = missing depth everywhere
    depth.update(torch.rand(1, 4, 5) + 1, torch.full((1, 4, 5), 50.0))  # beyond the cap
    normals = NormalMetrics()
    normals.update(torch.randn(1, 3, 4, 5), torch.zeros(1, 3, 4, 5))  # zero normals are unknown
    semantic = SemanticMetrics(3)
    semantic.update(torch.zeros(1, 4, 5, dtype=torch.long), torch.full((1, 4, 5), IGNORE_LABEL))
    with pytest.warns(UserWarning):  # torchmetrics: compute() before any update of a member
        values = {**{f"depth/{k}": v for k, v in depth.compute().items()},
                  **{f"normals/{k}": v for k, v in normals.compute().items()}}
    values.update({f"semantic/{k}": v for k, v in semantic.compute().items()})
    assert len(values) == len(DEPTH_KEYS) + len(NORMAL_KEYS) + len(SEMANTIC_KEYS)
    assert {k: float(v) for k, v in values.items()} == {k: UNDEFINED for k in values}


def test_one_empty_image_does_not_change_the_other_images_values():
    target, pred = torch.tensor([[[2.0, 4.0]], [[0.0, 0.0]]]), torch.tensor([[[1.0, 4.0]], [[3.0, 3.0]]])
    m = DepthMetrics()
    m.update(pred, target)
    out = m.compute()  # image 1 alone: abs_rel = (1/2 + 0) / 2, rmse = sqrt(1/2)
    assert float(out["abs_rel"]) == pytest.approx(0.25) and float(out["rmse"]) == pytest.approx(0.5 ** 0.5)


def test_a_task_epoch_without_valid_depth_gives_minus_one_for_every_depth_metric():
    task = DensePredictionTask(backbone="cifar_resnet20", targets=["depth"], **SMALL_HEAD)
    outputs = {"depth": torch.zeros(2, 1, 6, 8)}
    task.update_metrics("val", outputs, {"depth": torch.zeros(2, 6, 8)})
    with pytest.warns(UserWarning):
        computed = task.metrics_for("val").compute()
    assert sorted(computed) == sorted(f"val/depth/{k}" for k in DEPTH_KEYS)
    assert all(float(v) == UNDEFINED for v in computed.values())


def test_the_ignore_label_is_one_constant_everywhere():
    from densecnn.data import dense as data_dense
    from densecnn.losses import IGNORE_INDEX, semantic_loss
    from densecnn.viz_dense import labels_to_rgb

    assert IGNORE_LABEL == 255 and data_dense.IGNORE_LABEL is IGNORE_LABEL and IGNORE_INDEX is IGNORE_LABEL
    labels = torch.tensor([[[0, IGNORE_LABEL]]])
    # the loss and the metrics skip it, the picture leaves it black
    logits = torch.tensor([[[[5.0, -9.0]], [[0.0, 9.0]]]])
    assert float(semantic_loss(logits, labels)) == pytest.approx(float(-logits[0, :, 0, 0].log_softmax(0)[0]))
    m = SemanticMetrics(2)
    m.update(torch.tensor([[[0, 1]]]), labels)
    assert float(m.compute()["pixel_acc"]) == 1.0
    assert labels_to_rgb(np.array([[0, IGNORE_LABEL]]), np.array([[10, 20, 30]], np.uint8)).tolist() == \
        [[[10, 20, 30], [0, 0, 0]]]
