"""Reading detectron2 checkpoints: its model zoo's detectors and the MSRA ImageNet backbones.

Files: ``.pth`` (read with ``torch.load(weights_only=True)``) and ``.pkl``, the pickled numpy
dicts of detectron2's model zoo (``{"model": {...}, "__author__": ...}``) and of Detectron /
Caffe2 (``{"blobs": {...}}`` or the bare dict, e.g. ``ImageNetPretrained/MSRA/R-50.pkl``), read
with resdet's restricted unpickler, so a crafted file runs no code.

Names map onto resdet's (torchvision's) as detectron2's own ``c2_model_loading`` and
``Res5ROIHeads`` / ``FPN`` / ``StandardRPNHead`` define them. Three things change beyond names:

- conv1 sees resdet's input (RGB in [0, 1], normalised by the ImageNet mean and std) instead
  of detectron2's (``input_format`` BGR or RGB in 0..255, minus ``PIXEL_MEAN``, divided by
  ``pixel_std``): its input channels are put in RGB order and scaled by ``255 x std / pixel_std``.
  This is exact when ``PIXEL_MEAN`` is 255 x the ImageNet mean, as in detectron2's defaults
  ([103.53, 116.28, 123.675] BGR).
- detectron2 puts the background logit last and has no background box or mask: the background
  row moves to the front and zero rows stand in for its box and mask.
- an RPN level with several anchor sizes orders its anchors size-major in detectron2 and
  aspect-ratio-major in torchvision: the RPN's output channels are reordered.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from resdet.data.cls_transforms import IMAGENET_STD
from resdet.data.safe_pickle import load_data_pickle
from resdet.models.resnet import IMAGENET_SPECS

__all__ = [
    "DETECTRON2_INPUT",
    "Detectron2Layout",
    "InputConvention",
    "backbone_state",
    "detector_state",
    "read_detectron2",
]


@dataclass(frozen=True)
class InputConvention:
    """What detectron2's conv1 was trained on: channel order and PIXEL_STD in that order."""

    input_format: Literal["BGR", "RGB"] = "BGR"
    pixel_std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        if self.input_format not in ("BGR", "RGB"):
            raise ValueError(f"input format must be BGR or RGB, got {self.input_format!r}")
        if len(self.pixel_std) != 3 or min(self.pixel_std) <= 0:
            raise ValueError(f"pixel_std must be three positive numbers, got {self.pixel_std}")


# detectron2's defaults and the MSRA models': BGR 0..255 minus the mean, std 1.
DETECTRON2_INPUT = InputConvention()


@dataclass(frozen=True)
class Detectron2Layout:
    """What a detectron2 detector state dict holds, read from its names and shapes."""

    arch: str  # resdet's name, e.g. "resnet50"
    head: Literal["c4", "fpn"]
    masks: bool
    num_classes: int  # object classes, without background
    anchors_per_location: int


def read_detectron2(path: Path) -> dict[str, Tensor]:
    """The tensors of a detectron2 ``.pth`` or ``.pkl`` file (see the module docstring)."""
    if not path.is_file():
        raise FileNotFoundError(f"detectron2 checkpoint {path} does not exist")
    if path.suffix == ".pkl":
        data = load_data_pickle(path, "detectron2 checkpoint", encoding="latin1")
    else:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises several types for unreadable or unsafe files
            raise ValueError(
                f"{path} is not a readable weights-only torch checkpoint: {error}"
            ) from None
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        data = data["model"]
    elif isinstance(data, dict) and isinstance(data.get("blobs"), dict):
        data = data["blobs"]
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path} holds no state dict (expected a dict of named arrays)")
    tensors = {}
    for name, value in data.items():
        if str(name).endswith("_momentum") or not isinstance(value, np.ndarray | Tensor):
            continue  # Caffe2's optimizer blobs; strings such as "__author__"
        tensors[str(name)] = (
            torch.as_tensor(np.asarray(value)) if isinstance(value, np.ndarray) else value
        )
    if not tensors:
        raise ValueError(f"{path} holds no arrays")
    return tensors


def backbone_state(
    tensors: Mapping[str, Tensor], convention: InputConvention = DETECTRON2_INPUT
) -> tuple[str, dict[str, Tensor]]:
    """An ImageNet ResNet (Caffe2 or detectron2 names) as ``(resdet arch, state dict)``."""
    names = dict(tensors)
    if "conv1_w" in names:  # Caffe2 / Detectron naming
        names = {_caffe2_name(k): v for k, v in names.items()}
        _add_missing_bn_statistics(names)
    state = {}
    for name, value in names.items():
        if name.startswith("fc."):
            state[name] = value
        elif name.startswith(("stem.", "res")):
            state[_block_name(name, path="")] = value
        else:
            raise ValueError(f"unexpected tensor {name!r} in an ImageNet backbone checkpoint")
    arch = _arch(state)
    state["conv1.weight"] = _to_resdet_input(state["conv1.weight"], convention)
    for key in [k for k in state if k.endswith("running_mean")]:
        # detectron2's FrozenBatchNorm2d has no batch counter; resdet's BatchNorm2d does
        state.setdefault(key.replace("running_mean", "num_batches_tracked"), torch.tensor(0))
    return arch, state


