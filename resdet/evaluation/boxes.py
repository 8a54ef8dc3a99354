"""Boxes from the image the model saw back to the file's own pixels, for every evaluator."""

from __future__ import annotations

import torch


def to_original_pixels(
    boxes: torch.Tensor, size: tuple[int, int], orig_size: tuple[int, int]
) -> torch.Tensor:
    """xyxy boxes [N, 4] in the pixels of an (H, W) ``size`` image -> float32 CPU boxes in the
    pixels of the (H0, W0) ``orig_size`` file it was resized from (x by W0 / W, y by H0 / H)."""
    (h, w), (h0, w0) = size, orig_size
    scale = torch.tensor([w0 / w, h0 / h, w0 / w, h0 / h])
    return boxes.detach().float().cpu() * scale
