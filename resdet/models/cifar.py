"""CIFAR-10 ResNets and plain nets with 6n+2 layers (paper section 4.2)."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from resdet.models.blocks import BasicBlock, NormLayer, Shortcut, init_weights, make_stage

# depth -> n, the number of blocks in each of the three stages (depth = 6n + 2)
CIFAR_DEPTHS: dict[int, int] = {20: 3, 32: 5, 44: 7, 56: 9, 110: 18, 1202: 200}


class CifarResNet(nn.Module):
    """3x3 conv (16) then three stages of 2n 3x3 layers on 32/16/8 maps with 16/32/64 filters.

    Input [B, 3, 32, 32] -> logits [B, num_classes]. Stage outputs ``res2``..``res4`` have
    strides 1/2/4 and 16/32/64 channels. Option A shortcuts keep the parameter count equal to
    the plain net's.
    """

    def __init__(
        self,
        n: int,
        *,
        num_classes: int = 10,
        residual: bool = True,
        shortcut: Shortcut = "A",
        zero_init_residual: bool = False,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, padding=1, bias=False)
        self.bn1 = norm_layer(16)
        self.relu = nn.ReLU(inplace=True)
        in_planes = 16
        self.feature_info: dict[str, tuple[int, int]] = {}
        for i, planes in enumerate((16, 32, 64)):
            stage = make_stage(
                BasicBlock,
                in_planes,
                planes,
                n,
                stride=1 if i == 0 else 2,
                residual=residual,
                shortcut=shortcut,
                norm_layer=norm_layer,
                stride_in_1x1=True,
            )
            self.add_module(f"layer{i + 1}", stage)
            in_planes = planes
            self.feature_info[f"res{i + 2}"] = (planes, 2**i)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        init_weights(self, zero_init_residual)

    @property
    def stages(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3]

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """The first 3x3 conv + BN + ReLU: [B, 3, H, W] -> [B, 16, H, W]."""
        return self.relu(self.bn1(self.conv1(x)))

    def forward_features(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        """Stage outputs ``res2``..``res4`` ([B, C_k, H/s_k, W/s_k], see ``feature_info``)."""
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
