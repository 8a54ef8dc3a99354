"""The model registry: every backbone by name and its facts (``create_model``, which builds
them with weights, is in ``resdet.models.api``)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from torch import nn

from resdet.models.blocks import Bottleneck, NormLayer, Shortcut
from resdet.models.cifar import CIFAR_DEPTHS, CifarResNet
from resdet.models.resnet import IMAGENET_SPECS, ResNet
from resdet.registry import Registry

Family = Literal["imagenet", "cifar"]


@dataclass(frozen=True)
class ModelSpec:
    """What a registered name stands for; ``resolve_variant`` adds the layout choices."""

    name: str
    family: Family
    depth: int
    residual: bool
    default_shortcut: Shortcut
    num_classes: int
    input_size: int

    @property
    def block(self) -> str:
        """``basic`` or ``bottleneck``."""
        if self.family == "cifar":
            return "basic"
        return "bottleneck" if IMAGENET_SPECS[self.depth].block is Bottleneck else "basic"


@dataclass(frozen=True)
class Variant:
    """Layout choices that change the weights a model can load (recorded in the weight store).

    ``shortcut`` is A, B or C (paper section 3.3; ignored by plain nets); ``stride_in_1x1``
    places the bottleneck's stride on the 1x1 conv (paper, MSRA) or on the 3x3 (torchvision).
    """

    shortcut: Shortcut
    stride_in_1x1: bool = True


MODELS: Registry[ModelSpec] = Registry("model", "resdet models")

for _depth in IMAGENET_SPECS:
    for _residual, _prefix in ((True, "resnet"), (False, "plain")):
        # The paper uses option A for its 18/34 comparison (Table 2) and B for deeper nets, but
        # B is what torchvision and the MSRA release ship, so B is the default everywhere.
        MODELS.register(
            f"{_prefix}{_depth}",
            ModelSpec(f"{_prefix}{_depth}", "imagenet", _depth, _residual, "B", 1000, 224),
        )
for _depth in CIFAR_DEPTHS:
    for _residual, _prefix in ((True, "cifar_resnet"), (False, "cifar_plain")):
        if not _residual and _depth == 1202:
            continue  # the paper trains no plain-1202
        MODELS.register(
            f"{_prefix}{_depth}",
            ModelSpec(f"{_prefix}{_depth}", "cifar", _depth, _residual, "A", 10, 32),
        )


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style wildcard, e.g. ``"cifar_*"``."""
    return MODELS.list(pattern)


def get_spec(name: str) -> ModelSpec:
    """The spec of a registered name; an unknown name lists the closest ones."""
    return MODELS.get(name)


def resolve_variant(
    spec: ModelSpec, shortcut: Shortcut | None = None, stride_in_1x1: bool | None = None
) -> Variant:
    """The spec's default layout with the given choices applied; bad values are errors."""
    variant = Variant(spec.default_shortcut)
    if shortcut is not None:
        if shortcut not in ("A", "B", "C"):
            raise ValueError(f"shortcut must be 'A', 'B' or 'C', got {shortcut!r}")
        variant = replace(variant, shortcut=shortcut)
    if stride_in_1x1 is not None:
        variant = replace(variant, stride_in_1x1=stride_in_1x1)
    return variant


def build_model(
    spec: ModelSpec,
    variant: Variant,
    *,
    num_classes: int | None = None,
    zero_init_residual: bool = False,
    norm_layer: NormLayer = nn.BatchNorm2d,
) -> ResNet | CifarResNet:
    """A freshly initialised network for ``spec`` in the ``variant`` layout."""
    if zero_init_residual and not spec.residual:
        raise ValueError(f"{spec.name} is a plain net: zero_init_residual needs residual blocks")
    classes = spec.num_classes if num_classes is None else num_classes
    if spec.family == "cifar":
        return CifarResNet(
            CIFAR_DEPTHS[spec.depth],
            num_classes=classes,
            residual=spec.residual,
            shortcut=variant.shortcut,
            zero_init_residual=zero_init_residual,
            norm_layer=norm_layer,
        )
    return ResNet(
        IMAGENET_SPECS[spec.depth],
        num_classes=classes,
        residual=spec.residual,
        shortcut=variant.shortcut,
        stride_in_1x1=variant.stride_in_1x1,
        zero_init_residual=zero_init_residual,
        norm_layer=norm_layer,
    )
