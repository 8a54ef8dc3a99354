"""Seeded COCO ground truth and detections for the evaluation tests, in the real file format.

They cover what makes COCO evaluation subtle: crowd regions, images without ground truth,
a category without ground truth, objects in all three area ranges, tied scores, images with
more than 100 detections (maxDets), and masks as polygons, compressed RLE and (for crowds, as
COCO stores them) uncompressed RLE.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

CATEGORY_IDS = (1, 3, 5, 7, 9, 11, 13)
CATEGORIES_WITH_GT = (1, 3, 5, 7, 9, 11)  # 13 is never annotated but is still predicted


def coco_gt_and_results(
    seed: int, num_images: int, masks: bool
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(annotation dict, results list); results carry "bbox" or, with ``masks``, only
    "segmentation" (compressed RLE with str counts), as pycocotools' result files do."""
    rng = np.random.default_rng(seed)
    images, annotations, results = [], [], []
    for i in range(num_images):
        image_id = 1000 + 3 * i  # sparse ids, as in COCO
        height, width = int(rng.integers(64, 400)), int(rng.integers(64, 400))
        images.append({"id": image_id, "height": height, "width": width, "file_name": f"{i}.jpg"})
        objects = []
        for _ in range(0 if i % 7 == 0 else int(rng.integers(1, 12))):
            box = _random_box(rng, height, width, side=float(rng.choice([8, 24, 60, 150])))
            ann = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": int(rng.choice(CATEGORIES_WITH_GT)),
                "bbox": box,
                "iscrowd": int(rng.random() < 0.08),
                "area": box[2] * box[3] * float(rng.uniform(0.6, 1.0)),
            }
            outline = _add_mask(ann, rng, height, width) if masks else []
            annotations.append(ann)
            objects.append((ann, outline))
        count = 130 if i % 11 == 5 else int(rng.integers(0, 25))
        for _ in range(count):
            results.append(_detection(rng, image_id, objects, height, width, masks))
    categories = [{"id": c, "name": f"class{c}", "supercategory": "thing"} for c in CATEGORY_IDS]
    return {"images": images, "annotations": annotations, "categories": categories}, results


def _random_box(rng: np.random.Generator, height: int, width: int, side: float) -> list[float]:
    w = float(np.clip(rng.uniform(0.5, 1.5) * side, 2, width - 1))
    h = float(np.clip(rng.uniform(0.5, 1.5) * side, 2, height - 1))
    return [float(rng.uniform(0, width - w)), float(rng.uniform(0, height - h)), w, h]


def _polygon(rng: np.random.Generator, box: list[float], vertices: int) -> list[float]:
    x, y, w, h = box
    angles = np.sort(rng.uniform(0, 2 * np.pi, vertices))
    radius = rng.uniform(0.6, 1.0, vertices)
    xs = x + w / 2 * (1 + np.cos(angles) * radius)
    ys = y + h / 2 * (1 + np.sin(angles) * radius)
    return np.stack([xs, ys], axis=1).ravel().round(2).tolist()


def _add_mask(
    ann: dict[str, Any], rng: np.random.Generator, height: int, width: int
) -> list[float]:
    """Gives ``ann`` a mask and its area; returns the mask's outline polygon."""
    polygon = _polygon(rng, ann["bbox"], int(rng.integers(3, 9)))
    rle = mask_utils.frPyObjects([polygon], height, width)[0]
    if ann["iscrowd"]:
        ann["segmentation"] = _uncompressed_rle(mask_utils.decode(rle))
    elif rng.random() < 0.4:
        ann["segmentation"] = {"size": [height, width], "counts": rle["counts"].decode()}
    else:
        ann["segmentation"] = [polygon]
    ann["area"] = float(mask_utils.area(rle))
    return polygon


def _uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO's crowd format: run lengths over the column-major mask, starting with zeros."""
    flat = mask.flatten(order="F")
    bounds = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0, *counts]
    return {"size": list(mask.shape), "counts": counts}


def _detection(
    rng: np.random.Generator,
    image_id: int,
    objects: list[tuple[dict[str, Any], list[float]]],
    height: int,
    width: int,
    masks: bool,
) -> dict[str, Any]:
    if objects and rng.random() < 0.6:
        target, outline = objects[int(rng.integers(len(objects)))]
        x, y, w, h = target["bbox"]
        jitter = rng.normal(0, 0.08, 4)
        box = [x + jitter[0] * w, y + jitter[1] * h, w * (1 + jitter[2]), h * (1 + jitter[3])]
        box[2], box[3] = max(box[2], 1.0), max(box[3], 1.0)
        polygon = [
            v + (jitter[0] * w if k % 2 == 0 else jitter[1] * h) for k, v in enumerate(outline)
        ]
        category = target["category_id"] if rng.random() < 0.9 else int(rng.choice(CATEGORY_IDS))
    else:
        box = _random_box(rng, height, width, side=float(rng.uniform(4, min(height, width) / 2)))
        polygon = _polygon(rng, box, 8) if masks else []
        category = int(rng.choice(CATEGORY_IDS))
    # Two decimals make tied scores common, which exercises the stable sort of pycocotools.
    entry = {"image_id": image_id, "category_id": category, "score": round(float(rng.random()), 2)}
    box = [round(float(v), 2) for v in box]
    if masks:
        rle = mask_utils.frPyObjects([polygon], height, width)[0]
        entry["segmentation"] = {"size": [height, width], "counts": rle["counts"].decode()}
    else:
        entry["bbox"] = box
    return entry
