"""OverFeat: a trained classifier's fully connected layers converted to convolutions give, at each position of
the score map, the classifier's own output on that window; windows of several aspect ratios make tall objects
positives."""
from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import box_iou

from densecnn import create_backbone


@pytest.mark.slow  # AlexNet's 60M parameters built three times: ~10-25 s on 2 busy cores
def test_converted_classifier_scores_each_window_as_the_classifier(tmp_path):
    """AlexNet trained as a classifier (random weights stand in): fc6 (4096, 256 * 6 * 6) becomes a 6 x 6
    convolution over pool5. At score-map position (i, j) the head's fc7 equals the classifier's fc7 run on that
    window's part of the conv5 map (rows 2i..2i+12: pool5 3/2, 13 conv5 cells -> 6 pool5 cells), and the class
    scores are the detector's new layer on it."""
    from tasks import OverFeatTask

    torch.manual_seed(0)
    path = tmp_path / "alexnet_classifier.pt"
    torch.save(create_backbone("alexnet", num_classes=10).state_dict(), path)
    task = OverFeatTask(backbone="alexnet", weights=str(path), num_classes=3, head="converted", window=227,
                        window_ratios=[1.0], dropout=0.5).eval()
    classifier = create_backbone("alexnet", num_classes=0, weights=str(path)).eval()  # fc7 features out
    assert task.stride == 32 and task.head.fc6.kernel_size == (6, 6) and task.head.fc6.out_channels == 4096
    image = torch.randn(1, 3, 291, 291)  # 227 + 2 * 32: 3 x 3 window positions
    with torch.no_grad():
        conv5 = task.backbone.feature_maps(image, [-1])[0]
        fc7 = task.head.features(task.slide_input(conv5))[1]
        logits, _ = task.score_maps(image)
        torch.testing.assert_close(classifier.forward_features(image)[-1], conv5)  # same trunk weights
        assert logits.shape == (1, 4, 3, 3)
        for i in range(3):
            for j in range(3):
                expected = classifier.forward_head(conv5[:, :, 2 * i:2 * i + 13, 2 * j:2 * j + 13])[0]
                torch.testing.assert_close(fc7[0, :, i, j], expected, rtol=1e-4, atol=1e-5)
                scores = task.head.cls_score.weight[:, :, 0, 0] @ expected + task.head.cls_score.bias
                torch.testing.assert_close(logits[0, :, i, j], scores, rtol=1e-4, atol=1e-5)
    # the window behind (i, j) is the 227 px square at (32 j, 32 i)
    assert task.window_boxes(3, 3)[4].tolist() == [32.0, 32.0, 259.0, 259.0]


def test_converted_head_needs_a_classifier_with_fully_connected_layers():
    from tasks import OverFeatTask

    with pytest.raises(ValueError, match="head: converted needs a backbone whose classifier has fully connected"):
        OverFeatTask(backbone="resnet18", num_classes=3, head="converted", window=64)
    with pytest.raises(ValueError, match="model.init_args.window: 195 px"):
        OverFeatTask(backbone="alexnet", num_classes=3, head="converted", window=195)
    with pytest.raises(ValueError, match="model.init_args.head"):
        OverFeatTask(backbone="alexnet", num_classes=3, head="pretrained")


def test_a_tall_object_gets_a_positive_window_at_some_ratio():
    """A 1:3 object: the best square has IoU 1 / (2 sqrt(3) - 1) = 0.40 with it (under 0.5 at any position and
    size), the 2:1 (height:width) box of the square's area centred on it 0.686; with ratios the object trains the
    box regressor (foreground windows exist), with squares only it cannot."""
    from tasks import OverFeatTask

    tall = torch.tensor([[46.0, 26.0, 66.0, 86.0]])  # 20 x 60, centred on the window at (40, 40)
    batch = {"image": torch.randn(1, 3, 128, 128), "target": [{"boxes": tall, "labels": torch.tensor([1])}]}
    best = {}
    for ratios in ([1.0], [0.5, 1.0, 2.0]):
        torch.manual_seed(0)
        task = OverFeatTask(backbone="lenet5", backbone_kwargs={"in_chans": 3}, num_classes=3, window=32,
                            window_ratios=ratios, hidden_dim=16, dropout=0.0, windows_per_image=32)
        _, _, boxes = task.pyramid_windows(batch["image"])
        best[len(ratios)] = box_iou(boxes, tall).max().item()
        losses = task.training_losses(batch)
        assert (losses["loss_box_reg"] > 0) == (len(ratios) == 3)
    assert best[1] < 1 / (2 * math.sqrt(3) - 1) + 1e-6 < 0.5
    side = 32 / math.sqrt(2)  # ratio 2: 22.6 wide, 45.3 tall
    inter = 20 * 2 * side
    assert best[3] == pytest.approx(inter / (20 * 60 + 32 * 32 - inter), abs=1e-5)  # 0.686


def test_ratio_boxes_follow_the_score_map_layout():
    """``pyramid_windows`` row n = (position, ratio) reads the map's channel group of that ratio at that position,
    and its box is centred on the position's square window with the ratio's shape."""
    from tasks import OverFeatTask

    torch.manual_seed(0)
    task = OverFeatTask(backbone="lenet5", backbone_kwargs={"in_chans": 3}, num_classes=2, window=32,
                        window_ratios=[0.5, 1.0, 2.0], hidden_dim=8).eval()
    image = torch.randn(1, 3, 40, 48)
    with torch.no_grad():
        maps, _ = task.score_maps(image)
        logits, _, boxes = task.pyramid_windows(image)
    rows, cols = maps.shape[-2:]
    squares = task.window_boxes(rows, cols)
    for n in range(len(boxes)):
        position, ratio = divmod(n, 3)
        i, j = divmod(position, cols)
        torch.testing.assert_close(logits[0, n], maps[0, 3 * ratio:3 * ratio + 3, i, j])
        box, square = boxes[n], squares[position]
        torch.testing.assert_close((box[:2] + box[2:]) / 2, (square[:2] + square[2:]) / 2)
        height_over_width = (box[3] - box[1]) / (box[2] - box[0])
        assert height_over_width.item() == pytest.approx([0.5, 1.0, 2.0][ratio], rel=1e-5)
