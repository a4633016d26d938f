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


def truncated_svd_linear(layer: nn.Linear, rank: int) -> nn.Sequential:
    """Fast R-CNN's truncated SVD (Section 3.1): ``W ~ U_t S_t V_t^T`` turns one ``u x v`` layer into two
    with no nonlinearity between them, ``S_t V_t^T`` (``t x v``, no bias) then ``U_t`` (``u x t``, the
    original bias): ``t (u + v)`` weights instead of ``u v``. ``rank >= min(u, v)`` keeps W exactly."""
    weight = layer.weight.detach()
    rank = min(int(rank), *weight.shape)
    if rank < 1:
        raise ValueError(f"truncated SVD rank must be >= 1, got {rank}")
    u, s, vh = torch.linalg.svd(weight.double(), full_matrices=False)  # double: exact at full rank
    first = nn.Linear(weight.shape[1], rank, bias=False)
    second = nn.Linear(rank, weight.shape[0], bias=layer.bias is not None)
    with torch.no_grad():
        first.weight.copy_((s[:rank, None] * vh[:rank]).to(weight.dtype))
        second.weight.copy_(u[:, :rank].to(weight.dtype))
        if layer.bias is not None:
            second.bias.copy_(layer.bias.detach())
    return nn.Sequential(first, second).to(weight.device)


class RoIBoxHead(nn.Module):
    """Fast R-CNN's head on a pooled RoI: fc6 and fc7 (ReLU, dropout), then ``BoxPredictor``.

    ``load_fc`` initialises fc6/fc7 from a pre-trained classifier's (Fast R-CNN Section 2.2: the last max pool
    becomes the RoI pool, fc6/fc7 stay); ``compress_fc`` applies the truncated SVD of Section 3.1."""

    def __init__(self, in_channels: int, roi_size: int, num_classes: int, hidden: int = 1024, dropout: float = 0.5):
        super().__init__()
        self.fc6 = nn.Linear(in_channels * roi_size * roi_size, hidden)
        self.fc7 = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)
        self.predictor = BoxPredictor(hidden, num_classes)

    def load_fc(self, fc6: nn.Linear, fc7: nn.Linear) -> bool:
        """Copy fc6/fc7 weights from another network's layers when their shapes match this head's (the input of
        fc6 flattens ``C x roi_size x roi_size`` in the same order as a classifier's flattened pool5).
        Returns whether it did."""
        if self.compressed:
            raise ValueError("load_fc on a head whose fc6/fc7 were already compressed (compress_fc)")
        pairs = ((self.fc6, fc6), (self.fc7, fc7))
        if any(mine.weight.shape != theirs.weight.shape or (theirs.bias is None) for mine, theirs in pairs):
            return False
        with torch.no_grad():
            for mine, theirs in pairs:
                mine.weight.copy_(theirs.weight)
                mine.bias.copy_(theirs.bias)
        return True

    @property
    def compressed(self) -> bool:
        return isinstance(self.fc6, nn.Sequential) or isinstance(self.fc7, nn.Sequential)

    def compress_fc(self, rank_fc6: int | None, rank_fc7: int | None) -> None:
        """Replace fc6 and/or fc7 by their rank-t truncated SVD (``None`` leaves a layer as it is); the paper
        uses t = 1024 for fc6 and 256 for fc7 of VGG16 at test time (Section 3.1, Fig. 2)."""
        if rank_fc6 is not None and isinstance(self.fc6, nn.Linear):
            self.fc6 = truncated_svd_linear(self.fc6, rank_fc6)
        if rank_fc7 is not None and isinstance(self.fc7, nn.Linear):
            self.fc7 = truncated_svd_linear(self.fc7, rank_fc7)

    def features(self, pooled: torch.Tensor) -> torch.Tensor:
        """fc7 features of pooled RoIs ``(R, C, roi_size, roi_size)``: ``(R, hidden)``."""
        x = self.dropout(torch.relu(self.fc6(pooled.flatten(1))))
        return self.dropout(torch.relu(self.fc7(x)))

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.predictor(self.features(pooled))


