"""Depth, normal and semantic metrics against hand-computed values."""
from __future__ import annotations

import math

import pytest
import torch

from densecnn.metrics import DEPTH_KEYS, NORMAL_KEYS, SEMANTIC_KEYS, DepthMetrics, NormalMetrics, SemanticMetrics
from densecnn.metrics import eigen_crop_mask


def test_depth_metrics_per_image_then_averaged_over_images():
    # image 1: gt (1, 2), pred (2, 2) ; image 2: gt (4, missing 0), pred (2, 9)
    target = torch.tensor([[[1.0, 2.0]], [[4.0, 0.0]]])
    pred = torch.tensor([[[2.0, 2.0]], [[2.0, 9.0]]])
    m = DepthMetrics()
    m.update(pred, target)
    out = m.compute()
    assert set(out) == set(DEPTH_KEYS)
    ln2 = math.log(2)
    # ratio 2 > 1.25^3 = 1.953: the first pixel of image 1 fails even delta3
    image1 = dict(delta1=0.5, delta2=0.5, delta3=0.5, abs_rel=(1.0 + 0) / 2, sq_rel=(1.0 + 0) / 2,
                  rmse=math.sqrt(0.5), rmse_log=math.sqrt(ln2 ** 2 / 2), log10=math.log10(2) / 2,
                  silog=math.sqrt(ln2 ** 2 / 2 - (ln2 / 2) ** 2))
    image2 = dict(delta1=0.0, delta2=0.0, delta3=0.0, abs_rel=0.5, sq_rel=1.0, rmse=2.0, rmse_log=ln2,
                  log10=math.log10(2), silog=0.0)
    for key in DEPTH_KEYS:
        torch.testing.assert_close(out[key], torch.tensor((image1[key] + image2[key]) / 2), msg=key)


def test_depth_metrics_mask_cap_nan_and_empty_images():
    target = torch.tensor([[[1.0, 20.0, float("nan"), float("inf")]], [[0.0, 0.0, 0.0, 0.0]]])
    pred = torch.tensor([[[1.0, 1.0, 1.0, 1.0]], [[1.0, 1.0, 1.0, 1.0]]])
    m = DepthMetrics(max_depth=10.0)
    m.update(pred, target)
    out = m.compute()  # only pixel (0, 0) counts; image 2 has none and is skipped
    assert float(out["delta1"]) == 1.0 and float(out["rmse"]) == 0.0
    m2 = DepthMetrics()
    m2.update(pred, target, mask=torch.tensor([[[False, True, True, True]], [[True] * 4]]))
    torch.testing.assert_close(m2.compute()["abs_rel"], torch.tensor(19 / 20))  # only the 20 m pixel


def test_eigen_crop_is_the_nyu_crop_and_scales_with_the_map():
    mask = eigen_crop_mask(480, 640)
    assert int(mask.sum()) == (471 - 45) * (601 - 41)
    assert bool(mask[45, 41]) and not bool(mask[44, 41]) and not bool(mask[45, 601])
    half = eigen_crop_mask(240, 320)
    assert half[22:236, 20:300].all() and int(half.sum()) == (236 - 22) * (300 - 20)


def test_normal_metrics_angles_thresholds_and_median():
    target = torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1).repeat(1, 1, 1, 5)
    angles = [0.0, 10.0, 20.0, 25.0, 60.0]
    pred = torch.stack([torch.tensor([math.sin(math.radians(a)), 0.0, math.cos(math.radians(a))]) * 3
                        for a in angles], -1).view(1, 3, 1, 5)
    m = NormalMetrics()
    m.update(pred, target)
    out = m.compute()
    assert set(out) == set(NORMAL_KEYS)
    torch.testing.assert_close(out["mean"], torch.tensor(sum(angles) / 5), atol=1e-3, rtol=0)
    torch.testing.assert_close(out["rmse"], torch.tensor(math.sqrt(sum(a * a for a in angles) / 5)), atol=1e-3, rtol=0)
    assert abs(float(out["median"]) - 20.0) <= 0.01
    torch.testing.assert_close(out["within_11_25"], torch.tensor(0.4))
    torch.testing.assert_close(out["within_22_5"], torch.tensor(0.6))
    torch.testing.assert_close(out["within_30"], torch.tensor(0.8))


