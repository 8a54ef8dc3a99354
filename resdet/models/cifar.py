"""CIFAR-10 ResNets and plain nets with 6n+2 layers (paper section 4.2)."""

from __future__ import annotations

import torch
from torch import nn

from resdet.models.blocks import BasicBlock, NormLayer, Shortcut, StagedNet

# depth -> n, the number of blocks in each of the three stages (depth = 6n + 2)
CIFAR_DEPTHS: dict[int, int] = {20: 3, 32: 5, 44: 7, 56: 9, 110: 18, 1202: 200}


class CifarResNet(StagedNet):
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
        self._add_stages(
            BasicBlock,
            16,
            (16, 32, 64),
            (n, n, n),
            stem_stride=1,
            num_classes=num_classes,
            residual=residual,
            shortcut=shortcut,
            stride_in_1x1=True,
            norm_layer=norm_layer,
            zero_init_residual=zero_init_residual,
        )

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """The first 3x3 conv + BN + ReLU: [B, 3, H, W] -> [B, 16, H, W]."""
        return self.relu(self.bn1(self.conv1(x)))
