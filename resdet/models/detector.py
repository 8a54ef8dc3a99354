"""Faster R-CNN and Mask R-CNN (torchvision's modules) around a registry ResNet backbone.

Two head layouts: ``c4`` as in the paper's Appendix A (see ``resdet.models.c4``) and ``fpn`` as in
torchvision's ``fasterrcnn_resnet50_fpn`` / ``maskrcnn_resnet50_fpn``, whose parameter names it
keeps, so torchvision detection state dicts load strictly into resdet's R50-FPN built with
``stride_in_1x1=False``. The model keeps torchvision's contract: ``model(images, targets)`` in
training mode returns ``loss_classifier``, ``loss_box_reg``, ``loss_objectness``,
``loss_rpn_box_reg`` (and ``loss_mask``); in eval mode ``model(images)`` returns one
``{"boxes": [N, 4] xyxy in input pixels, "labels": [N] int64 in 1..K, "scores": [N]
(, "masks": [N, 1, H, W] probabilities)}`` per image. Images are float [3, H, W] RGB in [0, 1];
normalisation with the ImageNet mean/std and resizing happen inside the model.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import FrozenBatchNorm2d

from resdet.data.cls_transforms import IMAGENET_MEAN, IMAGENET_STD
from resdet.models.api import create_model
from resdet.models.blocks import Shortcut
from resdet.models.c4 import DetectorParts, c4_parts
from resdet.models.conventions import TORCHVISION, RCNNConventions, init_heads_as_detectron2
from resdet.models.factory import get_spec
from resdet.models.fpn import FPN_CHANNELS, fpn_parts
from resdet.models.mask_paste import RCNNTransform
from resdet.models.rcnn import Detector, DetectorInfo, Head
from resdet.models.rcnn_heads import RPN, BoxMaskHeads
from resdet.models.rcnn_settings import RoIHeadSettings, RPNSettings
from resdet.models.resnet import ResNet

__all__ = [
    "FusedFrozenBatchNorm2d",
    "build_detector",
    "freeze_stages",
    "load_detector_state",
    "resolve_backbone_weights",
]

DEFAULT_RPN = RPNSettings()
DEFAULT_ROI_HEADS = RoIHeadSettings()
# torchvision's trainable_backbone_layers order: the last k of these names are trained.
_STAGES_TOP_DOWN = ("layer4", "layer3", "layer2", "layer1", "conv1")
# Layers whose shape depends on the number of classes; only they may differ on loading.
_PREDICTOR_KEYS = (
    "roi_heads.box_predictor.cls_score.",
    "roi_heads.box_predictor.bbox_pred.",
    "roi_heads.mask_predictor.mask_fcn_logits.",
)


def build_detector(
    backbone: str,
    *,
    head: Head,
    num_classes: int,
    masks: bool = False,
    backbone_weights: str | Path | None = "auto",
    trainable_stages: int = 3,
    frozen_bn: bool = True,
    shortcut: Shortcut | None = None,
    stride_in_1x1: bool | None = None,
    channels_last: bool = True,
    min_size: int | tuple[int, ...] = 800,
    max_size: int = 1333,
    rpn: RPNSettings = DEFAULT_RPN,
    roi_heads: RoIHeadSettings = DEFAULT_ROI_HEADS,
    conventions: RCNNConventions = TORCHVISION,
    train_resize: bool = True,
    fpn_channels: int = FPN_CHANNELS,
) -> Detector:
    """Faster R-CNN (``masks=False``) or Mask R-CNN on the registry backbone ``backbone``.

    ``backbone`` is an ImageNet-family name (resnet18..152, plain18..152); ``num_classes``
    counts object classes without background (labels run 1..num_classes).
    ``backbone_weights``: ``"auto"`` takes the ImageNet weights of that arch that
    `resolve_backbone_weights` picks from the weight store and warns (``UserWarning``) when
    there are none; ``None`` starts from random
    initialisation silently; any other value is a store tag or a ``.safetensors`` path.
    ``trainable_stages`` (0..5, torchvision's ``trainable_backbone_layers``) trains res5, res4,
    ... down to the stem; the default 3 freezes the stem and res2 as the paper and detectron2.
    ``frozen_bn`` uses ``FusedFrozenBatchNorm2d`` (ImageNet statistics and affine kept fixed).
    ``shortcut``/``stride_in_1x1`` choose the layout when there are no weights (the weights'
    own layout otherwise). ``channels_last`` runs the convolutions in channels-last memory
    order (faster on CPU; outputs equal up to float rounding).

    ``min_size`` (one value, or several for random multi-scale training) and ``max_size`` are
    the resize limits in pixels. ``rpn`` and ``roi_heads`` (``resdet.models.rcnn_settings``)
    are the anchors, proposal counts, sampling, head widths and test thresholds, with
    torchvision's defaults. ``conventions`` chooses
    between torchvision's and detectron2's ways where they differ (RoIAlign alignment and
    sample points, anchor rounding, padding, box-loss beta, head initialisation; see
    ``resdet.models.conventions``); the default is torchvision's. RoIAlign is computed as one
    gather on CPU (``resdet.models.roi_align``, 4-7x faster there to train). ``train_resize=False``
    skips the model's resize in training, for data pipelines that resize (and draw the
    multi-scale size) themselves, as resdet's do. ``fpn_channels`` is the pyramid's width (FPN
    head only; 256 in the paper, detectron2 and torchvision).

    The model's ``info`` (``resdet.models.rcnn.DetectorInfo``) records the backbone, head,
    number of classes, masks and where the backbone weights came from.
    """
    if head not in ("c4", "fpn"):
        raise ValueError(f"head must be 'c4' or 'fpn', got {head!r}")
    if num_classes < 1:
        raise ValueError(
            f"num_classes counts object classes (without background), got {num_classes}"
        )
    if fpn_channels != FPN_CHANNELS and head != "fpn" or fpn_channels < 1:
        raise ValueError(
            f"fpn_channels={fpn_channels} is the FPN head's width (a positive number): "
            "drop it for head c4"
        )
    resnet, backbone_init = _registry_backbone(
        backbone, backbone_weights, shortcut, stride_in_1x1, frozen_bn
    )
    freeze_stages(resnet, trainable_stages)
    if head == "c4":
        parts = c4_parts(
            resnet,
            num_classes,
            masks,
            rpn.anchor_sizes,
            rpn.aspect_ratios,
            channels_last,
            roi_aligned=conventions.roi_aligned,
            anchor_rounding=conventions.anchor_rounding,
            sampling_ratio=conventions.roi_sampling_ratio,
        )
    else:
        parts = fpn_parts(
            resnet, num_classes, masks, rpn, roi_heads, channels_last, conventions, fpn_channels
        )
    info = DetectorInfo(backbone, head, num_classes, masks, backbone_init)
    model = Detector(
        parts.backbone,
        _rpn(parts, rpn, conventions),
        _roi_heads(parts, roi_heads, conventions),
        # ImageNet's RGB statistics in [0, 1] units, as resdet's classifiers train with.
        RCNNTransform(
            min_size,
            max_size,
            list(IMAGENET_MEAN),
            list(IMAGENET_STD),
            size_divisible=conventions.size_divisible,
            # The data pipeline already resized each training image (multi-scale draws
            # included); torchvision's own random resize would resize it a second time.
            skip_resize=not train_resize,
            mask_paste=conventions.mask_paste,
        ),
        info,
    )
    # Box coordinates decoded in bf16 land on 2-8 px steps at 600-1333 px; the heads' outputs
    # feed that decoding, so they are handed on in float32 even under autocast.
    for module in (model.rpn.head, model.roi_heads.box_predictor):
        module.register_forward_hook(_outputs_to_float32)
    if conventions.head_init == "detectron2":
        init_heads_as_detectron2(model)
    return model


def _rpn(parts: DetectorParts, settings: RPNSettings, conventions: RCNNConventions) -> RPN:
    generator = parts.anchor_generator
    return RPN(
        generator,
        RPNHead(parts.backbone.out_channels, generator.num_anchors_per_location()[0]),
        fg_iou_thresh=settings.fg_iou_thresh,
        bg_iou_thresh=settings.bg_iou_thresh,
        batch_size_per_image=settings.batch_size_per_image,
        positive_fraction=settings.positive_fraction,
        pre_nms_top_n=settings.top_n("pre_nms"),
        post_nms_top_n=settings.top_n("post_nms"),
        nms_thresh=settings.nms_thresh,
        box_loss_beta=conventions.rpn_box_loss_beta,
    )


def _roi_heads(
    parts: DetectorParts, settings: RoIHeadSettings, conventions: RCNNConventions
) -> BoxMaskHeads:
    return BoxMaskHeads(
        parts.box_roi_pool,
        parts.box_head,
        parts.box_predictor,
        fg_iou_thresh=settings.fg_iou_thresh,
        bg_iou_thresh=settings.bg_iou_thresh,
        batch_size_per_image=settings.batch_size_per_image,
        positive_fraction=settings.positive_fraction,
        bbox_reg_weights=None,  # torchvision's (10, 10, 5, 5), as detectron2's
        score_thresh=settings.score_thresh,
        nms_thresh=settings.nms_thresh,
        detections_per_img=settings.detections_per_img,
        mask_roi_pool=parts.mask_roi_pool,
        mask_head=parts.mask_head,
        mask_predictor=parts.mask_predictor,
        box_loss_beta=conventions.roi_box_loss_beta,
    )


def _outputs_to_float32(module: nn.Module, inputs: object, outputs: object) -> object:
    """Forward hook: the module's tensors (nested in tuples/lists) as float32."""
    if isinstance(outputs, torch.Tensor):
        return outputs.float()
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(_outputs_to_float32(module, inputs, o) for o in outputs)
    return outputs


