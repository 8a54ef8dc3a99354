"""Where torchvision's and detectron2's Faster / Mask R-CNN differ, as one set of choices.

Both build the same detector from the same parts; they differ in a handful of conventions that
change the detections a set of weights gives, and the training. ``RCNNConventions()`` is
torchvision's (what ``fasterrcnn_resnet50_fpn`` weights need), ``RCNNConventions.detectron2``
detectron2's (its ``Base-RCNN-C4.yaml`` / ``Base-RCNN-FPN.yaml``); any mix is allowed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from resdet.models.mask_paste import MaskPaste
from resdet.models.rcnn_heads import TORCHVISION_BETA

HeadInit = Literal["torchvision", "detectron2"]


@dataclass(frozen=True)
class RCNNConventions:
    """torchvision's conventions by default.

    roi_aligned: RoIAlign with the half-pixel shift (detectron2's ROIAlignV2) in the box and
        mask poolers.
    roi_sampling_ratio: RoIAlign sample points per bin side, both poolers; 0 adapts it to the
        RoI size; None keeps the head's own (torchvision: 2 for FPN; 0 for C4 in resdet).
    anchor_rounding: round base anchors to whole pixels and infer strides from the padded
        image (torchvision's AnchorGenerator), or not (detectron2; `ExactAnchorGenerator`).
    size_divisible: pad the batch to a multiple of this many pixels (torchvision 32; detectron2
        32 for FPN, 1 (no padding) for C4).
    rpn_box_loss_beta, roi_box_loss_beta: smooth-L1 beta of the box-regression losses (1/9 in
        torchvision; 0, plain L1, in detectron2).
    head_init: torchvision's layer defaults, or detectron2's initialisation of the box
        predictor (cls_score std 0.01, bbox_pred std 0.001, zero biases), the FPN box head's
        fc layers (c2_xavier_fill: Kaiming-uniform with a=1, zero bias) and the mask
        predictor (std 0.001, zero bias).
    mask_paste: how RoI masks are pasted into the image (``resdet.models.mask_paste``).
    """

    roi_aligned: bool = False
    roi_sampling_ratio: int | None = None
    anchor_rounding: bool = True
    size_divisible: int = 32
    rpn_box_loss_beta: float = TORCHVISION_BETA
    roi_box_loss_beta: float = TORCHVISION_BETA
    head_init: HeadInit = "torchvision"
    mask_paste: MaskPaste = "torchvision"

    def __post_init__(self) -> None:
        if self.size_divisible < 1:
            raise ValueError(
                f"size_divisible must be >= 1 (1: no padding), got {self.size_divisible}"
            )
        for name in ("rpn_box_loss_beta", "roi_box_loss_beta"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be >= 0 (0 is L1), got {value}")
        for name in ("head_init", "mask_paste"):
            if getattr(self, name) not in ("torchvision", "detectron2"):
                raise ValueError(
                    f"{name} must be torchvision or detectron2, got {getattr(self, name)!r}"
                )

    @classmethod
    def detectron2(cls, head: Literal["c4", "fpn"]) -> RCNNConventions:
        """detectron2's conventions for its C4 or FPN detectors."""
        return cls(
            roi_aligned=True,
            roi_sampling_ratio=0,
            anchor_rounding=False,
            size_divisible=1 if head == "c4" else 32,
            rpn_box_loss_beta=0.0,
            roi_box_loss_beta=0.0,
            head_init="detectron2",
            mask_paste="detectron2",
        )


TORCHVISION = RCNNConventions()


def init_heads_as_detectron2(model: nn.Module) -> None:
    """detectron2's initialisation of the heads that differ from torchvision's (in place).

    The RPN head (std 0.01 normal, zero bias), the FPN (Kaiming-uniform a=1) and the mask
    head's convolutions (Kaiming-normal fan-out) are initialised alike by both already.
    """
    heads = model.roi_heads
    predictor = heads.box_predictor
    _normal(predictor.cls_score, 0.01)
    _normal(predictor.bbox_pred, 0.001)
    for name in ("fc6", "fc7"):  # the FPN box head; C4's box head is res5
        layer = getattr(heads.box_head, name, None)
        if layer is not None:
            nn.init.kaiming_uniform_(layer.weight, a=1)
            nn.init.zeros_(layer.bias)
    if heads.has_mask():
        _normal(heads.mask_predictor.mask_fcn_logits, 0.001)
        nn.init.zeros_(heads.mask_predictor.conv5_mask.bias)  # its weight: Kaiming in both


def _normal(layer: nn.Module, std: float) -> None:
    with torch.no_grad():
        nn.init.normal_(layer.weight, std=std)
        nn.init.zeros_(layer.bias)
