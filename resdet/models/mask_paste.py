"""Pasting RoI masks into the image as detectron2 does, and the transform that chooses how.

torchvision's ``paste_masks_in_image`` pads each 28x28 mask by one cell, scales its box by the
same factor and resizes the mask into the rounded box with ``interpolate``; detectron2 samples
the mask at every image pixel centre inside the box (one pixel of margin) with ``grid_sample``.
The two disagree along the mask's outline: on a smooth 28x28 blob pasted into an 80x130 box the
thresholded masks overlapped with IoU 0.978. A detector with detectron2's weights needs
detectron2's way to give detectron2's masks.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes

MaskPaste = Literal["torchvision", "detectron2"]


def paste_masks_detectron2(masks: Tensor, boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """[N, 1, M, M] mask probabilities in their boxes [N, 4] (xyxy image pixels) ->
    [N, 1, H, W] probabilities in the image, zero beyond one pixel around each box.

    A pixel (x, y) takes the mask's bilinear value at its centre ``(x + 0.5, y + 0.5)``, mapped
    into the box's [-1, 1] square (``grid_sample``, ``align_corners=False``, zeros outside).
    """
    if torch.jit.is_tracing():
        return _paste_separably(masks, boxes, image_size)
    height, width = image_size
    pasted = masks.new_zeros((len(masks), 1, height, width))
    for k, (mask, box) in enumerate(zip(masks, boxes.tolist(), strict=True)):
        x0, y0, x1, y1 = box
        left, top = max(math.floor(x0) - 1, 0), max(math.floor(y0) - 1, 0)
        right, bottom = min(math.ceil(x1) + 1, width), min(math.ceil(y1) + 1, height)
        if right <= left or bottom <= top:
            continue
        xs = (torch.arange(left, right, dtype=torch.float32) + 0.5 - x0) / (x1 - x0) * 2 - 1
        ys = (torch.arange(top, bottom, dtype=torch.float32) + 0.5 - y0) / (y1 - y0) * 2 - 1
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)[None]
        sampled = F.grid_sample(mask[None].float(), grid.to(mask.device), align_corners=False)
        pasted[k, 0, top:bottom, left:right] = sampled[0, 0].to(pasted.dtype)
    return pasted


def _paste_separably(masks: Tensor, boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """`paste_masks_detectron2` without Python loops or ``.tolist()``, for traced exports.

    The sampling grid is separable (a column's x depends only on the column, a row's y only on
    the row), so bilinear sampling with zero padding is ``rows @ mask @ columns^T``, where each
    row of ``rows`` [N, H, M] holds the weights ``max(0, 1 - |v - i|)`` of mask rows i at the
    pixel's mask coordinate v (likewise ``columns`` [N, W, M]). Equal to the loop to float
    rounding; it computes every pixel of the image for every mask, which the loop avoids.
    """
    height, width = image_size
    size = masks.shape[-1]
    x0, y0, x1, y1 = boxes.float().unbind(dim=1)
    cells = torch.arange(size, dtype=torch.float32, device=masks.device)

    def weights(start: Tensor, end: Tensor, length: int) -> tuple[Tensor, Tensor]:
        pixels = torch.arange(length, dtype=torch.float32, device=masks.device)
        # grid_sample's unnormalised coordinate (align_corners=False) of each pixel centre
        at = (pixels[None] + 0.5 - start[:, None]) / (end - start)[:, None] * size - 0.5
        near = (1 - (at[:, :, None] - cells).abs()).clamp(min=0)
        # the loop's window: one pixel beyond the box, within the image
        inside = (pixels >= start.floor()[:, None] - 1) & (pixels < end.ceil()[:, None] + 1)
        return near, inside

    rows, row_inside = weights(y0, y1, height)
    columns, column_inside = weights(x0, x1, width)
    pasted = rows @ masks[:, 0].float() @ columns.transpose(1, 2)
    window = row_inside[:, :, None] & column_inside[:, None, :]
    return (pasted * window)[:, None].to(masks.dtype)


class RCNNTransform(GeneralizedRCNNTransform):
    """torchvision's ``GeneralizedRCNNTransform`` whose ``postprocess`` pastes masks the
    ``mask_paste`` way (boxes are mapped back to the original image size as before).

    ``skip_resize`` leaves training images at their size, for data pipelines that resize (and
    draw the multi-scale size) themselves; evaluation always resizes.
    """

    def __init__(
        self,
        min_size: int | tuple[int, ...],
        max_size: int,
        image_mean: list[float],
        image_std: list[float],
        *,
        size_divisible: int = 32,
        skip_resize: bool = False,
        mask_paste: MaskPaste = "torchvision",
    ) -> None:
        super().__init__(
            min_size,
            max_size,
            image_mean,
            image_std,
            size_divisible=size_divisible,
            _skip_resize=skip_resize,
        )
        self.mask_paste = mask_paste

    def postprocess(
        self,
        result: list[dict[str, Tensor]],
        image_shapes: list[tuple[int, int]],
        original_image_sizes: list[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        """Detections in the original images' pixels; ``masks`` [N, 1, H0, W0] probabilities."""
        if self.training:
            return result
        paste = paste_masks_detectron2 if self.mask_paste == "detectron2" else paste_masks_in_image
        for prediction, size, original in zip(
            result, image_shapes, original_image_sizes, strict=True
        ):
            prediction["boxes"] = resize_boxes(prediction["boxes"], size, original)
            if "masks" in prediction:
                prediction["masks"] = paste(prediction["masks"], prediction["boxes"], original)
        return result
