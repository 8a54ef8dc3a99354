"""Residual and plain building blocks shared by the ImageNet and CIFAR families.

Module names follow torchvision's ``resnet.py`` (``conv1``, ``bn1``, ..., ``downsample``) so that
option-B state dicts load into torchvision's ResNet and back without renaming.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

NormLayer = Callable[[int], nn.Module]
Shortcut = Literal["A", "B", "C"]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution, padding 1, no bias (BN follows)."""
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution, no bias (BN follows)."""
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class ZeroPadShortcut(nn.Module):
    """Option A (paper section 3.3): identity with extra channels zero-padded, no parameters.

    Subsamples by taking every ``stride``-th pixel, the parameter-free counterpart of a strided
    1x1 projection. Input [B, C_in, H, W] -> [B, C_out, H/stride, W/stride].
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.extra_channels = out_planes - in_planes
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))


def make_shortcut(
    in_planes: int, out_planes: int, stride: int, shortcut: Shortcut, norm_layer: NormLayer
) -> nn.Module | None:
    """The shortcut branch for a block, or None for the plain identity.

    Option A pads with zeros where dimensions change, B projects only there, C projects always.
    """
    changes = stride != 1 or in_planes != out_planes
    if shortcut == "C" or (shortcut == "B" and changes):
        return nn.Sequential(conv1x1(in_planes, out_planes, stride), norm_layer(out_planes))
    if shortcut == "A" and changes:
        return ZeroPadShortcut(in_planes, out_planes, stride)
    return None


def set_stochastic_depth(net: nn.Module, rate: float) -> None:
    """Stochastic depth (Huang et al. 2016) as timm's ResNets have it (``drop_path_rate``): in
    training, residual block i of n drops its residual branch for each sample with probability
    ``rate * i / (n - 1)`` and scales the kept ones by ``1 / (1 - p)`` (torchvision's
    ``StochasticDepth``, row mode); evaluation is unchanged. No parameters are added, so state
    dicts are too. ``rate`` 0 removes it."""
    from torchvision.ops import StochasticDepth

    blocks = [m for m in net.modules() if isinstance(m, (BasicBlock, Bottleneck))]
    if rate and not any(block.residual for block in blocks):
        raise ValueError("stochastic depth drops residual branches, and a plain net has none")
    if not 0 <= rate < 1:
        raise ValueError(f"the stochastic depth rate is in [0, 1), got {rate}")
    for i, block in enumerate(blocks):
        p = rate * i / max(len(blocks) - 1, 1)
        block.drop_path = StochasticDepth(p, "row") if p > 0 else nn.Identity()


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (paper Fig. 2 left); ``residual=False`` makes the plain counterpart."""

    expansion = 1

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int,
        *,
        residual: bool,
        shortcut: Shortcut,
        norm_layer: NormLayer,
        stride_in_1x1: bool = True,
    ) -> None:
        super().__init__()
        del stride_in_1x1  # a basic block has no 1x1 conv; the keyword keeps one block signature
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self.residual = residual
        self.downsample = (
            make_shortcut(in_planes, planes, stride, shortcut, norm_layer) if residual else None
        )
        self.drop_path: nn.Module = nn.Identity()  # set_stochastic_depth

    def last_norm(self) -> nn.Module:
        """The residual branch's last norm layer (zeroed by ``zero_init_residual``)."""
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out = self.drop_path(out)
            out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand by 4 (paper Fig. 5 right).

    ``stride_in_1x1=True`` puts the stride on the first 1x1 conv as in the paper and the MSRA
    release; False puts it on the 3x3 conv as torchvision does ("ResNet v1.5").
    """

    expansion = 4

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int,
        *,
        residual: bool,
        shortcut: Shortcut,
        norm_layer: NormLayer,
        stride_in_1x1: bool = True,
    ) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = conv1x1(in_planes, planes, stride_1x1)
        self.bn1 = norm_layer(planes)
        self.conv2 = conv3x3(planes, planes, stride_3x3)
        self.bn2 = norm_layer(planes)
        self.conv3 = conv1x1(planes, out_planes)
        self.bn3 = norm_layer(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.residual = residual
        self.downsample = (
            make_shortcut(in_planes, out_planes, stride, shortcut, norm_layer) if residual else None
        )
        self.drop_path: nn.Module = nn.Identity()  # set_stochastic_depth

    def last_norm(self) -> nn.Module:
        """The residual branch's last norm layer (zeroed by ``zero_init_residual``)."""
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.residual:
            out = self.drop_path(out)
            out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


