"""The one rescaling of boxes that the COCO and VOC evaluators share."""

import torch

from resdet.evaluation.boxes import to_original_pixels


def test_boxes_scale_back_per_axis_to_the_files_pixels():
    boxes = torch.tensor([[10.0, 20.0, 50.0, 40.0]], dtype=torch.bfloat16)
    # seen at 100x200 (HxW), resized from a 300x400 file: x by 2, y by 3
    out = to_original_pixels(boxes, (100, 200), (300, 400))
    assert out.dtype == torch.float32 and out.tolist() == [[20.0, 60.0, 100.0, 120.0]]
