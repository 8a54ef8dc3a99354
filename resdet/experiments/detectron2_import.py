"""``resdet weights import --format detectron2``: backbones into the store, detectors into
checkpoints that ``resdet eval``, ``predict`` and ``train-det --set model.init=...`` take.

A detector is given detectron2's conventions (``RCNNConventions.detectron2``) and its test
settings (``Base-RCNN-C4.yaml`` / ``Base-RCNN-FPN.yaml``: shorter side 800, longer at most 1333;
C4 keeps 6000 proposals before NMS and 1000 after, FPN 1000 per level and 1000 after), so that
it gives detectron2's detections from the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from resdet.data.catalog import VOC_SETS
from resdet.data.options import DetSizes
from resdet.engine.checkpoint import save_checkpoint
from resdet.experiments.common import checkpoint_meta
from resdet.experiments.configs import DetExperiment, DetModelConfig
from resdet.experiments.detection import build_model, model_signature
from resdet.models.conventions import RCNNConventions
from resdet.models.detectron2_io import (
    DETECTRON2_INPUT,
    Detectron2Layout,
    InputConvention,
    backbone_state,
    detector_state,
    read_detectron2,
)
from resdet.models.factory import Variant
from resdet.models.rcnn_settings import RPNSettings
from resdet.models.weights import WeightEntry, add_weights


@dataclass(frozen=True)
class Detectron2Import:
    """What an import produced: a store entry (backbones) or a checkpoint path (detectors)."""

    entry: WeightEntry | None = None
    checkpoint: Path | None = None
    layout: Detectron2Layout | None = None


def import_detectron2(
    path: str | Path,
    *,
    tag: str | None = None,
    out: Path | None = None,
    dataset: str = "coco",
    class_names: list[str] | None = None,
    convention: InputConvention = DETECTRON2_INPUT,
    stride_in_1x1: bool = True,
    force: bool = False,
) -> Detectron2Import:
    """Import a detectron2 ``.pth``/``.pkl`` file: an ImageNet backbone into the weight store
    under ``tag``, a detector into the resdet checkpoint ``out``.

    ``stride_in_1x1`` is detectron2's RESNETS.STRIDE_IN_1X1 (True for the MSRA models, False
    for torchvision-converted ones); ``convention`` its input format and PIXEL_STD. A detector's
    classes are ``class_names``, or those of ``dataset`` (COCO's 80, VOC's 20).
    """
    path = Path(path).expanduser()
    tensors = read_detectron2(path)
    if "roi_heads.box_predictor.cls_score.weight" not in tensors:
        if tag is None:
            raise ValueError(f"{path} is an ImageNet backbone: give the store entry a --tag")
        arch, state = backbone_state(tensors, convention)
        entry = add_weights(
            arch,
            state,
            tag=tag,
            variant=Variant("B", stride_in_1x1),
            num_classes=state["fc.weight"].shape[0] if "fc.weight" in state else 1000,
            dataset="imagenet",
            metrics={},
            source=f"detectron2 {path.name} ({convention.input_format} 0..255 input, pixel std "
            f"{list(convention.pixel_std)}; conv1 converted to RGB ImageNet-normalised input)",
            force=force,
        )
        return Detectron2Import(entry=entry)
    layout, state = detector_state(tensors, convention)
    names = _class_names(dataset, class_names, layout.num_classes)
    cfg = detectron2_experiment(layout, dataset, stride_in_1x1)
    _check_fits(cfg, layout, state, path)
    out = Path(out) if out is not None else Path(f"{path.stem}.pt")
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; pass --force to overwrite it or choose another --out")
    meta = checkpoint_meta(cfg, "det", model_signature(cfg), cfg.data.dataset)
    meta["class_names"] = names
    meta["source"] = f"detectron2 {path.name}"
    save_checkpoint(out, {"model": state, "meta": meta})
    return Detectron2Import(checkpoint=out, layout=layout)


def detectron2_experiment(
    layout: Detectron2Layout, dataset: str, stride_in_1x1: bool
) -> DetExperiment:
    """A detection config that builds ``layout`` as detectron2 builds and tests it."""
    c4 = layout.head == "c4"
    model = DetModelConfig(
        backbone=layout.arch,
        head=layout.head,
        masks=layout.masks,
        backbone_weights=None,
        stride_in_1x1=stride_in_1x1,
        rpn=RPNSettings(
            anchor_sizes=(32, 64, 128, 256, 512),
            aspect_ratios=(0.5, 1.0, 2.0),
            pre_nms_top_n_train=12000 if c4 else 2000,
            post_nms_top_n_train=2000 if c4 else 1000,
            pre_nms_top_n_test=6000 if c4 else 1000,
            post_nms_top_n_test=1000,
        ),
        conventions=RCNNConventions.detectron2(layout.head),
    )
    base = DetExperiment()
    sizes = DetSizes(min_size=(800,), max_size=1333, keep_empty=False)
    return replace(
        base,
        model=model,
        data=replace(base.data, dataset=dataset, sizes=sizes),
        # channels-last is a memory order (faster convolutions on CPU), not a numerical choice
        train=replace(base.train, amp="fp32", channels_last=True),
    )


def _class_names(dataset: str, given: list[str] | None, count: int) -> list[str]:
    from resdet.data.coco import COCO_CLASSES
    from resdet.data.voc import VOC_CLASSES

    names = given or (
        list(COCO_CLASSES)
        if dataset == "coco"
        else list(VOC_CLASSES)
        if dataset in VOC_SETS
        else None
    )
    if names is None:
        raise ValueError(f"give the class names of {dataset} (--class-names a,b,c)")
    if len(names) != count:
        raise ValueError(
            f"the detector has {count} classes but {len(names)} class names were given "
            f"({'--class-names' if given else dataset}); name one per class"
        )
    return names


def _check_fits(cfg: DetExperiment, layout: Detectron2Layout, state: dict, path: Path) -> None:
    with torch.device("meta"):
        model = build_model(cfg, layout.num_classes, backbone_weights=None)
    expected = {
        k: v.shape for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")
    }
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k} {list(state[k].shape)} vs {list(s)}"
        for k, s in expected.items()
        if k in state and state[k].shape != s
    ]
    if missing or unexpected or shapes:
        raise ValueError(
            f"{path} does not convert into resdet's {layout.arch}-{layout.head} detector: missing "
            f"{missing[:5]}, unexpected {unexpected[:5]}, shapes {shapes[:5]}"
        )
