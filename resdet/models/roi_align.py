"""RoIAlign computed as one gather on CPU: torchvision's numbers, several times faster to train.

torchvision's CPU ``roi_align`` backward walks every RoI, channel, bin and sample point in one
thread, scattering into an NCHW gradient; in small-image detector training on a CPU it is the
largest single cost (over half of a Faster R-CNN step, more with the mask branch). Here each
output bin is a weighted sum of ``4 x grid_h x grid_w`` feature rows (bilinear corners of each
sample point), which is what ``F.embedding_bag`` computes in one fused, multi-threaded kernel
with a fast backward. Channels-last features make those rows contiguous, so the gather costs
no layout copy. ``tools/bench_roi_align.py`` times both side by side.

The sample points, the bilinear weights and their edge rules (points beyond one pixel outside
the map count as zero; points within it clamp to the border) are torchvision's
``roi_align`` kernel's, so outputs and gradients agree with it to float rounding (tests pin
this). Other devices use torchvision's kernel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import roi_align as tv_roi_align
from torchvision.ops.poolers import _convert_to_roi_format

__all__ = ["GatherMultiScaleRoIAlign", "roi_align"]


def roi_align(
    input: Tensor,
    rois: Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """``torchvision.ops.roi_align`` with ``rois`` as a [K, 5] tensor (image index, x1, y1, x2, y2).

    [B, C, H, W] features -> [K, C, out_h, out_w] in the features' dtype. ``sampling_ratio``
    <= 0 takes ``ceil(RoI size / output size)`` points per bin side, as torchvision does.
    """
    if input.device.type != "cpu":
        return tv_roi_align(input, rois, output_size, spatial_scale, sampling_ratio, aligned)
    size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    levels = torch.zeros(len(rois), dtype=torch.long)
    return _gather_roi_align([input], [spatial_scale], rois, levels, size, sampling_ratio, aligned)


class GatherMultiScaleRoIAlign(MultiScaleRoIAlign):
    """torchvision's ``MultiScaleRoIAlign`` (same arguments, level rule and outputs) that pools
    all levels with one gather on CPU, and with torchvision's kernel elsewhere.

    ``forward(features: dict of [B, C, H_l, W_l], boxes: list of [N_i, 4] xyxy in image
    pixels, image_shapes)`` -> [sum N_i, C, out_h, out_w].
    """

    def forward(
        self,
        x: dict[str, Tensor],
        boxes: list[Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> Tensor:
        features = [x[name] for name in self.featmap_names]
        if features[0].device.type != "cpu":
            return super().forward(x, boxes, image_shapes)
        if self.scales is None or self.map_levels is None:
            # Let torchvision infer the level scales and its level mapper from the shapes.
            super().forward(x, [box[:0] for box in boxes], image_shapes)
        rois = _convert_to_roi_format(boxes)
        if len(features) == 1:
            levels = torch.zeros(len(rois), dtype=torch.long)
        else:
            levels = self.map_levels(boxes)
        return _gather_roi_align(
            features, self.scales, rois, levels, self.output_size, self.sampling_ratio, False
        )


def _gather_roi_align(
    features: list[Tensor],
    scales: list[float],
    rois: Tensor,
    levels: Tensor,
    output_size: tuple[int, int],
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    """RoIAlign of each RoI on its level's map, all levels gathered from one row table."""
    out_h, out_w = output_size
    channels = features[0].shape[1]
    dtype = features[0].dtype
    # torchvision's kernel computes in float32 under autocast too; so does this.
    with torch.autocast("cpu", enabled=False):
        # One row of C values per (level, image, y, x): a view of channels-last maps.
        table = torch.cat([f.permute(0, 2, 3, 1).reshape(-1, channels) for f in features])
        table = table.float()
        rois = rois.float()
        heights = torch.tensor([f.shape[2] for f in features])[levels]
        widths = torch.tensor([f.shape[3] for f in features])[levels]
        level_rows = [f.shape[0] * f.shape[2] * f.shape[3] for f in features]
        level_start = torch.tensor([0, *level_rows[:-1]]).cumsum(0)[levels]
        scale = torch.tensor(scales, dtype=torch.float32)[levels]

        # Pixel-model coordinates on each RoI's level (aligned: pixel centres at +0.5).
        box = rois[:, 1:] * scale[:, None] - (0.5 if aligned else 0.0)
        y_corners, y_weights, grid_h = _axis(
            box[:, 1], box[:, 3], heights, out_h, sampling_ratio, aligned
        )
        x_corners, x_weights, grid_w = _axis(
            box[:, 0], box[:, 2], widths, out_w, sampling_ratio, aligned
        )
        first_row = level_start + rois[:, 0].long() * heights * widths
        # Table rows [K, out_h, grid_h, 2] of the corners' image rows; their columns are x_corners
        row = first_row[:, None, None, None] + y_corners * widths[:, None, None, None]
        # One bag per output bin: [K, out_h, out_w, grid_h, grid_w, 2, 2] corners.
        index = row[:, :, None, :, None, :, None] + x_corners[:, None, :, None, :, None, :]
        count = (grid_h * grid_w).clamp(min=1).float()
        weight = (
            y_weights[:, :, None, :, None, :, None]
            * x_weights[:, None, :, None, :, None, :]
            / count[:, None, None, None, None, None, None]
        )
        bags = (len(rois) * out_h * out_w, math.prod(index.shape[3:]))
        pooled = F.embedding_bag(
            index.reshape(bags), table, per_sample_weights=weight.reshape(bags), mode="sum"
        )
    # Cast while the rows are contiguous; the permute is a view (channels-last strides).
    return pooled.to(dtype).view(len(rois), out_h, out_w, channels).permute(0, 3, 1, 2)


def _axis(
    start: Tensor,
    end: Tensor,
    size: Tensor,
    pooled: int,
    sampling_ratio: int,
    aligned: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Sample points along one axis of each RoI, as torchvision's kernel places them.

    Returns the low and high neighbour indices [K, pooled, G, 2], their bilinear weights
    [K, pooled, G, 2] (zero for padding and out-of-map points) and the grid size [K]
    (G is the largest grid size; RoIs with fewer points are padded with zero weights).
    """
    length = end - start
    if not aligned:
        length = length.clamp(min=1.0)
    bin_size = length / pooled
    if sampling_ratio > 0:
        grid = torch.full_like(size, sampling_ratio)
    else:
        grid = torch.ceil(length / pooled).long()
    most = max(int(grid.max()) if len(grid) else 1, 1)
    bins = torch.arange(pooled, dtype=torch.float32)
    samples = torch.arange(most, dtype=torch.float32)
    bin_size, grid_size = bin_size[:, None, None], grid.clamp(min=1)[:, None, None]
    # The kernel's expression, operation for operation, so that the points round alike.
    point = start[:, None, None] + bins[None, :, None] * bin_size
    point = point + (samples[None, None, :] + 0.5) * bin_size / grid_size
    size = size[:, None, None]
    valid = (point >= -1.0) & (point <= size) & (samples < grid[:, None, None])
    point = point.clamp(min=0.0)
    low = point.floor().long()
    at_edge = low >= size - 1
    low = torch.where(at_edge, size - 1, low)
    high = torch.where(at_edge, low, low + 1)
    frac = torch.where(at_edge, 0.0, point - low)
    weights = torch.stack([1.0 - frac, frac], -1) * valid[..., None]
    return torch.stack([low, high], -1), weights, grid
