"""MS COCO style detection / instance segmentation data sets, through pycocotools.

Layout of the official release (REFERENCE.md section 4)::

    ROOT/annotations/instances_{train,val}2017.json
    ROOT/{train,val}2017/*.jpg

Boxes in the JSON are ``[x, y, width, height]`` pixels; here they become xyxy. Sparse category ids
(1..90 for COCO's 80 classes) map to contiguous labels 1..K in sorted id order, and back through
``label_to_category_id``. Crowd regions (``iscrowd=1``) never become targets: the evaluator reads
them from ``dataset.coco``.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pycocotools.coco import COCO

from resdet.data.detection import (
    DetectionDataset,
    ImageRecord,
    Segmentation,
    clip_boxes,
    log_stats,
    new_stats,
)

COCO_LAYOUT = (
    "ROOT/annotations/instances_{train,val}2017.json with images in ROOT/{train,val}2017/*.jpg"
)
COCO_FORMAT_PREFIX = "coco-format:"


def load_coco(annotation_file: str | Path) -> COCO:
    """Parse a COCO instances JSON into a pycocotools ``COCO`` (quietly: no index prints).

    Errors name the file: a missing file, invalid JSON (with line and column), or a JSON without
    ``images`` / ``categories``. A missing ``annotations`` list means an unannotated set.
    """
    path = Path(annotation_file)
    if not path.is_file():
        raise FileNotFoundError(
            f"COCO annotation file {path} not found; expected the layout {COCO_LAYOUT}"
        )
    try:
        data = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid COCO JSON: {error}") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a COCO JSON is an object, found a {type(data).__name__}")
    missing = [key for key in ("images", "categories") if key not in data]
    if missing:
        raise ValueError(f"{path} has no {' or '.join(missing)} list; is it a COCO instances file?")
    data.setdefault("annotations", [])
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _is_valid_polygon(polygon: Any) -> bool:
    # Fewer than 3 points is no area, and pycocotools would read a 4-number list as a box.
    return (
        isinstance(polygon, list)
        and len(polygon) >= 6
        and len(polygon) % 2 == 0
        and all(isinstance(v, int | float) and math.isfinite(v) for v in polygon)
    )


class CocoDetection(DetectionDataset):
    """COCO-format detection (and masks) from an image folder and an instances JSON.

    Samples follow `resdet.data.detection.DetectionDataset`; ``image_id`` is the COCO image id.

    Args:
        image_dir: folder that the images' ``file_name`` entries are relative to.
        annotation_file: COCO instances JSON.
        train: augment (flip, multi-scale); crowd annotations are never targets.
        min_size: shorter side in pixels (a tuple: one drawn per sample in training).
        max_size: cap on the longer side in pixels.
        with_masks: add ``masks`` uint8 [N, H, W]; objects without a usable segmentation are dropped.
        keep_empty: keep images without objects as negatives.
    """

    def __init__(
        self,
        image_dir: str | Path,
        annotation_file: str | Path,
        *,
        train: bool,
        min_size: int | Sequence[int] = 800,
        max_size: int = 1333,
        with_masks: bool = False,
        keep_empty: bool = True,
    ) -> None:
        self.annotation_file = Path(annotation_file)
        self.image_dir = Path(image_dir)
        self.coco = load_coco(self.annotation_file)
        category_ids = sorted(self.coco.cats)
        self.category_id_to_label = {cid: i + 1 for i, cid in enumerate(category_ids)}
        stats = new_stats()
        self._malformed_polygon_ids: list[int] = []
        records = [self._record(image_id, stats, with_masks) for image_id in sorted(self.coco.imgs)]
        if self._malformed_polygon_ids:
            ids = self._malformed_polygon_ids
            warnings.warn(
                f"{self.annotation_file}: dropped {stats['dropped_polygons']} malformed polygons "
                f"(fewer than 3 points, odd length or NaN) in annotations "
                f"{', '.join(map(str, ids[:10]))}{' ...' if len(ids) > 10 else ''}",
                stacklevel=2,
            )
        super().__init__(
            records,
            class_names=[self.coco.cats[cid]["name"] for cid in category_ids],
            label_to_category_id={label: cid for cid, label in self.category_id_to_label.items()},
            stats=stats,
            train=train,
            min_size=min_size,
            max_size=max_size,
            with_masks=with_masks,
            keep_empty=keep_empty,
        )

    def _record(self, image_id: int, stats: dict[str, int], with_masks: bool) -> ImageRecord:
        info = self.coco.imgs[image_id]
        try:
            width, height, file_name = int(info["width"]), int(info["height"]), info["file_name"]
        except KeyError as error:
            raise ValueError(
                f"{self.annotation_file}: image {image_id} has no {error.args[0]!r} field"
            ) from None
        annotations = [a for a in self.coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        for ann in annotations:
            if ann.get("category_id") not in self.category_id_to_label:
                raise ValueError(
                    f"{self.annotation_file}: annotation {ann.get('id')} has category_id "
                    f"{ann.get('category_id')!r}, which is not in the categories list"
                )
            if len(ann.get("bbox", ())) != 4:
                raise ValueError(
                    f"{self.annotation_file}: annotation {ann.get('id')} needs a bbox "
                    f"[x, y, width, height], found {ann.get('bbox')!r}"
                )
        xywh = np.array([a["bbox"] for a in annotations], dtype=np.float32).reshape(-1, 4)
        boxes, keep, n_clipped = clip_boxes(
            np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1), width, height
        )
        stats["dropped_boxes"] += int((~keep).sum())
        stats["clipped_boxes"] += n_clipped
        kept = [int(i) for i in np.flatnonzero(keep)]
        segmentations = None
        if with_masks:
            cleaned = {
                i: self._clean_segmentation(annotations[i], file_name, height, width, stats)
                for i in kept
            }
            kept = [i for i in kept if cleaned[i]]
            stats["objects_without_mask"] += len(cleaned) - len(kept)
            segmentations = tuple(cleaned[i] for i in kept)
        labels = [self.category_id_to_label[annotations[i]["category_id"]] for i in kept]
        return ImageRecord(
            path=self.image_dir / file_name,
            image_id=int(image_id),
            width=width,
            height=height,
            boxes=boxes[kept].reshape(-1, 4),
            labels=np.array(labels, dtype=np.int64),
            segmentations=segmentations,
        )

    def _clean_segmentation(
        self, ann: dict[str, Any], file_name: str, height: int, width: int, stats: dict[str, int]
    ) -> Segmentation:
        """The usable part of ``ann``'s segmentation; empty when nothing usable is left."""
        segmentation = ann.get("segmentation") or []
        if isinstance(segmentation, dict):
            size = list(segmentation.get("size", ()))
            if size != [height, width]:
                raise ValueError(
                    f"{self.annotation_file}: annotation {ann.get('id')} of image {file_name} has "
                    f"an RLE mask of size {size} but the image is [{height}, {width}] (HxW); fix "
                    f"the mask or the image's height/width"
                )
            return segmentation
        if not isinstance(segmentation, list):
            raise ValueError(
                f"{self.annotation_file}: annotation {ann.get('id')} has a segmentation that is "
                f"neither a polygon list nor an RLE dict: {segmentation!r:.80}"
            )
        polygons = [p for p in segmentation if _is_valid_polygon(p)]
        if len(polygons) < len(segmentation):
            stats["dropped_polygons"] += len(segmentation) - len(polygons)
            self._malformed_polygon_ids.append(ann.get("id"))
        return polygons


