"""PASCAL VOC detection from the devkit layout (the PASCAL VOC development kit)::

    VOCdevkit/VOC{2007,2012}/Annotations/<id>.xml
    VOCdevkit/VOC{2007,2012}/JPEGImages/<id>.jpg
    VOCdevkit/VOC{2007,2012}/ImageSets/Main/{train,val,trainval,test}.txt

The XML boxes are 1-based inclusive pixels; targets use 0-based continuous xyxy
``(xmin - 1, ymin - 1, xmax, ymax)``, as detectron2 converts them. ``image_id`` is the image's
position in the split file (offset per part in `VocConcat`); `voc_image_names` maps it back to the
devkit's string id for the comp4 results files, and `voc_ground_truth` gives the untouched
annotations for the VOC evaluator.
"""

from __future__ import annotations

import bisect
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from resdet.data.detection import (
    AnnotationLog,
    DetectionDataset,
    ImageRecord,
    clean_boxes,
)
from resdet.data.samplers import split_key

VOC_CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
VOC_LAYOUT = "VOCdevkit/VOC{year}/{Annotations/*.xml, JPEGImages/*.jpg, ImageSets/Main/{split}.txt}"


@dataclass(frozen=True)
class VocObject:
    """One ``<object>`` as written in the XML: box 1-based inclusive (xmin, ymin, xmax, ymax)."""

    name: str
    box: tuple[float, float, float, float]
    difficult: bool


def _field(element: ET.Element, tag: str, path: Path) -> str:
    found = element.find(tag)
    if found is None or found.text is None:
        raise ValueError(f"VOC annotation {path}: <{element.tag}> has no <{tag}>")
    return found.text.strip()


def _number(element: ET.Element, tag: str, path: Path) -> float:
    text = _field(element, tag, path)
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"VOC annotation {path}: <{tag}> is {text!r}, not a number") from None


def parse_voc_xml(path: Path) -> tuple[int, int, list[VocObject]]:
    """Read a VOC annotation file: ``(width, height, objects)``; errors name the file."""
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"VOC annotation {path} not found, but its id {path.stem!r} is listed in the split "
            f"file: restore the file or remove the id from ImageSets/Main; expected {VOC_LAYOUT}"
        ) from None
    except ET.ParseError as error:
        raise ValueError(f"VOC annotation {path} is not valid XML: {error}") from None
    size = root.find("size")
    if size is None:
        raise ValueError(f"VOC annotation {path} has no <size>; image sizes are needed")
    width, height = int(_number(size, "width", path)), int(_number(size, "height", path))
    objects = []
    for obj in root.iter("object"):
        name = _field(obj, "name", path)
        if name not in VOC_CLASSES:
            raise ValueError(
                f"VOC annotation {path}: unknown class {name!r}; VOC's 20 classes are "
                f"{', '.join(VOC_CLASSES)}"
            )
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise ValueError(f"VOC annotation {path}: object {name!r} has no <bndbox>")
        xmin, ymin, xmax, ymax = (
            _number(bndbox, t, path) for t in ("xmin", "ymin", "xmax", "ymax")
        )
        if xmin > xmax or ymin > ymax:
            raise ValueError(
                f"VOC annotation {path}: object {name!r} has xmin {xmin:g} > xmax {xmax:g} or "
                f"ymin {ymin:g} > ymax {ymax:g}; swap the corners (VOC boxes are 1-based "
                "inclusive xmin ymin xmax ymax)"
            )
        # Some VOC2012 objects have no (or an empty) <difficult> tag; the devkit reads it as 0.
        difficult = bool((obj.findtext("difficult") or "").strip()) and (
            _number(obj, "difficult", path) == 1
        )
        objects.append(VocObject(name, (xmin, ymin, xmax, ymax), difficult))
    return width, height, objects


class VocDetection(DetectionDataset):
    """One VOC year and split. Samples follow `resdet.data.detection.DetectionDataset` and always
    carry ``difficult`` bool [N].

    Args:
        devkit_root: the ``VOCdevkit`` folder.
        year: "2007" or "2012".
        split: "train", "val", "trainval" or "test" (an ``ImageSets/Main`` file).
        train: augment (flip, multi-scale).
        min_size: shorter side in pixels (a tuple: one drawn per sample in training); 600 as in
            the paper.
        max_size: cap on the longer side in pixels.
        keep_difficult: keep difficult objects in the targets; default: only when not training.
        keep_empty: keep images without objects as negatives.
        strict: every dropped or clipped box is an error (`AnnotationLog`).
    """

    def __init__(
        self,
        devkit_root: str | Path,
        year: Literal["2007", "2012"],
        split: Literal["train", "val", "trainval", "test"],
        *,
        train: bool,
        min_size: int | Sequence[int] = 600,
        max_size: int = 1000,
        keep_difficult: bool | None = None,
        keep_empty: bool = True,
        strict: bool = False,
    ) -> None:
        self.root = Path(devkit_root) / f"VOC{year}"
        self.year, self.split = year, split
        split_file = self.root / "ImageSets" / "Main" / f"{split}.txt"
        if not split_file.is_file():
            raise FileNotFoundError(
                f"VOC split file {split_file} not found; expected {VOC_LAYOUT} under "
                f"{devkit_root} (pass the VOCdevkit folder itself)"
            )
        self.image_names = [
            line.split()[0] for line in split_file.read_text().splitlines() if line.strip()
        ]
        self.objects: list[list[VocObject]] = []
        keep_difficult = not train if keep_difficult is None else keep_difficult
        log = AnnotationLog(self.root / "Annotations", strict=strict)
        records = []
        for image_id, name in enumerate(self.image_names):
            xml = self.root / "Annotations" / f"{name}.xml"
            width, height, objects = parse_voc_xml(xml)
            self.objects.append(objects)
            used = [o for o in objects if keep_difficult or not o.difficult]
            raw = np.array([o.box for o in used], dtype=np.float32).reshape(-1, 4)
            boxes, codes = clean_boxes(raw - np.array([1, 1, 0, 0], np.float32), width, height)
            log.boxes(
                codes,
                lambda i, xml=xml, used=used: (
                    f"{xml.name} object {i} ({used[i].name} {used[i].box})"
                ),
            )
            keep = codes <= 1
            records.append(
                ImageRecord(
                    path=self.root / "JPEGImages" / f"{name}.jpg",
                    image_id=image_id,
                    width=width,
                    height=height,
                    boxes=boxes[keep],
                    labels=np.array([VOC_CLASSES.index(o.name) + 1 for o in used], np.int64)[keep],
                    difficult=np.array([o.difficult for o in used], dtype=bool)[keep],
                )
            )
        super().__init__(
            records,
            class_names=list(VOC_CLASSES),
            label_to_category_id={i + 1: i + 1 for i in range(len(VOC_CLASSES))},
            stats=log.stats,
            train=train,
            min_size=min_size,
            max_size=max_size,
            with_masks=False,
            keep_empty=keep_empty,
            strict=strict,
        )


