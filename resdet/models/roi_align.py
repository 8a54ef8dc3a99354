"""RoIAlign computed as a gather on CPU: torchvision's numbers, 4-7x faster to train.

torchvision's CPU ``roi_align`` backward walks every RoI, channel, bin and sample point in one
thread, scattering into an NCHW gradient; in small-image detector training on a CPU it is the
largest single cost (over half of a Faster R-CNN step, more with the mask branch). Here each
output bin is a weighted sum of ``4 x grid_h x grid_w`` feature rows (bilinear corners of each
sample point), which is what ``F.embedding_bag`` computes in one fused, multi-threaded kernel
with a fast backward. The rows come from one [rows, C] table of all levels (one copy of the
maps; a view where a single level is channels-last). ``tools/bench_roi_align.py`` times both
side by side.

The sample points, the bilinear weights and their edge rules (points beyond one pixel outside
the map count as zero; points within it clamp to the border) are torchvision's
``roi_align`` kernel's, so outputs and gradients agree with it to float rounding (tests pin
this). Like torchvision it computes in float32 for float32, float16 and bfloat16 features
(float64 in float64) and passes no gradient to the boxes. Other devices use torchvision's
kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import roi_align as tv_roi_align
from torchvision.ops.poolers import _convert_to_roi_format, _onnx_merge_levels

__all__ = ["GatherMultiScaleRoIAlign", "roi_align"]


def roi_align(
    input: Tensor,
    rois: Tensor | list[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """``torchvision.ops.roi_align``: ``rois`` is a [K, 5] tensor (image index, x1, y1, x2, y2)
    or a list of [K_i, 4] boxes per image.

    [B, C, H, W] features -> contiguous [K, C, out_h, out_w] in the features' dtype.
    ``sampling_ratio`` <= 0 takes ``ceil(RoI size / output size)`` points per bin side, as
    torchvision does.
    """
    if input.device.type != "cpu":
        return tv_roi_align(input, rois, output_size, spatial_scale, sampling_ratio, aligned)
    if isinstance(rois, (list, tuple)):
        rois = _convert_to_roi_format(list(rois))
    size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    levels = torch.zeros(len(rois), dtype=torch.long)
    pooled = _gather_roi_align(
        [input], [spatial_scale], rois, levels, size, sampling_ratio, aligned
    )
    return pooled.contiguous()


class GatherMultiScaleRoIAlign(MultiScaleRoIAlign):
    """torchvision's ``MultiScaleRoIAlign`` (same arguments, level rule and values) that pools
    all levels with one gather on CPU, and with torchvision's kernel elsewhere.

    ``aligned=True`` shifts sample points by half a pixel (RoIAlign "v2", detectron2's
    ``ROIAlignV2``); torchvision's class always pools with ``aligned=False``.
    ``forward(features: dict of [B, C, H_l, W_l], boxes: list of [N_i, 4] xyxy in image
    pixels, image_shapes)`` -> [sum N_i, C, out_h, out_w], on CPU in channels-last memory
    order (what the heads' convolutions want; ``reshape`` rather than ``view`` to flatten).
    """

    def __init__(
        self,
        featmap_names: list[str],
        output_size: int | tuple[int, int],
        sampling_ratio: int,
        *,
        aligned: bool = False,
    ) -> None:
        super().__init__(featmap_names, output_size, sampling_ratio)
        self.aligned = aligned

    def forward(
        self,
        x: dict[str, Tensor],
        boxes: list[Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> Tensor:
        features = [x[name] for name in self.featmap_names]
        # Traced for export, torchvision's kernel: it has ONNX and TorchScript forms.
        on_cpu = features[0].device.type == "cpu" and not torch.jit.is_tracing()
        if not on_cpu and not self.aligned:
            return super().forward(x, boxes, image_shapes)
        if self.scales is None or self.map_levels is None:
            # Let torchvision infer the level scales and its level mapper from the shapes.
            super().forward(x, [box[:0] for box in boxes], image_shapes)
        rois = _convert_to_roi_format(boxes)
        # rois.shape[0], not len(rois), below: a traced export keeps the number of RoIs variable
        if len(features) == 1:
            levels = torch.zeros(rois.shape[0], dtype=torch.long, device=rois.device)
        else:
            levels = self.map_levels(boxes)
        if on_cpu:
            return _gather_roi_align(
                features,
                self.scales,
                rois,
                levels,
                self.output_size,
                self.sampling_ratio,
                self.aligned,
            )
        # torchvision's kernel level by level, as its MultiScaleRoIAlign does, but aligned.
        pooled = features[0].new_zeros((rois.shape[0], features[0].shape[1], *self.output_size))
        per_level = []
        for level, (feature, scale) in enumerate(zip(features, self.scales, strict=True)):
            index = torch.where(levels == level)[0]
            level_pooled = tv_roi_align(
                feature, rois[index], self.output_size, scale, self.sampling_ratio, True
            ).to(pooled.dtype)
            per_level.append(level_pooled)
            if not torch.jit.is_tracing():
                pooled[index] = level_pooled
        if torch.jit.is_tracing():
            # An index_put of no RoIs does not run in onnxruntime; torchvision merges so.
            return _onnx_merge_levels(levels, per_level)
        return pooled


def _gather_roi_align(
    features: list[Tensor],
    scales: list[float],
    rois: Tensor,
    levels: Tensor,
    output_size: tuple[int, int],
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    """RoIAlign of each RoI on its level's map, gathered from one table of all levels' rows.

    Returns [K, C, out_h, out_w] in channels-last memory order.
    """
    out_h, out_w = output_size
    channels, dtype = features[0].shape[1], features[0].dtype
    _check_rois(rois, features[0].shape[0])
    # torchvision's kernel computes in float32 under autocast and for half types; so does this.
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    with torch.autocast("cpu", enabled=False):
        # One row of C values per (level, image, y, x).
        table = torch.cat([f.permute(0, 2, 3, 1).reshape(-1, channels) for f in features])
        table = table.to(compute)
        rois = rois.detach().to(compute)  # as torchvision: no gradient to the boxes
        heights = torch.tensor([f.shape[2] for f in features])[levels]
        widths = torch.tensor([f.shape[3] for f in features])[levels]
        level_rows = [f.shape[0] * f.shape[2] * f.shape[3] for f in features]
        level_start = torch.tensor([0, *level_rows[:-1]]).cumsum(0)[levels]
        first_row = level_start + rois[:, 0].long() * heights * widths
        scale = torch.tensor(scales, dtype=compute)[levels]
        # Pixel-model coordinates on each RoI's level (aligned: pixel centres at +0.5).
        box = rois[:, 1:] * scale[:, None] - (0.5 if aligned else 0.0)
        y_axis = _Axis(box[:, 1], box[:, 3], heights, out_h, sampling_ratio, aligned)
        x_axis = _Axis(box[:, 0], box[:, 2], widths, out_w, sampling_ratio, aligned)

        # RoIs with the same sample grid are gathered together: padding every RoI to the
        # largest grid would cost memory in proportion to the largest RoI.
        parts: list[Tensor] = []
        order: list[Tensor] = []
        grids = torch.stack([y_axis.grid, x_axis.grid], 1)
        # (No RoIs: one empty group, so that the result still hangs off the features' graph.)
        for grid_h, grid_w in torch.unique(grids, dim=0).tolist() or [[1, 1]]:
            group = ((grids[:, 0] == grid_h) & (grids[:, 1] == grid_w)).nonzero()[:, 0]
            # A zero-size RoI with aligned=True has no sample points: torchvision gives zeros.
            count = grid_h * grid_w
            grid_h, grid_w = max(grid_h, 1), max(grid_w, 1)
            y_rows, y_weights = y_axis.corners(group, grid_h)
            x_cols, x_weights = x_axis.corners(group, grid_w)
            # Table rows [G, out_h, grid_h, 2] of the corners' image rows
            row = first_row[group, None, None, None] + y_rows * widths[group, None, None, None]
            # One bag per output bin: [G, out_h, out_w, grid_h, grid_w, 2, 2] corners.
            index = row[:, :, None, :, None, :, None] + x_cols[:, None, :, None, :, None, :]
            weight = (
                y_weights[:, :, None, :, None, :, None]
                * x_weights[:, None, :, None, :, None, :]
                / max(count, 1)
                * (count > 0)
            )
            bags = (len(group) * out_h * out_w, grid_h * grid_w * 4)
            bins = F.embedding_bag(
                index.reshape(bags), table, per_sample_weights=weight.reshape(bags), mode="sum"
            )
            parts.append(bins.view(len(group), out_h, out_w, channels))
            order.append(group)
        pooled = parts[0]
        if len(parts) > 1:  # back to the RoIs' order (one gather; its backward is one scatter)
            pooled = torch.cat(parts).index_select(0, torch.argsort(torch.cat(order)))
    # Cast while the rows are contiguous; the permute is a view (channels-last strides).
    return pooled.to(dtype).permute(0, 3, 1, 2)


def _check_rois(rois: Tensor, images: int) -> None:
    """Clear errors where torchvision's kernel would read out of bounds or crash."""
    if rois.ndim != 2 or rois.shape[1] != 5:
        raise ValueError(
            f"rois must be [K, 5] (image index, x1, y1, x2, y2), got {list(rois.shape)}"
        )
    if not torch.isfinite(rois).all():
        bad = (~torch.isfinite(rois).all(1)).nonzero()[:, 0].tolist()
        raise ValueError(f"RoIs {bad[:8]} have non-finite coordinates: {rois[bad[:3]].tolist()}")
    index = rois[:, 0]
    if len(rois) and (index.min() < 0 or index.max() >= images or (index != index.round()).any()):
        raise ValueError(
            f"RoI image indices must be integers in 0..{images - 1} (the feature batch), got "
            f"{sorted(set(index.tolist()))[:8]}"
        )


class _Axis:
    """Sample points along one axis (y or x) of each RoI, placed as torchvision's kernel does."""

    def __init__(
        self,
        start: Tensor,
        end: Tensor,
        size: Tensor,
        pooled: int,
        sampling_ratio: int,
        aligned: bool,
    ) -> None:
        length = end - start
        if not aligned:
            length = length.clamp(min=1.0)
        self.start, self.size, self.pooled = start, size, pooled
        self.bin_size = length / pooled
        if sampling_ratio > 0:
            self.grid = torch.full_like(size, sampling_ratio)
        else:
            self.grid = torch.ceil(length / pooled).long()

    def corners(self, group: Tensor, grid: int) -> tuple[Tensor, Tensor]:
        """For the RoIs ``group`` with ``grid`` points per bin: the low and high neighbour
        indices [G, pooled, grid, 2] and their bilinear weights (zero for points outside)."""
        start, bin_size = self.start[group, None, None], self.bin_size[group, None, None]
        size = self.size[group, None, None]
        bins = torch.arange(self.pooled, dtype=start.dtype)[None, :, None]
        samples = torch.arange(grid, dtype=start.dtype)[None, None, :]
        # The kernel's expression, operation for operation, so that the points round alike.
        point = start + bins * bin_size + (samples + 0.5) * bin_size / grid
        inside = (point >= -1.0) & (point <= size)
        point = point.clamp(min=0.0)
        low = point.floor().long()
        at_edge = low >= size - 1
        low = torch.where(at_edge, size - 1, low)
        high = torch.where(at_edge, low, low + 1)
        frac = torch.where(at_edge, 0.0, point - low)
        weights = torch.where(inside[..., None], torch.stack([1.0 - frac, frac], -1), 0.0)
        return torch.stack([low, high], -1), weights