def resolve_backbone_weights(
    arch: str, backbone_weights: str | Path | None
) -> tuple[str | Path | None, str]:
    """The weights to build ``arch`` with (tag, path or None) and a sentence saying which and why.

    ``"auto"`` takes `resdet.models.weight_defaults.choose_imagenet_weights` (the store's default, else
    the best recorded top-1 error, else the newest ImageNet entry); with none stored it returns
    None and a sentence saying how to get weights (the caller warns).
    """
    from resdet.models.weight_defaults import choose_imagenet_weights
    from resdet.models.weights import find_weights, store_root

    if backbone_weights is None:
        return None, f"{arch} backbone starts from random initialisation (backbone_weights=None)"
    if backbone_weights != "auto":
        entry = find_weights(arch, backbone_weights)
        return backbone_weights, (
            f"{arch} backbone weights: {entry.tag!r} (sha256 {entry.sha256[:12]}, {entry.path}), "
            "as configured"
        )
    entry, why = choose_imagenet_weights(arch)
    if entry is not None:
        return entry.tag, (
            f"{arch} backbone weights: ImageNet {entry.tag!r} (sha256 {entry.sha256[:12]}, "
            f"{entry.path}), {why}"
        )
    spec = get_spec(arch)
    how = f"train them with `resdet train-cls imagenet --depth {spec.depth}`"
    if spec.residual:
        how += (
            f" or import torchvision's with `resdet weights import PATH --arch {arch} "
            "--format torchvision --tag TAG`"
        )
    return None, (
        f"no ImageNet weights for {arch} in the weight store ({store_root() / arch}): the "
        f"backbone starts from random initialisation. To start from ImageNet, {how}. To train "
        "from scratch on purpose, pass backbone_weights=None (and consider frozen_bn=False, "
        "trainable_stages=5: frozen BN with random init normalises nothing)"
    )


