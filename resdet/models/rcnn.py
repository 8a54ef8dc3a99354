"""The assembled detector: torchvision's ``GeneralizedRCNN`` with what it was built as."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

Head = Literal["c4", "fpn"]


@dataclass(frozen=True)
class DetectorInfo:
    """What ``build_detector`` built: read by the experiments, the importers and messages."""

    backbone: str  # the registry name, e.g. "resnet101"
    head: Head
    num_classes: int  # object classes, without background
    masks: bool
    backbone_init: str  # a sentence on where the backbone weights came from


class Detector(GeneralizedRCNN):
    """``FasterRCNN`` / ``MaskRCNN`` in all but their constructors: torchvision's forward and
    the same submodules (``backbone``, ``rpn``, ``roi_heads``, ``transform``), so the same
    state-dict keys; built from resdet's parts by ``build_detector``."""

    def __init__(
        self,
        backbone: nn.Module,
        rpn: nn.Module,
        roi_heads: nn.Module,
        transform: nn.Module,
        info: DetectorInfo,
    ) -> None:
        super().__init__(backbone, rpn, roi_heads, transform)
        self.info = info