Block = type[BasicBlock] | type[Bottleneck]


def make_stage(
    block: Block,
    in_planes: int,
    planes: int,
    depth: int,
    stride: int,
    *,
    residual: bool,
    shortcut: Shortcut,
    norm_layer: NormLayer,
    stride_in_1x1: bool,
) -> nn.Sequential:
    """``depth`` blocks; the first one changes width and applies ``stride``."""
    layers = []
    for i in range(depth):
        layers.append(
            block(
                in_planes if i == 0 else planes * block.expansion,
                planes,
                stride if i == 0 else 1,
                residual=residual,
                shortcut=shortcut,
                norm_layer=norm_layer,
                stride_in_1x1=stride_in_1x1,
            )
        )
    return nn.Sequential(*layers)


def init_weights(model: nn.Module, zero_init_residual: bool) -> None:
    """He initialisation (paper section 3.4, fan-out as torchvision); BN scale 1, shift 0.

    ``zero_init_residual`` starts each residual branch at zero (Goyal et al. 2017), so every
    block begins as the identity.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if zero_init_residual:
        for m in model.modules():
            if isinstance(m, (BasicBlock, Bottleneck)) and m.residual:
                norm = m.last_norm()
                if isinstance(norm, nn.BatchNorm2d):
                    nn.init.zeros_(norm.weight)


class StagedNet(nn.Module):
    """What the ImageNet and CIFAR nets share: a stem, stages ``layer1..layerN`` whose outputs
    are ``res2..res(N+1)``, global average pooling and a linear classifier.

    Subclasses build their stem modules first (the state dict keeps torchvision's order), then
    call ``_add_stages``, and define ``stem``.
    """

    feature_info: dict[str, tuple[int, int]]  # "res<k>": (channels, stride)

    def _add_stages(
        self,
        block: Block,
        in_planes: int,
        widths: tuple[int, ...],
        depths: tuple[int, ...],
        *,
        stem_stride: int,
        num_classes: int,
        residual: bool,
        shortcut: Shortcut,
        stride_in_1x1: bool,
        norm_layer: NormLayer,
        zero_init_residual: bool,
    ) -> None:
        """Stages of ``depths`` blocks of ``widths`` filters (stride 2 from the second on),
        the classifier, and He initialisation of the whole net."""
        self.feature_info = {}
        for i, (planes, depth) in enumerate(zip(widths, depths, strict=True)):
            stage = make_stage(
                block,
                in_planes,
                planes,
                depth,
                stride=1 if i == 0 else 2,
                residual=residual,
                shortcut=shortcut,
                norm_layer=norm_layer,
                stride_in_1x1=stride_in_1x1,
            )
            self.add_module(f"layer{i + 1}", stage)
            in_planes = planes * block.expansion
            self.feature_info[f"res{i + 2}"] = (in_planes, stem_stride * 2**i)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        init_weights(self, zero_init_residual)

    @property
    def stages(self) -> list[nn.Module]:
        """``layer1``.. in order (``res2``..)."""
        return [getattr(self, f"layer{i + 1}") for i in range(len(self.feature_info))]

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """The layers before ``layer1``; each net defines its own."""
        raise NotImplementedError

    def forward_features(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        """Stage outputs ``res2``.. ([B, C_k, H/s_k, W/s_k], see ``feature_info``)."""
        features: OrderedDict[str, torch.Tensor] = OrderedDict()
        x = self.stem(x)
        for name, stage in zip(self.feature_info, self.stages, strict=True):
            x = stage(x)
            features[name] = x
        return features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))
