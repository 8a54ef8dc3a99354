"""The paper's C4 detector layout (Appendix A) as modules for torchvision's R-CNN classes.

conv1..conv4 (stem, res2..res4) form the shared body at stride 16 that feeds the RPN and the RoI
pooler; conv5_x runs per RoI, followed by global average pooling and the two sibling layers
(``FastRCNNPredictor``). The paper pooled with RoI pooling; like detectron2's ``Res5ROIHeads``
resdet uses RoIAlign (14x14, torchvision's numbers; ``resdet.models.roi_align``), which is more
accurate. With masks the mask branch shares that res5, as in detectron2's C4: in training it
takes the box branch's res5 maps of the foreground sampled RoIs (``BoxMaskHeads``), at
inference it pools 14x14 RoIs of res4 at the detected boxes and runs res5 on them.
``DetectorParts`` is the set of modules either head layout hands to ``build_detector``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace

import torch
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign

from resdet.models.anchors import ExactAnchorGenerator
from resdet.models.resnet import ResNet
from resdet.models.roi_align import GatherMultiScaleRoIAlign

C4_SAMPLING_RATIO = 0  # adaptive, as detectron2's C4 pooler
_STEM_AND_RES2_TO_RES4 = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3")


def maybe_channels_last(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``x`` [B, C, H, W] in channels-last memory order when asked (same values, same shape).

    Convolutions on CPU (oneDNN) run natively in this order; a conv whose input is
    channels-last also writes channels-last output, so converting the input once makes the
    whole conv stack run in it while the weights keep their ordinary (contiguous) layout.
    """
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


class C4Backbone(nn.Module):
    """Stem + res2..res4 of a ResNet: normalised [B, 3, H, W] -> {"res4": [B, C4, H/16, W/16]}.

    C4 is 1024 channels for bottleneck nets, 256 for basic-block nets (``out_channels``).
    Parameters are named ``body.conv1.*`` .. ``body.layer3.*`` as in torchvision's backbones.
    """

    def __init__(self, resnet: ResNet, channels_last: bool) -> None:
        super().__init__()
        self.body = nn.Sequential(
            OrderedDict((name, getattr(resnet, name)) for name in _STEM_AND_RES2_TO_RES4)
        )
        self.out_channels = resnet.feature_info["res4"][0]
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return OrderedDict(res4=self.body(maybe_channels_last(x, self.channels_last)))


class Res5BoxHead(nn.Module):
    """conv5_x per RoI, then global average pooling: [N, C4, 14, 14] -> [N, C5].

    The first res5 block strides 2, so res5 sees 14x14 RoIs and outputs 7x7 maps (C5 = 2048
    for bottleneck nets, 512 for basic-block nets).
    """

    def __init__(self, res5: nn.Sequential, out_channels: int, channels_last: bool) -> None:
        super().__init__()
        self.res5 = res5
        self.out_channels = out_channels
        self.channels_last = channels_last

    def run_res5(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C4, 14, 14] pooled res4 features -> [N, C5, 7, 7] res5 maps."""
        return self.res5(maybe_channels_last(x, self.channels_last))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run_res5(x).mean(dim=(2, 3))


class Res5MaskHead(nn.Module):
    """The mask branch's trunk in detectron2's C4 design: the box head's own res5.

    [N, C4, 14, 14] pooled res4 features of the RoIs -> [N, C5, 7, 7]; ``MaskRCNNPredictor``
    then upsamples 2x to 14x14 mask logits. ``BoxMaskHeads`` calls it at inference only, on the
    detections: in training the box branch has already run res5 on the sampled RoIs, and the
    mask predictor takes those maps of the foreground ones. The box head is held outside the
    module tree so the shared res5 weights appear once in the state dict (under
    ``roi_heads.box_head.res5``) and once in ``parameters()``; moving or copying the model
    still moves/copies them together, because they are the same module object.
    """

    def __init__(self, box_head: Res5BoxHead) -> None:
        super().__init__()
        self._shared = (box_head,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._shared[0].run_res5(x)


@dataclass(frozen=True)
class DetectorParts:
    """The modules torchvision's ``FasterRCNN``/``MaskRCNN`` take for one head layout."""

    backbone: nn.Module
    anchor_generator: AnchorGenerator
    box_roi_pool: MultiScaleRoIAlign
    box_head: nn.Module
    box_predictor: FastRCNNPredictor
    mask_roi_pool: MultiScaleRoIAlign | None = None
    mask_head: nn.Module | None = None
    mask_predictor: MaskRCNNPredictor | None = None


def anchor_generator(
    sizes: tuple[tuple[int, ...], ...],
    aspect_ratios: tuple[tuple[float, ...], ...],
    strides: tuple[int, ...],
    rounding: bool,
) -> AnchorGenerator:
    """torchvision's generator (rounded anchors, strides inferred from the padded image) or the
    exact one of ``resdet.models.anchors`` at the levels' ``strides``."""
    if rounding:
        return AnchorGenerator(sizes, aspect_ratios)
    return ExactAnchorGenerator(sizes, aspect_ratios, strides)


def c4_parts(
    resnet: ResNet,
    num_classes: int,
    masks: bool,
    anchor_sizes: tuple[int, ...],
    aspect_ratios: tuple[float, ...],
    channels_last: bool,
    *,
    roi_aligned: bool = False,
    anchor_rounding: bool = True,
    sampling_ratio: int | None = None,
) -> DetectorParts:
    """The C4 modules around ``resnet``, which they take over (its ``fc`` is left out).

    One RPN level at stride 16 with ``len(anchor_sizes) * len(aspect_ratios)`` anchors per
    location (15 by default); ``num_classes`` counts object classes without background.
    ``roi_aligned``, ``anchor_rounding`` and ``sampling_ratio`` (None: 0, adaptive) as in
    ``resdet.models.conventions``.
    """
    res5_channels = resnet.feature_info["res5"][0]
    box_head = Res5BoxHead(resnet.layer4, res5_channels, channels_last)
    # sampling_ratio 0 samples ceil(RoI size / 14) points per bin, as detectron2's C4 pooler.
    pool_options = {
        "sampling_ratio": C4_SAMPLING_RATIO if sampling_ratio is None else sampling_ratio,
        "aligned": roi_aligned,
    }
    parts = DetectorParts(
        backbone=C4Backbone(resnet, channels_last),
        anchor_generator=anchor_generator(
            (tuple(anchor_sizes),), (tuple(aspect_ratios),), (16,), anchor_rounding
        ),
        box_roi_pool=GatherMultiScaleRoIAlign(["res4"], output_size=14, **pool_options),
        box_head=box_head,
        box_predictor=FastRCNNPredictor(res5_channels, num_classes + 1),
    )
    if not masks:
        return parts
    return replace(
        parts,
        mask_roi_pool=GatherMultiScaleRoIAlign(["res4"], output_size=14, **pool_options),
        mask_head=Res5MaskHead(box_head),
        mask_predictor=MaskRCNNPredictor(res5_channels, 256, num_classes + 1),
    )