def detector_state(
    tensors: Mapping[str, Tensor], convention: InputConvention = DETECTRON2_INPUT
) -> tuple[Detectron2Layout, dict[str, Tensor]]:
    """A detectron2 Faster / Mask R-CNN (C4 or FPN) state dict in resdet's names."""
    if "roi_heads.box_predictor.cls_score.weight" not in tensors:
        raise ValueError("not a detectron2 detector: no roi_heads.box_predictor.cls_score")
    head = "fpn" if any(k.startswith("backbone.fpn_lateral") for k in tensors) else "c4"
    state: dict[str, Tensor] = {}
    for name, value in tensors.items():
        state[_detector_name(name, head)] = value
    num_classes = tensors["roi_heads.box_predictor.cls_score.weight"].shape[0] - 1
    _move_background_first(state, num_classes)
    anchors = state["rpn.head.cls_logits.weight"].shape[0]
    _reorder_anchors(state, anchors)
    arch = _arch({k.removeprefix("backbone.body."): v for k, v in state.items()} | _res5(state))
    conv1 = "backbone.body.conv1.weight"
    state[conv1] = _to_resdet_input(state[conv1], convention)
    masks = any(k.startswith("roi_heads.mask_predictor.") for k in state)
    return Detectron2Layout(arch, head, masks, num_classes, anchors), state


def _caffe2_name(name: str) -> str:
    """Caffe2 blob names (``res2_0_branch2a_bn_s``) -> detectron2 module names."""
    fixed = {
        "conv1_w": "stem.conv1.weight",
        "res_conv1_bn_s": "stem.conv1.norm.weight",
        "res_conv1_bn_b": "stem.conv1.norm.bias",
        "fc1000_w": "fc.weight",
        "fc1000_b": "fc.bias",
    }
    if name in fixed:
        return fixed[name]
    match = re.fullmatch(r"res(\d)_(\d+)_branch(1|2a|2b|2c)(_bn)?_([wsb])", name)
    if match is None:
        raise ValueError(f"unexpected Caffe2 blob {name!r} in an ImageNet ResNet")
    stage, block, branch, bn, kind = match.groups()
    layer = {"1": "shortcut", "2a": "conv1", "2b": "conv2", "2c": "conv3"}[branch]
    if bn:
        return f"res{stage}.{block}.{layer}.norm.{'weight' if kind == 's' else 'bias'}"
    return f"res{stage}.{block}.{layer}.weight"


def _add_missing_bn_statistics(names: dict[str, Tensor]) -> None:
    # Caffe2's affine BN has a scale and a bias only; detectron2 loads it with mean 0, var 1.
    for key in [k for k in names if k.endswith(".norm.weight")]:
        prefix = key.removesuffix("weight")
        names.setdefault(f"{prefix}running_mean", torch.zeros_like(names[key]))
        names.setdefault(f"{prefix}running_var", torch.ones_like(names[key]))


def _block_name(name: str, path: str) -> str:
    """detectron2 ResNet names (``stem.conv1.norm.weight``, ``res3.0.shortcut.weight``) ->
    torchvision's (``bn1.weight``, ``layer2.0.downsample.0.weight``), under ``path``."""
    if name.startswith("stem.conv1."):
        rest = name.removeprefix("stem.conv1.")
        return path + (
            f"bn1.{rest.removeprefix('norm.')}" if rest.startswith("norm.") else f"conv1.{rest}"
        )
    match = re.fullmatch(r"res(\d)\.(\d+)\.(conv\d|shortcut)\.(norm\.)?(\w+)", name)
    if match is None:
        raise ValueError(f"unexpected ResNet tensor {name!r} in a detectron2 checkpoint")
    stage, block, layer, norm, field = match.groups()
    if layer == "shortcut":
        part = "downsample.1" if norm else "downsample.0"
    else:
        part = f"bn{layer[-1]}" if norm else layer
    return f"{path}layer{int(stage) - 1}.{block}.{part}.{field}"


_HEAD_NAMES = {
    "proposal_generator.rpn_head.conv.": "rpn.head.conv.0.0.",
    "proposal_generator.rpn_head.objectness_logits.": "rpn.head.cls_logits.",
    "proposal_generator.rpn_head.anchor_deltas.": "rpn.head.bbox_pred.",
    "roi_heads.box_head.fc1.": "roi_heads.box_head.fc6.",
    "roi_heads.box_head.fc2.": "roi_heads.box_head.fc7.",
    "roi_heads.box_predictor.": "roi_heads.box_predictor.",
    "roi_heads.mask_head.deconv.": "roi_heads.mask_predictor.conv5_mask.",
    "roi_heads.mask_head.predictor.": "roi_heads.mask_predictor.mask_fcn_logits.",
}


