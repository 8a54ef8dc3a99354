"""CocoEvaluator: from torchvision outputs on resized images to COCO results on the originals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from resdet.evaluation import STAT_NAMES, CocoEvaluator

# Two 200x300 images (H0, W0); boxes are [x, y, w, h] pixels.
BOXES = {
    7: [(3, [20.0, 40.0, 120.0, 100.0]), (7, [160.0, 20.0, 100.0, 160.0])],
    9: [(3, [50.0, 50.0, 100.0, 100.0])],
}
LABEL_TO_CATEGORY_ID = {1: 3, 2: 7}


@pytest.fixture
def coco_gt(tmp_path: Path) -> COCO:
    annotations = []
    for image_id, objects in BOXES.items():
        for category_id, (x, y, w, h) in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_id,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                    "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
                }
            )
    dataset = {
        "images": [{"id": i, "height": 200, "width": 300, "file_name": f"{i}.jpg"} for i in BOXES],
        "annotations": annotations,
        "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(dataset))
    return COCO(str(path))


def _perfect_prediction(image_id: int) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The image as the model saw it, at half size (100, 150), and outputs that match the
    ground truth exactly: boxes xyxy and hard masks [N, 1, 100, 150] in the half-size image."""
    category_to_label = {c: label for label, c in LABEL_TO_CATEGORY_ID.items()}
    boxes, labels, masks = [], [], torch.zeros(len(BOXES[image_id]), 1, 100, 150)
    for n, (category_id, (x, y, w, h)) in enumerate(BOXES[image_id]):
        x0, y0, x1, y1 = x / 2, y / 2, (x + w) / 2, (y + h) / 2
        boxes.append([x0, y0, x1, y1])
        labels.append(category_to_label[category_id])
        masks[n, 0, int(y0) : int(y1), int(x0) : int(x1)] = 1.0
    target = {
        "image_id": image_id,
        "size": torch.tensor([100, 150]),
        "orig_size": torch.tensor([200, 300]),
    }
    output = {
        "boxes": torch.tensor(boxes),
        "labels": torch.tensor(labels),
        "scores": torch.linspace(0.9, 0.5, len(boxes)),
        "masks": masks,
    }
    return target, output


def test_boxes_and_masks_are_scaled_from_size_to_orig_size(coco_gt: COCO) -> None:
    evaluator = CocoEvaluator(coco_gt, ("bbox", "segm"), label_to_category_id=LABEL_TO_CATEGORY_ID)
    target, output = _perfect_prediction(7)
    evaluator.process([target], [output])
    results = evaluator.results()
    assert [r["category_id"] for r in results] == [3, 7]
    for result, (_, box) in zip(results, BOXES[7], strict=True):
        assert result["bbox"] == pytest.approx(box)
        # Upsampling a hard mask 2x bilinearly and thresholding at 0.5 restores its edges
        # exactly, so the mask area is the box area at the original size.
        assert mask_utils.area(result["segmentation"]) == box[2] * box[3]
        assert result["segmentation"]["size"] == [200, 300]
    metrics = evaluator.compute()
    assert list(metrics) == [f"{t}/{name}" for t in ("bbox", "segm") for name in STAT_NAMES]
    # A perfect detection of every object; only image 7 was processed, so image 9 is not a miss.
    assert metrics["bbox/AP"] == 1.0
    assert metrics["segm/AP"] == 1.0
    assert evaluator.last_result["segm"].per_class == {"cat": 1.0, "dog": 1.0}


def test_model_size_comes_from_masks_without_size(coco_gt: COCO) -> None:
    evaluator = CocoEvaluator(coco_gt, ("segm",), label_to_category_id=LABEL_TO_CATEGORY_ID)
    target, output = _perfect_prediction(7)
    del target["size"]
    evaluator.process([target], [output])
    assert evaluator.results()[0]["bbox"] == pytest.approx(BOXES[7][0][1])


def test_without_size_or_masks_boxes_cannot_be_scaled(coco_gt: COCO) -> None:
    evaluator = CocoEvaluator(coco_gt, label_to_category_id=LABEL_TO_CATEGORY_ID)
    target, output = _perfect_prediction(7)
    del target["size"], output["masks"]
    with pytest.raises(ValueError, match="image 7: the target has no 'size'"):
        evaluator.process([target], [output])


def test_unknown_label_is_refused(coco_gt: COCO) -> None:
    evaluator = CocoEvaluator(coco_gt, label_to_category_id=LABEL_TO_CATEGORY_ID)
    target, output = _perfect_prediction(7)
    output["labels"] = torch.tensor([1, 5])
    with pytest.raises(ValueError, match="model label 5 has no COCO category id"):
        evaluator.process([target], [output])


def test_reset_and_empty_outputs(coco_gt: COCO) -> None:
    evaluator = CocoEvaluator(coco_gt, label_to_category_id=LABEL_TO_CATEGORY_ID)
    target, output = _perfect_prediction(7)
    evaluator.process([target], [output])
    evaluator.reset()
    empty = {
        "boxes": torch.zeros(0, 4),
        "labels": torch.zeros(0, dtype=torch.int64),
        "scores": torch.zeros(0),
    }
    evaluator.process([target], [empty])
    assert evaluator.results() == []
    assert evaluator.compute()["bbox/AR100"] == 0.0


def test_images_repeated_across_ranks_count_once(
    coco_gt: COCO, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two ranks, as a padding DistributedSampler shards them: rank 0 has image 7, rank 1 has
    image 9 and image 7 again. Counting 7 twice would add false positives (AP < 1)."""
    rank0 = CocoEvaluator(coco_gt, label_to_category_id=LABEL_TO_CATEGORY_ID)
    rank1 = CocoEvaluator(coco_gt, label_to_category_id=LABEL_TO_CATEGORY_ID)
    for evaluator, image_id in ((rank0, 7), (rank1, 9), (rank1, 7)):
        target, output = _perfect_prediction(image_id)
        evaluator.process([target], [output])

    def all_gather_object(shards: list[Any], obj: Any) -> None:
        shards[0], shards[1] = obj, rank1._per_image

    def gather_object(obj: Any, shards: list[Any] | None, dst: int) -> None:
        all_gather_object(shards, obj)  # seen from rank 0

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "get_rank", lambda: 0)
    monkeypatch.setattr(dist, "all_gather_object", all_gather_object)
    monkeypatch.setattr(dist, "gather_object", gather_object)
    monkeypatch.setattr(dist, "broadcast_object_list", lambda holder, src: None)
    assert [r["image_id"] for r in rank0.results()] == [7, 7, 9]
    assert rank0.compute()["bbox/AP"] == 1.0
