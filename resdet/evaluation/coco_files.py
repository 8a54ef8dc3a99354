"""Reading and checking COCO files for evaluation: ground truth and detection results.

Every problem is an error naming the file (or object), the entry and what a valid one holds,
before pycocotools / faster-coco-eval would fail with a KeyError or silently score garbage.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from faster_coco_eval import COCO as FastCOCO
from pycocotools.coco import COCO

IouType = Literal["bbox", "segm"]


def load_ground_truth(gt: COCO | str | os.PathLike, iou_type: IouType) -> FastCOCO:
    if isinstance(gt, (str, os.PathLike)):
        source = str(gt)
        dataset = read_json(Path(gt))
    else:
        source = "the ground-truth COCO object"
        dataset = dict(gt.dataset)
        # Evaluation writes 'ignore' flags and mask caches into annotation dicts; copies keep
        # the caller's COCO as it was.
        if "annotations" in dataset:
            dataset["annotations"] = [dict(ann) for ann in dataset["annotations"]]
    if (
        not isinstance(dataset, dict)
        or not {"images", "annotations", "categories"} <= dataset.keys()
    ):
        found = sorted(dataset) if isinstance(dataset, dict) else type(dataset).__name__
        raise ValueError(
            f"{source} is not COCO ground truth: it needs 'images', 'annotations' and "
            f"'categories' (found {found})"
        )
    if iou_type == "segm":
        for ann in dataset["annotations"]:
            if "segmentation" not in ann:
                raise ValueError(
                    f"{source}: annotation id {ann.get('id')!r} has no 'segmentation', so 'segm' "
                    "cannot be evaluated; evaluate 'bbox' or use an instance-mask annotation file"
                )
    return FastCOCO(dataset)


def load_results(
    results: Sequence[Mapping[str, Any]] | str | os.PathLike, coco_gt: FastCOCO, iou_type: IouType
) -> list[dict[str, Any]]:
    """Checked result dicts that loadRes may modify (it adds area, id and iscrowd)."""
    if not isinstance(results, (str, os.PathLike)):
        check_results(results, coco_gt, iou_type, "results list")
        entries = [dict(entry) for entry in results]
    else:
        entries = read_json(Path(results))
        if not isinstance(entries, list):
            raise ValueError(
                f"{results}: a COCO results file is a JSON list of detections, "
                f"found a {type(entries).__name__}"
            )
        check_results(entries, coco_gt, iou_type, str(results))
    if iou_type == "segm":
        # With a "bbox" present pycocotools takes the box area as the instance area, so
        # small/medium/large would not be mask sizes; detectron2 drops it the same way, and
        # torchvision's segm results carry no box at all.
        for entry in entries:
            entry.pop("bbox", None)
    return entries


def check_results(
    entries: Sequence[Any], coco_gt: FastCOCO, iou_type: IouType, source: str
) -> None:
    if not entries:
        return
    image_ids, category_ids = coco_gt.imgs.keys(), coco_gt.cats.keys()
    # pycocotools reads the geometry of every entry from the kind of the first one.
    first = entries[0]
    geometry = "bbox" if isinstance(first, dict) and first.get("bbox") else "segmentation"
    if iou_type == "segm":
        geometry = "segmentation"
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(
                f"{source}: results entry {index} is a {type(entry).__name__}, not a JSON object"
            )
        image_id = entry.get("image_id")
        if not is_key(image_id, image_ids):
            raise ValueError(
                f"{source}: results entry {index} has image_id {image_id!r}, which is not an "
                "image of the ground truth; results must come from the annotation file's images"
            )
        category_id = entry.get("category_id")
        if not is_key(category_id, category_ids):
            raise ValueError(
                f"{source}: results entry {index} has category_id {category_id!r}, which is not "
                f"a category of the ground truth (ids {sorted(category_ids)[:10]}...); map model "
                "labels to the annotation file's category ids"
            )
        if "score" not in entry or geometry not in entry:
            raise ValueError(
                f"{source}: results entry {index} lacks 'score' or '{geometry}' "
                f"(keys {sorted(entry)})"
            )
        if not finite_numbers([entry["score"]]):
            raise ValueError(
                f"{source}: results entry {index} has score {entry['score']!r}; scores must be "
                "finite numbers"
            )
        if geometry == "bbox" and not (
            isinstance(entry["bbox"], list | tuple)
            and len(entry["bbox"]) == 4
            and finite_numbers(entry["bbox"])
        ):
            raise ValueError(
                f"{source}: results entry {index} has bbox {entry['bbox']!r:.80}; a box is four "
                "finite numbers [x, y, width, height]"
            )


def finite_numbers(values: Any) -> bool:
    # numbers.Real admits numpy scalars too; bool is a Real but never a coordinate or score.
    return all(
        isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in values
    )


def is_key(value: Any, keys: Any) -> bool:
    try:
        return value in keys
    except TypeError:  # an unhashable value such as a list
        return False


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from None
