"""ImageNet ResNets and their plain counterparts (paper Table 1)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from resdet.models.blocks import BasicBlock, Block, Bottleneck, NormLayer, Shortcut, StagedNet


@dataclass(frozen=True)
class StackSpec:
    """One row of paper Table 1: the block type and the number of blocks per stage."""

    block: Block
    stages: tuple[int, ...]


IMAGENET_SPECS: dict[int, StackSpec] = {
    18: StackSpec(BasicBlock, (2, 2, 2, 2)),
    34: StackSpec(BasicBlock, (3, 4, 6, 3)),
    50: StackSpec(Bottleneck, (3, 4, 6, 3)),
    101: StackSpec(Bottleneck, (3, 4, 23, 3)),
    152: StackSpec(Bottleneck, (3, 8, 36, 3)),
}


class ResNet(StagedNet):
    """ImageNet ResNet (``residual=True``) or plain net of paper Table 1.

    Input [B, 3, H, W] (224x224 in the paper) -> logits [B, num_classes]. Stage outputs
    ``res2``..``res5`` have strides 4/8/16/32 and 64/128/256/512 x expansion channels.
    """

    def __init__(
        self,
        spec: StackSpec,
        *,
        num_classes: int = 1000,
        residual: bool = True,
        shortcut: Shortcut = "B",
        stride_in_1x1: bool = True,
        zero_init_residual: bool = False,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self._add_stages(
            spec.block,
            64,
            (64, 128, 256, 512),
            spec.stages,
            stem_stride=4,
            num_classes=num_classes,
            residual=residual,
            shortcut=shortcut,
            stride_in_1x1=stride_in_1x1,
            norm_layer=norm_layer,
            zero_init_residual=zero_init_residual,
        )

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """conv1 + BN + ReLU + max pool: [B, 3, H, W] -> [B, 64, H/4, W/4]."""
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))
