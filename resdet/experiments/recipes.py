"""Which packaged recipe (``resdet/configs``) a training command starts from.

``resdet train-cls DATASET --depth N`` and ``resdet train-det DATASET --backbone NAME --head H``
name a recipe by the data set and the network; ``--config`` names a file or a packaged recipe
(``detectron2/faster_rcnn_R_50_FPN_1x``). The options then replace the recipe's network.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def packaged_config(relative: str) -> Path | None:
    """A recipe shipped in ``resdet/configs`` (None when there is no such file)."""
    path = Path(str(resources.files("resdet") / "configs" / relative))
    return path if path.is_file() else None


def recipe_file(config: Path | None, task: str) -> Path | None:
    """``config`` itself when it is a file (or None), else the packaged recipe
    ``<task>/<config>.yaml``; ValueError when it is neither."""
    if config is None or config.is_file():
        return config
    packaged = packaged_config(f"{task}/{str(config).removesuffix('.yaml')}.yaml")
    if packaged is None:
        raise ValueError(
            f"config {config} is neither a file nor a packaged recipe (resdet/configs/{task}/); "
            "e.g. detectron2/faster_rcnn_R_50_FPN_1x"
        )
    return packaged


def cls_recipe(dataset: str, net: str | None) -> Path:
    """``cls/<set>_<net>.yaml`` (e.g. ``cifar10_resnet110``) when there is one, else the set's
    ``_base`` file; folder sets take ImageNet's recipe."""
    family = "imagenet" if dataset.startswith("folder:") else dataset
    recipe = (net and packaged_config(f"cls/{family}_{net}.yaml")) or packaged_config(
        f"cls/{family}_base.yaml"
    )
    if recipe is None:
        raise ValueError(f"no packaged recipe for {dataset!r}; pass --config FILE")
    return recipe


def det_recipe(dataset: str, backbone: str | None, head: str | None, *, masks: bool) -> Path:
    """The packaged recipe for a data set, backbone and head.

    ``det/<set>_<faster|mask>_rcnn_r<depth>_<head>.yaml`` when there is one (the head defaults
    to the paper's C4 for boxes, FPN for masks), else the data set's ``_base`` file, whose
    backbone and head the options then replace.
    """
    if dataset == "shapes":
        recipe = packaged_config(f"det/shapes{'_segm' if masks else ''}.yaml")
    else:
        family = "coco_format" if dataset.startswith("coco-format:") else dataset
        family = "voc0712" if family.startswith("voc") else family
        kind = "mask" if masks else "faster"
        head = head or ("fpn" if masks else "c4")
        depth = (
            backbone.removeprefix("resnet") if backbone and backbone.startswith("resnet") else None
        )
        specific = f"det/{family}_{kind}_rcnn_r{depth}_{head}.yaml" if depth else None
        recipe = (specific and packaged_config(specific)) or packaged_config(
            f"det/{family}_base.yaml"
        )
    if recipe is None:
        raise ValueError(f"no packaged recipe for {dataset!r}; pass --config FILE")
    return recipe