def freeze_stages(resnet: nn.Module, trainable_stages: int) -> None:
    """Stop gradients to all but the last ``trainable_stages`` of res5, res4, res3, res2, stem.

    Same rule as torchvision's ``trainable_backbone_layers`` (0..5; 5 also trains ``bn1``);
    the classifier ``fc`` is never trained here. Acts on ``requires_grad`` in place.
    """
    if not 0 <= trainable_stages <= len(_STAGES_TOP_DOWN):
        raise ValueError(
            f"trainable_stages must be 0..5 (stages trained from res5 down to the stem), "
            f"got {trainable_stages}"
        )
    trained = set(_STAGES_TOP_DOWN[:trainable_stages])
    if trainable_stages == len(_STAGES_TOP_DOWN):
        trained.add("bn1")
    for name, parameter in resnet.named_parameters():
        if name.split(".")[0] not in trained:
            parameter.requires_grad_(False)


def load_detector_state(model: Detector, state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Load a detection state dict into ``model``; returns messages for the user to read.

    When only the number of classes differs, the class-dependent predictor layers
    (``cls_score``, ``bbox_pred``, ``mask_fcn_logits``) are re-initialised as torchvision
    initialises them, everything else is loaded, and the message names both class counts.
    BN batch counters may be absent or extra (FrozenBatchNorm2d has none). Any other
    missing, unexpected or mis-shaped key raises ValueError naming the keys.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict and not _is_bn_counter(k)]
    unexpected = [k for k in state_dict if k not in own and not _is_bn_counter(k)]
    reshaped = [k for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    others = [k for k in reshaped if not k.startswith(_PREDICTOR_KEYS)]
    if missing or unexpected or others:
        problems = [
            f"{label}: {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
            for label, keys in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                (
                    "shape mismatches (checkpoint vs model)",
                    [f"{k} {list(state_dict[k].shape)} vs {list(own[k].shape)}" for k in others],
                ),
            )
            if keys
        ]
        raise ValueError(
            f"the state dict does not fit this {_describe(model)} detector ({'; '.join(problems)}); "
            "build the detector with the checkpoint's backbone, head and masks settings"
        )
    messages = []
    if reshaped:
        old = state_dict["roi_heads.box_predictor.cls_score.weight"].shape[0] - 1
        _reset_predictor(model)
        fresh = model.state_dict()
        state_dict = {
            k: fresh[k] if k.startswith(_PREDICTOR_KEYS) else v for k, v in state_dict.items()
        }
        messages.append(
            f"the checkpoint has {old} object classes, the model {model.info.num_classes}: "
            "re-initialised the class-dependent predictor layers and loaded everything else"
        )
    # The keys were all checked above; strict=False only tolerates BN batch counters.
    model.load_state_dict(state_dict, strict=False)
    return messages