def test_normal_median_is_exact_to_a_hundredth_of_a_degree_over_many_pixels_and_batches():
    torch.manual_seed(0)
    target = torch.nn.functional.normalize(torch.randn(4, 3, 16, 16), dim=1)
    pred = target + 0.4 * torch.randn(4, 3, 16, 16)
    m = NormalMetrics()
    for i in range(4):
        m.update(pred[i:i + 1], target[i:i + 1])
    from densecnn.metrics import angular_error_degrees

    exact = angular_error_degrees(pred, target).flatten().median()  # torch: the lower of the two middle values
    assert abs(float(m.compute()["median"]) - float(exact)) < 0.05
    # a pixel with a zero (missing) ground-truth normal or outside the mask does not count
    m2 = NormalMetrics()
    t = target[:1].clone()
    t[..., 0, 0] = 0
    m2.update(pred[:1], t, mask=torch.ones(1, 16, 16, dtype=torch.bool))
    full = NormalMetrics()
    full.update(pred[:1], target[:1])
    assert float(m2.compute()["mean"]) != pytest.approx(float(full.compute()["mean"]), abs=1e-6)


def test_semantic_metrics_from_a_hand_made_confusion_matrix():
    # 3 classes; target / prediction over 8 labelled pixels and one ignored (255)
    target = torch.tensor([[0, 0, 0, 0, 1, 1, 2, 2, 255]])
    pred = torch.tensor([[0, 0, 0, 1, 1, 0, 2, 1, 2]])
    m = SemanticMetrics(3)
    m.update(pred, target)
    out = m.compute()
    assert set(out) == set(SEMANTIC_KEYS)
    # confusion (rows true): c0 -> [3, 1, 0]; c1 -> [1, 1, 0]; c2 -> [0, 1, 1]
    torch.testing.assert_close(out["pixel_acc"], torch.tensor(5 / 8))
    torch.testing.assert_close(out["mean_acc"], torch.tensor((3 / 4 + 1 / 2 + 1 / 2) / 3))
    iou = [3 / (4 + 4 - 3), 1 / (2 + 3 - 1), 1 / (2 + 1 - 1)]
    torch.testing.assert_close(out["miou"], torch.tensor(sum(iou) / 3))
    torch.testing.assert_close(out["fwiou"], torch.tensor((4 * iou[0] + 2 * iou[1] + 2 * iou[2]) / 8))
    # logits work as well, and a mask removes pixels like the ignore label
    logits = torch.nn.functional.one_hot(pred, 3).permute(0, 2, 1).float()[..., None]
    m2 = SemanticMetrics(3)
    m2.update(logits, target[..., None], mask=torch.ones(1, 9, 1, dtype=torch.bool))
    torch.testing.assert_close(m2.compute()["pixel_acc"], torch.tensor(5 / 8))


def test_metric_states_merge_like_ddp_ranks():
    """DDP sums the states of every rank; merging two metrics' states gives the single-process value."""
    torch.manual_seed(1)
    target, pred = torch.rand(4, 6, 6) + 0.5, torch.rand(4, 6, 6) + 0.5
    whole, a, b = DepthMetrics(), DepthMetrics(), DepthMetrics()
    whole.update(pred, target)
    a.update(pred[:1], target[:1])
    b.update(pred[1:], target[1:])
    for (key, ma), (_, mb) in zip(a.items(keep_base=True), b.items(keep_base=True)):
        ma.merge_state(mb)
    for key, value in whole.compute().items():
        torch.testing.assert_close(a.compute()[key], value, msg=key)
    na, nb, nw = NormalMetrics(), NormalMetrics(), NormalMetrics()
    normals_t = torch.nn.functional.normalize(torch.randn(2, 3, 5, 5), dim=1)
    normals_p = torch.randn(2, 3, 5, 5)
    nw.update(normals_p, normals_t)
    na.update(normals_p[:1], normals_t[:1])
    nb.update(normals_p[1:], normals_t[1:])
    for (_, ma), (_, mb) in zip(na.items(keep_base=True), nb.items(keep_base=True)):
        ma.merge_state(mb)
    for key, value in nw.compute().items():
        torch.testing.assert_close(na.compute()[key], value, msg=key)
