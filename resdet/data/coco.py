"""MS COCO style detection / instance segmentation data sets, through pycocotools.

Layout of the official release (cocodataset.org; read as pycocotools reads it)::

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
    AnnotationLog,
    DetectionDataset,
    ImageRecord,
    Segmentation,
    clean_boxes,
)

COCO_LAYOUT = (
    "ROOT/annotations/instances_{train,val}2017.json with images in ROOT/{train,val}2017/*.jpg"
)
COCO_FORMAT_PREFIX = "coco-format:"
# COCO 2017's 80 category names in the order of their sparse ids (1..90), which is the order of
# resdet's labels 1..80 and of detectron2's contiguous class ids 0..79.
COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip


def load_coco(annotation_file: str | Path) -> COCO:
    """Parse a COCO instances JSON into a pycocotools ``COCO`` (quietly: no index prints).

    Errors name the file and what to fix: a missing file, invalid JSON (with line and column),
    a JSON without its ``images``, ``annotations`` or ``categories`` list, duplicate image,
    annotation or category ids (pycocotools would silently keep one of each), and an annotation
    whose ``bbox`` is not four numbers (naming its id).
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
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            found = "is missing" if key not in data else f"is a {type(data[key]).__name__}"
            fix = (
                ' (write "annotations": [] for a set without objects)'
                if key == "annotations"
                else ""
            )
            raise ValueError(
                f"{path}: the {key!r} list {found}; a COCO instances file has images, "
                f"annotations and categories lists{fix}"
            )
        _check_unique_ids(path, key, data[key])
    image_ids = {image["id"] for image in data["images"]}
    for ann in data["annotations"]:
        _check_bbox(path, ann)
        if ann.get("image_id") not in image_ids:
            raise ValueError(
                f"{path}: annotation {ann['id']} has image_id {ann.get('image_id')!r}, which is "
                "not in the images list; add the image or remove the annotation"
            )
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _check_unique_ids(path: Path, key: str, entries: list[Any]) -> None:
    seen: set[Any] = set()
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or "id" not in entry:
            raise ValueError(f"{path}: {key}[{index}] has no 'id': {entry!r:.80}")
        ident = entry["id"]
        if not isinstance(ident, int) or isinstance(ident, bool):
            raise ValueError(f"{path}: {key}[{index}] has id {ident!r}; ids are integers")
        if ident in seen:
            raise ValueError(
                f"{path}: {key} id {ident} appears more than once (again at {key}[{index}]); "
                "give every entry its own id"
            )
        seen.add(ident)


def _check_bbox(path: Path, ann: dict[str, Any]) -> None:
    # NaN is a number here: such boxes are dropped and counted later, like empty ones.
    bbox = ann.get("bbox")
    numbers = isinstance(bbox, list) and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in bbox
    )
    if not numbers or len(bbox) != 4:
        raise ValueError(
            f"{path}: annotation {ann.get('id')} needs a bbox of four numbers [x, y, width, "
            f"height], found {bbox!r:.80}"
        )


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
        strict: every dropped or clipped box, polygon or object is an error (`AnnotationLog`).
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
        strict: bool = False,
    ) -> None:
        self.annotation_file = Path(annotation_file)
        self.image_dir = Path(image_dir)
        self.coco = load_coco(self.annotation_file)
        category_ids = sorted(self.coco.cats)
        self.category_id_to_label = {cid: i + 1 for i, cid in enumerate(category_ids)}
        log = AnnotationLog(self.annotation_file, strict=strict)
        self._malformed_polygon_ids: list[int] = []
        records = [self._record(image_id, log, with_masks) for image_id in sorted(self.coco.imgs)]
        if self._malformed_polygon_ids:
            ids = self._malformed_polygon_ids
            warnings.warn(
                f"{self.annotation_file}: dropped {log.stats['dropped_polygons']} malformed "
                f"polygons (fewer than 3 points, odd length or NaN) in annotations "
                f"{', '.join(map(str, ids[:10]))}{' ...' if len(ids) > 10 else ''}",
                stacklevel=2,
            )
        super().__init__(
            records,
            class_names=[self.coco.cats[cid]["name"] for cid in category_ids],
            label_to_category_id={label: cid for cid, label in self.category_id_to_label.items()},
            stats=log.stats,
            train=train,
            min_size=min_size,
            max_size=max_size,
            with_masks=with_masks,
            keep_empty=keep_empty,
            strict=strict,
        )

    def _record(self, image_id: int, log: AnnotationLog, with_masks: bool) -> ImageRecord:
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
        xywh = np.array([a["bbox"] for a in annotations], dtype=np.float32).reshape(-1, 4)
        boxes, codes = clean_boxes(
            np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1), width, height
        )
        log.boxes(
            codes,
            lambda i: (
                f"annotation {annotations[i].get('id')} (bbox {annotations[i]['bbox']}, "
                f"image {file_name!r} of {width}x{height})"
            ),
        )
        kept = [int(i) for i in np.flatnonzero(codes <= 1)]
        segmentations = None
        if with_masks:
            cleaned = {
                i: self._clean_segmentation(annotations[i], file_name, height, width, log)
                for i in kept
            }
            without = [i for i in kept if not cleaned[i]]
            if without:
                log.drop(
                    "objects_without_mask",
                    len(without),
                    f"annotation {annotations[without[0]].get('id')} has no usable segmentation",
                )
            kept = [i for i in kept if cleaned[i]]
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
        self, ann: dict[str, Any], file_name: str, height: int, width: int, log: AnnotationLog
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
            log.drop(
                "dropped_polygons",
                len(segmentation) - len(polygons),
                f"annotation {ann.get('id')} has a malformed polygon (fewer than 3 points, odd "
                "length or NaN)",
            )
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
    strict: bool = False,
) -> CocoDetection:
    """COCO 2017 ``split`` from the official layout under ``root`` (see the module docstring).

    Arguments as for `CocoDetection`.
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
        strict=strict,
    )
    _check_first_image(dataset, f"expected the layout {COCO_LAYOUT}")
    return dataset


def build_coco_format(
    spec: str | Path,
    *,
    train: bool,
    min_size: int | Sequence[int] = 800,
    max_size: int = 1333,
    with_masks: bool = False,
    keep_empty: bool = True,
    strict: bool = False,
) -> CocoDetection:
    """Any COCO-format set: ``spec`` is ``coco-format:PATH`` (or just PATH) of an instances JSON.

    Convention: every image's ``file_name`` is relative to the folder that holds the JSON (so
    ``file_name: "images/0001.jpg"`` for images in an ``images/`` folder next to it). Other
    arguments as for `CocoDetection`.
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
        strict=strict,
    )
    _check_first_image(
        dataset,
        f"in {COCO_FORMAT_PREFIX}{path} image file_name entries are relative to the JSON's "
        f"folder {path.parent}",
    )
    return dataset