class ConvWindowHead(nn.Module):
    """OverFeat's classifier and regressor with their fully connected layers written as convolutions.

    On a ``window`` x ``window`` feature map (the features of one input window) the ``window`` x ``window``
    convolution ``fc6`` is exactly a fully connected layer and the output is 1 x 1; on the feature map of a
    larger image the same weights slide over it and produce one score vector per window position, which is
    the seeds' "no need to compute separate windows, just one big input window" (S3 L3928-3997).
    ``fc7`` and the outputs are 1 x 1 convolutions. Outputs per position and per box shape (``num_ratios``
    boxes of different aspect ratios share the position's window, as the RPN's anchors share its sliding
    window): K + 1 class scores and 4 deltas per class (OverFeat's class-specific regression network, here on
    the shared fc6 features). ``from_classifier`` builds fc6/fc7 from a trained classifier's Linear layers.
    """

    def __init__(self, in_channels: int, window: int, num_classes: int, hidden: int = 512, dropout: float = 0.5,
                 num_ratios: int = 1, hidden7: int | None = None):
        super().__init__()
        self.window = window
        self.num_ratios = num_ratios
        hidden7 = hidden7 or hidden
        self.fc6 = nn.Conv2d(in_channels, hidden, window)
        self.fc7 = nn.Conv2d(hidden, hidden7, 1)
        self.dropout = nn.Dropout(dropout)
        self.cls_score = nn.Conv2d(hidden7, num_ratios * (num_classes + 1), 1)
        self.reg_hidden = nn.Conv2d(hidden, hidden, 1)
        self.bbox_pred = nn.Conv2d(hidden, num_ratios * num_classes * 4, 1)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    @classmethod
    def from_classifier(cls, fc6: nn.Linear, fc7: nn.Linear, in_channels: int, window: int, num_classes: int,
                        dropout: float = 0.5, num_ratios: int = 1) -> ConvWindowHead:
        """A head whose fc6/fc7 are a trained classifier's first two fully connected layers (OverFeat's point,
        Sermanet et al. 2014 §3.5): ``fc6`` ``(H, C * w * w)`` on the flattened ``C x w x w`` map becomes a
        ``(H, C, w, w)`` convolution (the flattening is channel-major, as ``torch.flatten`` of NCHW), ``fc7`` a
        1 x 1 convolution. The class scores and box regression are new (the detector's K + 1 classes)."""
        if fc6.in_features != in_channels * window * window:
            raise ValueError(f"the classifier's first fully connected layer takes {fc6.in_features} inputs, not "
                             f"{in_channels} channels x {window} x {window} (the window's map)")
        head = cls(in_channels, window, num_classes, fc6.out_features, dropout, num_ratios, fc7.out_features)
        with torch.no_grad():
            head.fc6.weight.copy_(fc6.weight.reshape(fc6.out_features, in_channels, window, window))
            head.fc7.weight.copy_(fc7.weight[:, :, None, None])
            for conv, linear in ((head.fc6, fc6), (head.fc7, fc7)):
                if linear.bias is not None:
                    conv.bias.copy_(linear.bias)
                else:
                    conv.bias.zero_()
        return head

    def features(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """fc6 and fc7 activations (after ReLU and dropout, fc7's as the classifier's penultimate layer)."""
        x = self.dropout(torch.relu(self.fc6(features)))
        return x, self.dropout(torch.relu(self.fc7(x)))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, H, W)`` features -> scores ``(B, A * (K + 1), H - w + 1, W - w + 1)`` and deltas
        ``(B, A * 4K, ...)``, ``A = num_ratios`` groups, box shape by box shape."""
        fc6, fc7 = self.features(features)
        scores = self.cls_score(fc7)
        deltas = self.bbox_pred(torch.relu(self.reg_hidden(fc6)))
        return scores, deltas


def pretrained_fc_layers(backbone: nn.Module) -> list[nn.Linear]:
    """The fully connected layers of a backbone's pooled head built with ``num_classes=0`` (VGG/AlexNet:
    fc6 and fc7 in ``classifier``); empty for heads without them (ResNet, GoogLeNet: global pooling)."""
    head = getattr(backbone, "classifier", None)
    return [m for m in head.modules() if isinstance(m, nn.Linear)] if isinstance(head, nn.Module) else []
