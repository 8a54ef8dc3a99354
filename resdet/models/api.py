"""The public model API: ``list_models``, ``create_model`` and ``model_info``."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from torch import nn

from resdet.models.blocks import NormLayer, Shortcut
from resdet.models.cifar import CifarResNet
from resdet.models.complexity import count_macs, count_params
from resdet.models.factory import Variant, build_model, get_spec, list_models, resolve_variant
from resdet.models.resnet import ResNet

__all__ = ["ModelInfo", "create_model", "list_models", "model_info"]


@dataclass(frozen=True)
class ModelInfo:
    """Facts about a registered model in one layout; ``macs`` at the family's input size."""

    name: str
    family: str
    depth: int
    block: str
    residual: bool
    shortcut: str
    stride_in_1x1: bool
    num_classes: int
    input_size: int
    params: int
    macs: int
    weights: tuple[str, ...]


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    weights: str | Path | None = None,
    shortcut: Shortcut | None = None,
    stride_in_1x1: bool | None = None,
    zero_init_residual: bool = False,
    norm_layer: NormLayer = nn.BatchNorm2d,
) -> ResNet | CifarResNet:
    """Build a registered network, optionally with weights from the store.

    ``weights`` is a tag in the weight store (``resdet weights list``) or a path to a
    ``.safetensors`` file with its manifest beside it; the model is then built in the layout the
    weights were trained with, and passing a conflicting ``shortcut``/``stride_in_1x1`` is an
    error. With ``num_classes`` different from the weights', the classifier (``fc``) is left
    freshly initialised and everything else is loaded.
    """
    spec = get_spec(name)
    if weights is None:
        variant = resolve_variant(spec, shortcut, stride_in_1x1)
        return build_model(
            spec,
            variant,
            num_classes=num_classes,
            zero_init_residual=zero_init_residual,
            norm_layer=norm_layer,
        )
    from resdet.models.weights import find_weights, load_into

    entry = find_weights(name, weights)
    for key, wanted in (("shortcut", shortcut), ("stride_in_1x1", stride_in_1x1)):
        stored = getattr(entry.variant, key)
        if wanted is not None and wanted != stored:
            raise ValueError(
                f"weights {entry.path} were trained with {key}={stored!r}, not {wanted!r}; "
                f"drop the {key} option or pick other weights"
            )
    model = build_model(
        spec,
        entry.variant,
        num_classes=entry.num_classes if num_classes is None else num_classes,
        norm_layer=norm_layer,
    )
    load_into(model, entry)
    return model


def model_info(
    name: str, *, shortcut: Shortcut | None = None, stride_in_1x1: bool | None = None
) -> ModelInfo:
    """Family, depth, block, parameter and multiply-add counts and stored weights of a model."""
    from resdet.models.weights import list_weights

    spec = get_spec(name)
    variant = resolve_variant(spec, shortcut, stride_in_1x1)
    params, macs = _complexity(name, variant)
    return ModelInfo(
        name=name,
        family=spec.family,
        depth=spec.depth,
        block=spec.block,
        residual=spec.residual,
        shortcut=variant.shortcut if spec.residual else "-",
        stride_in_1x1=variant.stride_in_1x1,
        num_classes=spec.num_classes,
        input_size=spec.input_size,
        params=params,
        macs=macs,
        weights=tuple(entry.tag for entry in list_weights(name)),
    )


@cache
def _complexity(name: str, variant: Variant) -> tuple[int, int]:
    spec = get_spec(name)
    # Counting needs only shapes: the meta device skips allocation and initialisation.
    with torch.device("meta"):
        model = build_model(spec, variant)
    return count_params(model), count_macs(model, spec.input_size)
