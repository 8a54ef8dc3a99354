"""Shared pieces of the detection data sets: records, box cleaning, decoding, augmentation, collate.

Every detection data set (COCO, VOC, the generated shapes) parses its annotations once, at
construction, into `ImageRecord`s: boxes already in xyxy absolute pixels of the file on disk,
clipped to the image, with empty, non-finite and outside boxes dropped; `AnnotationLog` counts
every change in ``dataset.stats`` (or, with ``strict``, makes the first one an error). Images and
masks are decoded per sample; the albumentations pipeline resizes (shorter side to ``min_size``,
longer side capped at ``max_size``) and, in training, flips horizontally with p=0.5. Samples
follow docs/design.md#samples-seeds-and-resuming: ``dataset[i]`` or ``dataset[(i, seed)]`` ->
``(image, target)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import albumentations as A  # resdet/__init__.py has switched off its PyPI version check
import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch.utils.data import Dataset

from resdet.data.images import SkipCounter, decode_rgb, first_readable, unreadable_error
from resdet.data.samplers import split_key

# Keys of ``dataset.stats``: what the set holds and what annotation cleaning changed, counted
# once at construction.
STAT_KEYS = (
    "images",  # images in the data set (after dropping those without objects, if asked)
    "boxes",  # object boxes in those images
    "dropped_zero_size",  # boxes of zero or negative width or height as annotated
    "dropped_not_finite",  # boxes with a NaN or infinite coordinate
    "dropped_outside",  # boxes with nothing left inside the image
    "clipped_boxes",  # kept boxes that reached outside the image
    "dropped_polygons",  # malformed polygons (< 3 points, odd length, NaN/inf) removed from masks
    "objects_without_mask",  # objects dropped because no usable segmentation was left
    "images_without_objects",  # images with no object left
    "dropped_empty_images",  # of those, the ones left out (keep_empty=False)
)
# Box problems in the order `clean_boxes` codes them (code = position + 1; 0 is a box kept as is).
BOX_PROBLEMS = ("clipped_boxes", "dropped_zero_size", "dropped_not_finite", "dropped_outside")
_BOX_PROBLEM_TEXT = {
    "clipped_boxes": "reaches outside the image",
    "dropped_zero_size": "has zero or negative width or height",
    "dropped_not_finite": "has a NaN or infinite coordinate",
    "dropped_outside": "lies wholly outside the image",
}

Segmentation = list[list[float]] | dict[str, Any]


def new_stats() -> dict[str, int]:
    """A zeroed statistics dict with every key of `STAT_KEYS`."""
    return dict.fromkeys(STAT_KEYS, 0)


class AnnotationLog:
    """Counts what annotation cleaning changed in one file; with ``strict`` the first change is
    an error naming the file, the object and the fix.

    ``stats`` is a `new_stats` dict that the data set keeps.
    """

    def __init__(self, source: Path, *, strict: bool) -> None:
        self.source = source
        self.strict = strict
        self.stats = new_stats()

    def boxes(self, codes: np.ndarray, describe: Callable[[int], str]) -> None:
        """Count the problems of one image's boxes (``codes`` from `clean_boxes`);
        ``describe(i)`` names box ``i`` for the strict error, e.g. "annotation 17"."""
        found = np.flatnonzero(codes)
        if not len(found):
            return
        if self.strict:
            first = int(found[0])
            problem = BOX_PROBLEMS[codes[first] - 1]
            raise ValueError(
                f"{self.source}: {describe(first)} {_BOX_PROBLEM_TEXT[problem]}; fix the "
                "annotation, or drop --strict (data.strict) to let resdet clip or drop such boxes "
                "and count them"
            )
        for code, key in enumerate(BOX_PROBLEMS, 1):
            self.stats[key] += int((codes == code).sum())

    def drop(self, key: str, count: int, what: str) -> None:
        """Count ``count`` drops of kind ``key``; ``what`` describes them for the strict error."""
        if not count:
            return
        if self.strict:
            raise ValueError(
                f"{self.source}: {what}; fix the annotation, or drop --strict (data.strict) to "
                "let resdet drop it and count it"
            )
        self.stats[key] += count


@dataclass(frozen=True)
class ImageRecord:
    """One image and its cleaned annotations, as parsed at construction.

    ``boxes`` float32 [N, 4] xyxy absolute pixels of the file on disk (clipped, non-empty);
    ``labels`` int64 [N] in 1..K; ``difficult`` bool [N] or None; ``segmentations`` one COCO
    segmentation per object (polygon list or RLE dict, in file pixels) or None without masks.
    """

    path: Path
    image_id: int
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray | None = None
    segmentations: tuple[Segmentation, ...] | None = None


def clean_boxes(boxes: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Clip xyxy boxes to the image and say what was wrong with each.

    Args:
        boxes: float [N, 4] xyxy absolute pixels (may be NaN, empty or beyond the image).
        width, height: image size in pixels.

    Returns:
        ``(clipped float32 [N, 4], codes uint8 [N])``: code 0 is a box kept as it was, otherwise
        1 + the index of its problem in `BOX_PROBLEMS` (1: kept but clipped; 2, 3, 4: dropped
        for zero size, a non-finite coordinate, or lying outside the image).
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    clipped = boxes.copy()
    clipped[:, 0::2] = clipped[:, 0::2].clip(0, width)
    clipped[:, 1::2] = clipped[:, 1::2].clip(0, height)
    codes = np.zeros(len(boxes), np.uint8)
    codes[(clipped != boxes).any(axis=1)] = 1
    codes[(clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1])] = 4
    codes[(boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])] = 2
    codes[~np.isfinite(boxes).all(axis=1)] = 3
    return clipped, codes


def decode_segmentation(segmentation: Segmentation, height: int, width: int) -> np.ndarray:
    """Rasterise one COCO segmentation as pycocotools' ``COCO.annToMask`` does.

    Args:
        segmentation: a list of polygons ``[[x0, y0, x1, y1, ...], ...]`` (merged into one mask),
            an uncompressed RLE ``{"size": [h, w], "counts": [int, ...]}`` or a compressed RLE.
        height, width: image size in pixels.

    Returns:
        uint8 [height, width] mask with values 0/1.
    """
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation["counts"], list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return mask_utils.decode(rle)


def read_image(path: Path, height: int | None = None, width: int | None = None) -> np.ndarray:
    """Decode an image file as uint8 [H, W, 3] RGB (`resdet.data.images.decode_rgb`).

    A missing, truncated or undecodable file is an error naming it. If ``height``/``width`` are
    given, a file of another size is an error too: its boxes would be wrong.
    """
    image = decode_rgb(path)
    if image is None:
        raise unreadable_error(path, "it cannot be skipped here")
    check_image_size(path, image, height, width)
    return image


def check_image_size(path: Path, image: np.ndarray, height: int | None, width: int | None) -> None:
    """A decoded image must have the size its annotation gives, or its boxes would be wrong."""
    if height is not None and image.shape[:2] != (height, width):
        raise ValueError(
            f"image file {path} is {image.shape[0]}x{image.shape[1]} (HxW) but its annotation "
            f"says {height}x{width}; fix the annotation or replace the file"
        )


class ResizeShortestEdge(A.SmallestMaxSize):
    """Resize so the shorter side is one of ``short_sizes``, the longer side at most ``max_size``.

    scale = min(short / min(h, w), max_size / max(h, w)), as torchvision's
    GeneralizedRCNNTransform and detectron2's ResizeShortestEdge compute it; with several
    ``short_sizes`` one is drawn per sample from the pipeline's (seeded) generator.
    """

    def __init__(self, short_sizes: Sequence[int], max_size: int) -> None:
        super().__init__(max_size=[int(s) for s in short_sizes])
        self.long_max_size = int(max_size)

    def get_params_dependent_on_data(
        self, params: dict[str, Any], data: dict[str, Any]
    ) -> dict[str, Any]:
        """The resize factor for this sample (``params["shape"]`` is the input (H, W, ...))."""
        height, width = params["shape"][:2]
        short = self.py_random.choice(self.max_size)
        return {"scale": min(short / min(height, width), self.long_max_size / max(height, width))}


def build_detection_pipeline(
    *, train: bool, min_size: int | Sequence[int], max_size: int
) -> A.Compose:
    """The albumentations pipeline for detection samples.

    Args:
        train: adds a horizontal flip with p=0.5 and, for a tuple ``min_size``, draws the shorter
            side per sample (multi-scale training). At test time a tuple uses its last entry, as
            torchvision's GeneralizedRCNNTransform does.
        min_size: target shorter side in pixels, or a tuple of them.
        max_size: cap on the longer side in pixels.

    Returns:
        A Compose called with ``image`` uint8 [H, W, 3], ``bboxes`` [N, 4] pascal_voc (xyxy
        absolute pixels), ``indices`` int [N] and optionally ``masks`` uint8 [N, H, W].
    """
    sizes = [min_size] if isinstance(min_size, int) else list(min_size)
    if not sizes or min(sizes) <= 0 or max_size <= 0:
        raise ValueError(
            f"min_size={min_size!r} and max_size={max_size!r} must be positive pixel sizes"
        )
    transforms: list[A.BasicTransform] = [
        ResizeShortestEdge(sizes if train else sizes[-1:], max_size)
    ]
    if train:
        transforms.append(A.HorizontalFlip(p=0.5))
    # `indices` rides along as a label field so that masks, labels and flags can be re-selected
    # should albumentations ever drop a box.
    bbox_params = A.BboxParams(format="pascal_voc", label_fields=["indices"], clip=True)
    return A.Compose(transforms, bbox_params=bbox_params)


@dataclass(frozen=True)
class TransformedSample:
    """Output of `DetectionTransform`: image uint8 [H, W, 3], boxes float32 [M, 4] xyxy,
    masks uint8 [M, H, W] or None, kept int64 [M] (indices of the input objects that remain)."""

    image: np.ndarray
    boxes: np.ndarray
    masks: np.ndarray | None
    kept: np.ndarray


class DetectionTransform:
    """Resize (+ flip in training) an image with its boxes and masks, seeded per sample."""

    def __init__(self, *, train: bool, min_size: int | Sequence[int], max_size: int) -> None:
        self.pipeline = build_detection_pipeline(train=train, min_size=min_size, max_size=max_size)

    def __call__(
        self,
        image: np.ndarray,
        boxes: np.ndarray,
        masks: np.ndarray | None = None,
        seed: int | None = None,
    ) -> TransformedSample:
        """Transform one sample.

        Args:
            image: uint8 [H, W, 3] RGB.
            boxes: float32 [N, 4] xyxy absolute pixels inside the image, positive size.
            masks: uint8 [N, H, W] or None.
            seed: all random choices draw from generators seeded by it; None draws fresh entropy.
        """
        if seed is None:
            seed = int(np.random.default_rng().integers(2**63))
        self.pipeline.set_random_seed(seed)
        inputs: dict[str, Any] = {
            "image": image,
            "bboxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            "indices": np.arange(len(boxes)),
        }
        # albumentations cannot stack an empty list of masks; an empty set needs no transform.
        if masks is not None and len(masks):
            inputs["masks"] = masks
        out = self.pipeline(**inputs)
        kept = np.asarray(out["indices"], dtype=np.int64)
        out_masks = None
        if masks is not None:
            height, width = out["image"].shape[:2]
            out_masks = (
                np.asarray(out["masks"])[kept]
                if len(masks)
                else np.zeros((0, height, width), np.uint8)
            )
        return TransformedSample(
            image=out["image"],
            boxes=np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4),
            masks=out_masks,
            kept=kept,
        )


class DetectionDataset(Dataset):
    """A detection data set over parsed `ImageRecord`s; COCO and VOC only build the records.

    ``dataset[i]`` or ``dataset[(i, seed)]`` returns ``(image, target)``: image uint8 [3, H, W]
    RGB (``prepare_batch`` makes it float32 in [0, 1] on the device); target ``boxes`` float32 [N, 4] xyxy absolute pixels of the returned image,
    ``labels`` int64 [N] in 1..K, ``image_id`` int, ``size`` int64 [2] (H, W), ``orig_size``
    int64 [2] (H0, W0) of the file, ``masks`` uint8 [N, H, W] with masks, ``difficult`` bool [N]
    where the records have it.

    A training image that cannot be decoded is skipped with a warning naming it, counted in
    ``skipped`` and replaced by the next one that decodes (with its own targets and the same
    seed); with ``strict``, and always at evaluation (a missing image would make the scores
    silently wrong), it is an error.
    """

    def __init__(
        self,
        records: list[ImageRecord],
        *,
        class_names: list[str],
        label_to_category_id: dict[int, int],
        stats: dict[str, int],
        train: bool,
        min_size: int | Sequence[int],
        max_size: int,
        with_masks: bool,
        keep_empty: bool,
        strict: bool = False,
    ) -> None:
        empty = sum(len(r.boxes) == 0 for r in records)
        self.records = records if keep_empty else [r for r in records if len(r.boxes)]
        stats["images_without_objects"] = empty
        stats["dropped_empty_images"] = 0 if keep_empty else empty
        stats["images"] = len(self.records)
        stats["boxes"] = sum(len(r.boxes) for r in self.records)
        self.class_names = class_names
        self.label_to_category_id = label_to_category_id
        self.stats = stats
        self.train = train
        self.strict = strict
        self.with_masks = with_masks
        self.transform = DetectionTransform(train=train, min_size=min_size, max_size=max_size)
        self._skips = SkipCounter()

    def __len__(self) -> int:
        return len(self.records)

    @property
    def skipped(self) -> int:
        """Unreadable training images replaced so far, by every process loading from this set."""
        return self._skips.total

    def aspect_ratios(self) -> list[float]:
        """Width / height of every image, in dataset order, from the annotations (no decoding)."""
        return [r.width / r.height for r in self.records]

    def _decode(self, index: int) -> np.ndarray | None:
        """Record ``index``'s image, or None once a skippable unreadable one is warned and
        counted."""
        record = self.records[index]
        image = decode_rgb(record.path)
        if image is None:
            if self.strict or not self.train:
                why = "data.strict is set" if self.strict else "evaluation needs every image"
                raise unreadable_error(record.path, why)
            self._skips.skip(record.path, "training on the next image instead")
            return None
        check_image_size(record.path, image, record.height, record.width)
        return image

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, dict[str, Any]]:
        index, seed = split_key(key, len(self))
        used, image = first_readable(index, len(self), self._decode, "this data set")
        record = self.records[used]
        masks = None
        if self.with_masks:
            segmentations = record.segmentations or ()
            masks = np.zeros((len(segmentations), record.height, record.width), np.uint8)
            for i, segmentation in enumerate(segmentations):
                masks[i] = decode_segmentation(segmentation, record.height, record.width)
        out = self.transform(image, record.boxes, masks, seed)
        height, width = out.image.shape[:2]
        target: dict[str, Any] = {
            "boxes": torch.from_numpy(out.boxes),
            "labels": torch.from_numpy(record.labels[out.kept]),
            "image_id": record.image_id,
            "size": torch.tensor([height, width], dtype=torch.int64),
            "orig_size": torch.tensor([record.height, record.width], dtype=torch.int64),
        }
        if out.masks is not None:
            target["masks"] = torch.from_numpy(np.ascontiguousarray(out.masks))
        if record.difficult is not None:
            target["difficult"] = torch.from_numpy(record.difficult[out.kept])
        # uint8 through the workers; prepare_batch makes it float on the trainer's device.
        return torch.from_numpy(np.ascontiguousarray(out.image.transpose(2, 0, 1))), target


def collate(
    batch: Sequence[tuple[torch.Tensor, dict[str, Any]]],
) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """Detection collation: images of different sizes stay a list, as torchvision detectors take.

    Returns ``(images: list of uint8 [3, H_i, W_i], targets: list of dicts)``.
    """
    return [image for image, _ in batch], [target for _, target in batch]
