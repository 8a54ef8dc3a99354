"""Anchors as detectron2 places them: exact sizes and the levels' own strides.

torchvision's ``AnchorGenerator`` rounds each base anchor to whole pixels (a 32-pixel anchor of
aspect 0.5 becomes 46 x 22 instead of 45.25 x 22.63) and infers each level's stride as
``padded image size // feature map size``, which is 15 rather than 16 for a C4 map of an
unpadded 600-pixel image. detectron2's ``DefaultAnchorGenerator`` (offset 0) does neither.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList


class ExactAnchorGenerator(AnchorGenerator):
    """``AnchorGenerator`` (same sizes, aspect ratios, anchor order and output) with unrounded
    base anchors placed at fixed ``strides`` (pixels, one per feature level).

    A base anchor of size s and aspect ratio r (height / width) is ``[-w/2, -h/2, w/2, h/2]``
    with ``w = s / sqrt(r)`` and ``h = s * sqrt(r)``; anchors of level l sit at
    ``(x * stride_l, y * stride_l)`` for every feature-map cell (x, y).
    """

    def __init__(
        self,
        sizes: tuple[tuple[int, ...], ...],
        aspect_ratios: tuple[tuple[float, ...], ...],
        strides: tuple[int, ...],
    ) -> None:
        super().__init__(sizes, aspect_ratios)
        if len(strides) != len(sizes):
            raise ValueError(f"one stride per level: {len(sizes)} levels, strides {strides}")
        self.strides = tuple(int(s) for s in strides)

    def generate_anchors(
        self,
        scales: list[int],
        aspect_ratios: list[float],
        dtype: torch.dtype = torch.float32,
        device: torch.device | None = None,
    ) -> Tensor:
        """[len(aspect_ratios) * len(scales), 4] base anchors, aspect-ratio major, unrounded."""
        scales_t = torch.as_tensor(scales, dtype=torch.float64)
        heights = torch.as_tensor(aspect_ratios, dtype=torch.float64).sqrt()
        ws = (scales_t[None, :] / heights[:, None]).reshape(-1)
        hs = (scales_t[None, :] * heights[:, None]).reshape(-1)
        anchors = torch.stack([-ws, -hs, ws, hs], dim=1) / 2
        return anchors.to(dtype=dtype, device=device)

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        """One [sum over levels of H_l * W_l * A_l, 4] tensor of xyxy anchors per image."""
        if len(feature_maps) != len(self.strides):
            raise ValueError(
                f"{len(feature_maps)} feature maps for {len(self.strides)} anchor levels"
            )
        device = feature_maps[0].device
        self.set_cell_anchors(feature_maps[0].dtype, device)
        strides = [
            [torch.tensor(s, device=device), torch.tensor(s, device=device)] for s in self.strides
        ]
        grid = self.grid_anchors([f.shape[-2:] for f in feature_maps], strides)
        return [torch.cat(grid) for _ in image_list.image_sizes]