def _detector_name(name: str, head: str) -> str:
    for old, new in _HEAD_NAMES.items():
        if name.startswith(old):
            return new + name.removeprefix(old)
    if match := re.fullmatch(r"roi_heads\.mask_head\.mask_fcn(\d)\.(\w+)", name):
        return f"roi_heads.mask_head.{int(match[1]) - 1}.0.{match[2]}"
    if match := re.fullmatch(r"backbone\.fpn_(lateral|output)(\d)\.(\w+)", name):
        blocks = "inner_blocks" if match[1] == "lateral" else "layer_blocks"
        return f"backbone.fpn.{blocks}.{int(match[2]) - 2}.0.{match[3]}"
    if head == "c4" and name.startswith("roi_heads.res5."):
        # res5 runs per RoI in C4's box head, which holds it as a bare Sequential of blocks
        block = _block_name(name.removeprefix("roi_heads."), path="")
        return "roi_heads.box_head.res5." + block.removeprefix("layer4.")
    body = name.removeprefix("backbone.bottom_up." if head == "fpn" else "backbone.")
    if body != name:
        return _block_name(body, "backbone.body.")
    raise ValueError(f"unexpected tensor {name!r} in a detectron2 {head.upper()} detector")


def _move_background_first(state: dict[str, Tensor], num_classes: int) -> None:
    """Background logit last -> first; zero rows for the background's box and mask."""
    for field in ("weight", "bias"):
        key = f"roi_heads.box_predictor.cls_score.{field}"
        state[key] = torch.cat([state[key][-1:], state[key][:-1]])
        key = f"roi_heads.box_predictor.bbox_pred.{field}"
        if state[key].shape[0] != 4 * num_classes:
            raise ValueError(
                f"bbox_pred has {state[key].shape[0]} rows, not 4 per class ({4 * num_classes}): "
                "class-agnostic box regression (CLS_AGNOSTIC_BBOX_REG) is not supported"
            )
        state[key] = torch.cat([torch.zeros_like(state[key][:4]), state[key]])
        key = f"roi_heads.mask_predictor.mask_fcn_logits.{field}"
        if key in state:
            state[key] = torch.cat([torch.zeros_like(state[key][:1]), state[key]])


def _reorder_anchors(state: dict[str, Tensor], anchors: int, ratios: int = 3) -> None:
    """detectron2 numbers anchor a = size * ratios + ratio; torchvision ratio * sizes + size."""
    if anchors % ratios:
        raise ValueError(f"{anchors} anchors per location are not a multiple of {ratios} ratios")
    sizes = anchors // ratios
    order = torch.tensor([s * ratios + r for r in range(ratios) for s in range(sizes)])
    for name, per_anchor in (("cls_logits", 1), ("bbox_pred", 4)):
        channels = (order[:, None] * per_anchor + torch.arange(per_anchor)).reshape(-1)
        for field in ("weight", "bias"):
            key = f"rpn.head.{name}.{field}"
            state[key] = state[key][channels]


def _res5(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """C4's res5 tensors under ResNet names, so that the depth can be read from all stages."""
    prefix = "roi_heads.box_head.res5."
    return {f"layer4.{k.removeprefix(prefix)}": v for k, v in state.items() if k.startswith(prefix)}


def _arch(state: Mapping[str, Tensor]) -> str:
    """``resnet<depth>`` from the number of blocks per stage and the block type."""
    blocks = tuple(
        len({k.split(".")[1] for k in state if k.startswith(f"layer{stage}.")})
        for stage in range(1, 5)
    )
    bottleneck = any(k.endswith("conv3.weight") for k in state)
    for depth, spec in IMAGENET_SPECS.items():
        if spec.stages == blocks and (spec.block.__name__ == "Bottleneck") == bottleneck:
            return f"resnet{depth}"
    raise ValueError(f"no ResNet of resdet has {blocks} blocks per stage")


def _to_resdet_input(weight: Tensor, convention: InputConvention) -> Tensor:
    """conv1 weights [64, 3, 7, 7] for resdet's RGB, ImageNet-normalised input."""
    if convention.input_format == "BGR":
        weight = weight.flip(1)
    std = convention.pixel_std[::-1] if convention.input_format == "BGR" else convention.pixel_std
    scale = torch.tensor([255 * s / p for s, p in zip(IMAGENET_STD, std, strict=True)])
    return weight * scale.to(weight.dtype)[None, :, None, None]