class FusedFrozenBatchNorm2d(FrozenBatchNorm2d):
    """torchvision's ``FrozenBatchNorm2d`` (same buffers, state dict and ``isinstance``) with
    one fused ``batch_norm`` kernel instead of a multiply and an add.

    [B, C, H, W] -> same shape, memory order and dtype. Measured on this project's 2-core CPU
    at [1, 256, 128, 171] channels-last: 18 -> 9 ms, outputs within 2e-6. Under bf16 autocast
    it keeps bf16 activations, where torchvision's version promotes them to float32.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )


def _registry_backbone(
    arch: str,
    backbone_weights: str | Path | None,
    shortcut: Shortcut | None,
    stride_in_1x1: bool | None,
    frozen_bn: bool,
) -> tuple[ResNet, str]:
    spec = get_spec(arch)
    if spec.family != "imagenet":
        raise ValueError(
            f"{arch} is a CIFAR network (32x32 inputs, 64 channels at stride 4): it cannot "
            "carry a detector; use an ImageNet-family backbone (resnet18..152 or plain18..152)"
        )
    weights, message = resolve_backbone_weights(arch, backbone_weights)
    if weights is None and backbone_weights == "auto":
        warnings.warn(message, stacklevel=3)
    resnet = create_model(
        arch,
        weights=weights,
        shortcut=shortcut,
        stride_in_1x1=stride_in_1x1,
        norm_layer=FusedFrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d,
    )
    assert isinstance(resnet, ResNet)  # ImageNet family, checked above
    return resnet, message


def _reset_predictor(model: Detector) -> None:
    box_predictor = model.roi_heads.box_predictor
    box_predictor.cls_score.reset_parameters()
    box_predictor.bbox_pred.reset_parameters()
    if model.roi_heads.has_mask():
        logits = model.roi_heads.mask_predictor.mask_fcn_logits
        logits.reset_parameters()
        # MaskRCNNPredictor's own initialisation of its weights (biases keep the default)
        nn.init.kaiming_normal_(logits.weight, mode="fan_out", nonlinearity="relu")


def _describe(model: Detector) -> str:
    kind = "Mask R-CNN" if model.info.masks else "Faster R-CNN"
    return f"{model.info.backbone}-{model.info.head} {kind} ({model.info.num_classes} classes)"


def _is_bn_counter(key: str) -> bool:
    return key.endswith("num_batches_tracked")
