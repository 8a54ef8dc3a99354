"""The FPN detector layout, module for module torchvision's ``fasterrcnn_resnet50_fpn`` and
``maskrcnn_resnet50_fpn`` (same parameter names), as parts for ``build_detector``.

The ResNet's res2..res5 feed a feature pyramid P2..P5 plus P6 (a max-pool of P5), 256 channels
each; the RPN puts one anchor size on each of the five levels; the box head pools 7x7 RoIs
from P2..P5 (the level chosen by RoI size) into two fc layers; the mask head pools 14x14 RoIs
into a stack of 3x3 convs and a 2x deconvolution.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from resdet.models.c4 import DetectorParts, anchor_generator, maybe_channels_last
from resdet.models.conventions import RCNNConventions
from resdet.models.rcnn_settings import RoIHeadSettings, RPNSettings
from resdet.models.resnet import ResNet
from resdet.models.roi_align import GatherMultiScaleRoIAlign

FPN_CHANNELS = 256
# P2..P5 from res2..res5 plus P6 from LastLevelMaxPool; the FPN takes one anchor size per level.
FPN_LEVELS = 5
FPN_STRIDES = (4, 8, 16, 32, 64)
# torchvision's RoIAlign sample points per bin side for the FPN heads.
FPN_SAMPLING_RATIO = 2


class FPNBackbone(BackboneWithFPN):
    """torchvision's ResNet-FPN backbone (same modules and names), optionally channels-last.

    Normalised [B, 3, H, W] -> OrderedDict "0".."3" (P2..P5, strides 4..32) and "pool" (P6,
    stride 64), each [B, 256, H/s, W/s].
    """

    def __init__(self, resnet: ResNet, channels_last: bool, channels: int = FPN_CHANNELS) -> None:
        super().__init__(
            resnet,
            return_layers={f"layer{i + 1}": str(i) for i in range(4)},
            in_channels_list=[resnet.feature_info[f"res{i}"][0] for i in range(2, 6)],
            out_channels=channels,
            extra_blocks=LastLevelMaxPool(),
        )
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return super().forward(maybe_channels_last(x, self.channels_last))


def fpn_parts(
    resnet: ResNet,
    num_classes: int,
    masks: bool,
    rpn: RPNSettings,
    roi_heads: RoIHeadSettings,
    channels_last: bool,
    conventions: RCNNConventions,
    channels: int = FPN_CHANNELS,
) -> DetectorParts:
    """The FPN modules around ``resnet``, which they take over (its ``fc`` is left out), with
    ``channels`` channels at every pyramid level (the paper, detectron2, torchvision: 256)."""
    if len(rpn.anchor_sizes) != FPN_LEVELS:
        raise ValueError(
            f"the FPN head has {FPN_LEVELS} levels (P2-P6) and takes one anchor size per level, "
            f"got {len(rpn.anchor_sizes)}: {rpn.anchor_sizes}; e.g. (32, 64, 128, 256, 512)"
        )
    levels = ["0", "1", "2", "3"]
    ratio = conventions.roi_sampling_ratio
    pool_options = {
        "sampling_ratio": FPN_SAMPLING_RATIO if ratio is None else ratio,
        "aligned": conventions.roi_aligned,
    }
    width = roi_heads.box_head_width
    parts = DetectorParts(
        backbone=FPNBackbone(resnet, channels_last, channels),
        anchor_generator=anchor_generator(
            tuple((size,) for size in rpn.anchor_sizes),
            (tuple(rpn.aspect_ratios),) * FPN_LEVELS,
            FPN_STRIDES,
            conventions.anchor_rounding,
        ),
        box_roi_pool=GatherMultiScaleRoIAlign(levels, output_size=7, **pool_options),
        box_head=TwoMLPHead(channels * 7**2, width),
        box_predictor=FastRCNNPredictor(width, num_classes + 1),
    )
    if not masks:
        return parts
    layers = roi_heads.mask_head_layers
    return replace(
        parts,
        mask_roi_pool=GatherMultiScaleRoIAlign(levels, output_size=14, **pool_options),
        mask_head=MaskRCNNHeads(channels, list(layers), 1),
        mask_predictor=MaskRCNNPredictor(layers[-1], layers[-1], num_classes + 1),
    )