class VocConcat(Dataset):
    """Several VOC sets as one (VOC07+12 trainval), keeping the detection data set interface.

    Image ids stay unique: part k's ids are shifted by the number of split images of the parts
    before it, and ``image_names`` is the concatenation of theirs.
    """

    def __init__(self, parts: Sequence[VocDetection]) -> None:
        if not parts:
            raise ValueError("VocConcat needs at least one VOC data set")
        self.parts = list(parts)
        self.class_names = list(VOC_CLASSES)
        self.label_to_category_id = dict(self.parts[0].label_to_category_id)
        self.image_names = [name for part in self.parts for name in part.image_names]
        self.id_offsets = list(np.cumsum([0] + [len(p.image_names) for p in self.parts[:-1]]))
        self.ends = list(np.cumsum([len(p) for p in self.parts]))
        self.stats = {key: sum(p.stats[key] for p in self.parts) for key in self.parts[0].stats}

    @property
    def skipped(self) -> int:
        """Unreadable training images replaced so far, all parts together."""
        return sum(part.skipped for part in self.parts)

    def __len__(self) -> int:
        return int(self.ends[-1])

    def aspect_ratios(self) -> list[float]:
        """Width / height of every image, in dataset order, from the annotations (no decoding)."""
        return [ratio for part in self.parts for ratio in part.aspect_ratios()]

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, dict[str, Any]]:
        index, seed = split_key(key, len(self))
        k = bisect.bisect_right(self.ends, index)
        local = index - (self.ends[k - 1] if k else 0)
        image, target = self.parts[k][local if seed is None else (local, seed)]
        target["image_id"] += int(self.id_offsets[k])
        return image, target


def _parts_with_offsets(dataset: VocDetection | VocConcat) -> list[tuple[VocDetection, int]]:
    if isinstance(dataset, VocConcat):
        return [(p, int(o)) for p, o in zip(dataset.parts, dataset.id_offsets, strict=True)]
    return [(dataset, 0)]


def voc_ground_truth(
    dataset: VocDetection | VocConcat,
) -> dict[int, list[tuple[str, tuple[float, float, float, float], bool]]]:
    """Ground truth for the VOC evaluator, exactly as in the XML files.

    Returns ``image_id -> [(class_name, (xmin, ymin, xmax, ymax) 1-based inclusive pixels,
    difficult), ...]`` for every image of the data set, difficult objects included (the
    evaluator ignores them) whatever ``keep_difficult`` was.
    """
    return {
        offset + record.image_id: [
            (o.name, o.box, o.difficult) for o in part.objects[record.image_id]
        ]
        for part, offset in _parts_with_offsets(dataset)
        for record in part.records
    }


def voc_image_names(dataset: VocDetection | VocConcat) -> dict[int, str]:
    """``image_id -> devkit image id string`` (e.g. "000005"), for comp4 results files."""
    return {
        offset + record.image_id: part.image_names[record.image_id]
        for part, offset in _parts_with_offsets(dataset)
        for record in part.records
    }


def build_voc(
    devkit_root: str | Path,
    year: Literal["2007", "2012"],
    split: Literal["train", "val", "trainval", "test"],
    *,
    train: bool,
    min_size: int | Sequence[int] = 600,
    max_size: int = 1000,
    keep_difficult: bool | None = None,
    keep_empty: bool = True,
    strict: bool = False,
) -> VocDetection:
    """`VocDetection` whose first image is checked to exist, so that a wrong root fails now."""
    dataset = VocDetection(
        devkit_root,
        year,
        split,
        train=train,
        min_size=min_size,
        max_size=max_size,
        keep_difficult=keep_difficult,
        keep_empty=keep_empty,
        strict=strict,
    )
    if dataset.records and not dataset.records[0].path.is_file():
        raise FileNotFoundError(
            f"VOC image {dataset.records[0].path} not found; expected {VOC_LAYOUT} under "
            f"{devkit_root}"
        )
    return dataset
