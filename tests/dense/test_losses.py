"""Eigen & Fergus's losses (Eqs. 6.1-6.3) against values computed by hand."""
from __future__ import annotations

import math

import torch

from densecnn.losses import DepthLoss, NormalsLoss, SemanticLoss, depth_loss, normals_loss, semantic_loss


def test_depth_loss_matches_hand_computation_with_gradient_term():
    # one 2x2 image; ground truth e^0, e^1, e^0, missing; prediction log depths 0.5, 1.0, 0.0, 7.0
    target = torch.tensor([[[1.0, math.e], [1.0, 0.0]]])
    pred = torch.tensor([[[0.5, 1.0], [0.0, 7.0]]])
    # d = 0.5, 0, 0 over n = 3 valid pixels; the missing pixel is ignored entirely
    # (1/n) sum d^2 = 0.25/3; (lam/n^2)(sum d)^2 = 0.5 * 0.25 / 9
    # gradients only between valid neighbours: x: row 0 (0 - 0.5); y: column 0 (0 - 0.5); others touch the hole
    expected = 0.25 / 3 - 0.5 * 0.25 / 9 + (0.25 + 0.25) / 3
    torch.testing.assert_close(depth_loss(pred, target), torch.tensor(expected))
    torch.testing.assert_close(depth_loss(pred, target, gradient_weight=0.0), torch.tensor(0.25 / 3 - 0.125 / 9))
    torch.testing.assert_close(DepthLoss(lam=1.0, gradient_weight=0.0)(pred[:, None], target[:, None]),
                               torch.tensor(0.25 / 3 - 0.25 / 9))


def test_depth_loss_is_scale_invariant_at_lambda_one_and_averages_over_images():
    target = torch.rand(2, 5, 6) + 0.5
    pred = torch.log(target) + 0.3  # the right depth times e^0.3 everywhere
    assert float(depth_loss(pred, target, lam=1.0)) < 1e-6
    # lambda = 1/2 keeps half of the global offset: (1/n) n 0.09 - 0.5 (n 0.3)^2 / n^2 = 0.045
    torch.testing.assert_close(depth_loss(pred, target), torch.tensor(0.045), rtol=1e-4, atol=1e-6)
    # per-image mean: image 2 with offset 0.6 gives 0.18, the mean over the two images is (0.045 + 0.18) / 2
    pred2 = pred.clone()
    pred2[1] += 0.3
    torch.testing.assert_close(depth_loss(pred2, target), torch.tensor((0.045 + 0.18) / 2), rtol=1e-4, atol=1e-6)


def test_depth_loss_without_valid_pixels_is_zero_and_differentiable():
    pred = torch.randn(2, 1, 4, 4, requires_grad=True)
    target = torch.zeros(2, 1, 4, 4)
    target[0, 0, 0, 0] = float("nan")
    target[1, 0, 1, 1] = float("inf")
    loss = depth_loss(pred, target)
    loss.backward()
    assert float(loss) == 0.0 and torch.isfinite(pred.grad).all() and float(pred.grad.abs().sum()) == 0.0
    # an empty image next to a valid one: only the valid one counts
    target[1] = 2.0
    mixed = depth_loss(pred.detach(), target)
    alone = depth_loss(pred.detach()[1:], target[1:])
    torch.testing.assert_close(mixed, alone)


def test_normals_loss_is_minus_mean_cosine_over_valid_pixels_and_backpropagates_through_normalisation():
    target = torch.zeros(1, 3, 1, 3)
    target[0, :, 0, 0] = torch.tensor([0.0, 0.0, 1.0])
    target[0, :, 0, 1] = torch.tensor([1.0, 0.0, 0.0])  # the third pixel is missing (zero vector)
    pred = torch.zeros(1, 3, 1, 3)
    pred[0, :, 0, 0] = torch.tensor([0.0, 0.0, 5.0])  # same direction, length 5: cosine 1
    pred[0, :, 0, 1] = torch.tensor([1.0, 1.0, 0.0])  # 45 degrees: cosine 1/sqrt(2)
    pred[0, :, 0, 2] = torch.tensor([3.0, 3.0, 3.0])
    pred.requires_grad_(True)
    loss = normals_loss(pred, target)
    torch.testing.assert_close(loss, torch.tensor(-(1 + 1 / math.sqrt(2)) / 2))
    loss.backward()
    # the gradient of a unit-normalised vector is orthogonal to it: scaling the prediction changes nothing
    torch.testing.assert_close((pred.grad * pred.detach()).sum(1), torch.zeros(1, 1, 3), atol=1e-6, rtol=0)
    assert float(pred.grad[0, :, 0, 2].abs().sum()) == 0.0
    assert float(NormalsLoss()(pred.detach(), torch.zeros_like(target))) == 0.0


def test_semantic_loss_ignores_label_255_and_never_returns_nan():
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 0.0]]]])  # (1, 2 classes, 1, 2)
    labels = torch.tensor([[[0, 255]]])
    expected = -math.log(math.exp(2) / (math.exp(2) + 1))
    torch.testing.assert_close(semantic_loss(logits, labels), torch.tensor(expected))
    torch.testing.assert_close(SemanticLoss()(logits, torch.tensor([[[0, 1]]]), mask=torch.tensor([[[True, False]]])),
                               torch.tensor(expected))
    empty = semantic_loss(logits.requires_grad_(True), torch.full((1, 1, 2), 255))
    empty.backward()
    assert float(empty) == 0.0 and torch.isfinite(logits.grad).all()
