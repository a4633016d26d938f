"""Detection heads: the R-CNN family's box head and OverFeat's fully convolutional window classifier."""
from __future__ import annotations

import torch
from torch import nn


class BoxPredictor(nn.Module):
    """Two sibling layers on a region's feature vector (Fast R-CNN Fig. 1): softmax scores over K + 1
    classes (0 = background) and class-specific box deltas, 4 per class."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.cls_score = nn.Linear(in_features, num_classes + 1)
        self.bbox_pred = nn.Linear(in_features, (num_classes + 1) * 4)
        # Fast R-CNN initialises the classifier with std 0.01 and the regressor with std 0.001
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.flatten(1)
        return self.cls_score(x), self.bbox_pred(x)


class RoIBoxHead(nn.Module):
    """Fast R-CNN's head on a pooled RoI: fc6 and fc7 (ReLU, dropout), then ``BoxPredictor``."""

    def __init__(self, in_channels: int, roi_size: int, num_classes: int, hidden: int = 1024, dropout: float = 0.5):
        super().__init__()
        self.fc6 = nn.Linear(in_channels * roi_size * roi_size, hidden)
        self.fc7 = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)
        self.predictor = BoxPredictor(hidden, num_classes)

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.dropout(torch.relu(self.fc6(pooled.flatten(1))))
        x = self.dropout(torch.relu(self.fc7(x)))
        return self.predictor(x)


class ConvWindowHead(nn.Module):
    """OverFeat's classifier and regressor with their fully connected layers written as convolutions.

    On a ``window`` x ``window`` feature map (the features of one input window) the ``window`` x ``window``
    convolution ``fc6`` is exactly a fully connected layer and the output is 1 x 1; on the feature map of a
    larger image the same weights slide over it and produce one score vector per window position, which is
    the seeds' "no need to compute separate windows, just one big input window" (S3 L3928-3997).
    ``fc7`` and the outputs are 1 x 1 convolutions. Outputs per position: K + 1 class scores and 4 deltas per
    class (OverFeat's class-specific regression network, here on the shared fc6 features).
    """

    def __init__(self, in_channels: int, window: int, num_classes: int, hidden: int = 512, dropout: float = 0.5):
        super().__init__()
        self.window = window
        self.fc6 = nn.Conv2d(in_channels, hidden, window)
        self.fc7 = nn.Conv2d(hidden, hidden, 1)
        self.dropout = nn.Dropout(dropout)
        self.cls_score = nn.Conv2d(hidden, num_classes + 1, 1)
        self.reg_hidden = nn.Conv2d(hidden, hidden, 1)
        self.bbox_pred = nn.Conv2d(hidden, num_classes * 4, 1)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, H, W)`` features -> scores ``(B, K + 1, H - w + 1, W - w + 1)`` and deltas ``(B, 4K, ...)``."""
        x = self.dropout(torch.relu(self.fc6(features)))
        scores = self.cls_score(self.dropout(torch.relu(self.fc7(x))))
        deltas = self.bbox_pred(torch.relu(self.reg_hidden(x)))
        return scores, deltas