def _check_first_image(dataset: CocoDetection, convention: str) -> None:
    # Catch a wrong image folder at construction rather than in the first DataLoader worker.
    if dataset.records and not dataset.records[0].path.is_file():
        raise FileNotFoundError(f"image {dataset.records[0].path} not found; {convention}")


def build_coco(
    root: str | Path,
    split: Literal["train", "val"],
    *,
    train: bool,
    min_size: int | Sequence[int] = 800,
    max_size: int = 1333,
    with_masks: bool = False,
    keep_empty: bool = True,
) -> CocoDetection:
    """COCO 2017 ``split`` from the official layout under ``root`` (see the module docstring).

    Logs the annotation cleaning statistics once. Arguments as for `CocoDetection`.
    """
    if split not in ("train", "val"):
        raise ValueError(f"COCO split must be 'train' or 'val', got {split!r}")
    root = Path(root)
    dataset = CocoDetection(
        root / f"{split}2017",
        root / "annotations" / f"instances_{split}2017.json",
        train=train,
        min_size=min_size,
        max_size=max_size,
        with_masks=with_masks,
        keep_empty=keep_empty,
    )
    _check_first_image(dataset, f"expected the layout {COCO_LAYOUT}")
    log_stats(f"coco {split}2017", dataset)
    return dataset


def build_coco_format(
    spec: str | Path,
    *,
    train: bool,
    min_size: int | Sequence[int] = 800,
    max_size: int = 1333,
    with_masks: bool = False,
    keep_empty: bool = True,
) -> CocoDetection:
    """Any COCO-format set: ``spec`` is ``coco-format:PATH`` (or just PATH) of an instances JSON.

    Convention: every image's ``file_name`` is relative to the folder that holds the JSON (so
    ``file_name: "images/0001.jpg"`` for images in an ``images/`` folder next to it). Logs the
    annotation cleaning statistics once. Other arguments as for `CocoDetection`.
    """
    path = Path(str(spec).removeprefix(COCO_FORMAT_PREFIX))
    dataset = CocoDetection(
        path.parent,
        path,
        train=train,
        min_size=min_size,
        max_size=max_size,
        with_masks=with_masks,
        keep_empty=keep_empty,
    )
    _check_first_image(
        dataset,
        f"in {COCO_FORMAT_PREFIX}{path} image file_name entries are relative to the JSON's "
        f"folder {path.parent}",
    )
    log_stats(f"{COCO_FORMAT_PREFIX}{path}", dataset)
    return dataset
