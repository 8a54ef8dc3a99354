"""The embedded default detection set: coloured squares, circles and triangles, generated locally.

`ensure_shapes` writes, on first use, a small COCO-format set that a detector learns in minutes
on a CPU::

    ROOT/train/000000.jpg ...        128x128 RGB JPEGs
    ROOT/val/000000.jpg ...
    ROOT/annotations/instances_{train,val}.json   boxes and polygon masks, categories 1..3
    ROOT/VERSION.json                generator version and parameters

Each image has a textured background (smooth noise, a gradient or stripes) and 1-7 objects of
16-48 px, squares and triangles turned by at most 15 degrees. Later objects may overlap earlier ones a little; a placement that would leave an earlier
object less than 80% visible, or with a hole, is redrawn elsewhere, so every shape in the image is annotated.
Masks are the visible part as COCO polygons, the painted pixels are exactly the rasterised
polygons, and each box is the mask's extent, so boxes, masks and pixels agree. Generation is
byte-for-byte deterministic for a given seed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from resdet.data.coco import CocoDetection

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 4
CLASS_NAMES = ("square", "circle", "triangle")
IMAGE_SIZE = 128
OBJECT_SIZES = (16, 48)  # side (square, triangle) or diameter (circle) in pixels, inclusive
MAX_OBJECTS = 7
MIN_VISIBLE = 0.8  # an earlier object must keep at least this fraction of its area visible
PLACEMENT_TRIES = 20
MAX_TURN = math.pi / 12  # squares and triangles stay recognisably upright
JPEG_QUALITY = 95
DEFAULT_ROOT = Path("datasets/shapes")
SPLITS = ("train", "val")


@dataclass(frozen=True)
class ShapeObject:
    """One annotated shape: ``label`` 1..3 (index into CLASS_NAMES + 1), ``polygons`` COCO
    polygons of the visible part in pixels, ``bbox`` [x, y, w, h] pixels of that mask, ``area``
    its pixel count."""

    label: int
    polygons: list[list[float]]
    bbox: list[int]
    area: int


def _muted_color(rng: np.random.Generator) -> np.ndarray:
    # Backgrounds are greyish so the saturated shapes stand out in colour as well as in shape.
    return rng.uniform(70, 190) + rng.uniform(-25, 25, size=3)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """float32 [height, width, 3] RGB texture in 0..255: smooth noise, a gradient or stripes."""
    kind = rng.integers(3)
    if kind == 0:
        cells = int(rng.integers(3, 12))
        grid = np.stack([_muted_color(rng) for _ in range(cells * cells)]).reshape(cells, cells, 3)
        return cv2.resize(grid.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    angle = rng.uniform(0, math.pi)
    xs, ys = np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32)
    along = np.cos(angle) * xs[None, :] + np.sin(angle) * ys[:, None]
    if kind == 1:
        weight = (along - along.min()) / (along.max() - along.min())
    else:
        weight = 0.5 + 0.5 * np.sin(2 * math.pi * along / rng.uniform(6, 24))
    # Low contrast within a texture keeps it a background, not a field of shape-like edges.
    first = _muted_color(rng)
    second = first + rng.uniform(-40, 40, size=3)
    return (first + weight[..., None] * (second - first)).astype(np.float32)


def _shape_mask(rng: np.random.Generator, label: int, height: int, width: int) -> np.ndarray:
    """uint8 [height, width] filled mask of one random shape of class ``label`` inside the image."""
    extent = int(rng.integers(OBJECT_SIZES[0], OBJECT_SIZES[1] + 1))
    mask = np.zeros((height, width), np.uint8)
    if label == 2:
        radius = extent / 2
        cx, cy = rng.uniform(radius, (width - radius, height - radius))
        cv2.circle(mask, (round(cx), round(cy)), round(radius), 1, thickness=-1)
        return mask
    if label == 1:
        corners, rotation = 4, rng.uniform(-MAX_TURN, MAX_TURN) + math.pi / 4
        radius = extent / math.sqrt(2)
    else:
        corners, rotation = 3, rng.uniform(-MAX_TURN, MAX_TURN) - math.pi / 2  # apex up
        radius = extent / math.sqrt(3)
    cx, cy = rng.uniform(radius, (width - radius, height - radius))
    angles = rotation + 2 * math.pi * np.arange(corners) / corners
    points = np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], axis=1)
    cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1)
    return mask


def _has_hole(mask: np.ndarray) -> bool:
    _, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    return hierarchy is not None and bool((hierarchy[0][:, 3] >= 0).any())


def _polygons(mask: np.ndarray) -> list[list[float]]:
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    # +0.5 puts the vertices on pixel centres; pycocotools then rasterises a subset of the
    # mask (it keeps pixels whose centre is inside), so masks of different objects stay disjoint.
    return [(c.reshape(-1, 2) + 0.5).ravel().tolist() for c in contours if len(c) >= 3]


def render_sample(
    rng: np.random.Generator, height: int = IMAGE_SIZE, width: int = IMAGE_SIZE
) -> tuple[np.ndarray, list[ShapeObject]]:
    """Draw one image and its annotations (both sides at least 96 px, to fit the largest shape).

    Returns ``(image uint8 [height, width, 3] RGB, objects)``, objects in drawing order (later
    ones on top).
    """
    if min(height, width) < 96:
        raise ValueError(f"shapes images need both sides >= 96 px, got {height}x{width}")
    labels: list[int] = []
    full: list[np.ndarray] = []
    visible: list[np.ndarray] = []
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        label = int(rng.integers(1, len(CLASS_NAMES) + 1))
        for _ in range(PLACEMENT_TRIES):
            mask = _shape_mask(rng, label, height, width)
            uncovered = [v & (1 - mask) for v in visible]
            if all(
                u.sum() >= MIN_VISIBLE * f.sum() and not _has_hole(u)
                for u, f in zip(uncovered, full, strict=True)
            ):
                labels.append(label)
                full.append(mask)
                visible = [*uncovered, mask]
                break
    image = _background(rng, height, width)
    objects = []
    for label, mask in zip(labels, visible, strict=True):
        polygons = _polygons(mask)
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
        painted = mask_utils.decode(rle).astype(bool)
        hsv = np.array([[[rng.integers(180), rng.integers(150, 256), rng.integers(150, 256)]]])
        color = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)
        image[painted] = color
        bbox = [int(v) for v in mask_utils.toBbox(rle)]
        objects.append(ShapeObject(label, polygons, bbox, int(painted.sum())))
    image += rng.normal(0, 5, size=image.shape).astype(np.float32)
    return np.clip(np.round(image), 0, 255).astype(np.uint8), objects


def write_coco_split(
    image_dir: Path,
    annotation_file: Path,
    n_images: int,
    seed: int | Sequence[int],
    *,
    category_ids: Sequence[int] = (1, 2, 3),
    height: int = IMAGE_SIZE,
    width: int = IMAGE_SIZE,
    with_masks: bool = True,
) -> None:
    """Render ``n_images`` shapes images as JPEGs into ``image_dir`` and their COCO JSON.

    Image ``i`` draws from ``np.random.default_rng([*seed, i])``, so it does not depend on the
    others. ``category_ids[k]`` is the COCO id written for class ``CLASS_NAMES[k]``; without
    masks the annotations have no ``segmentation``.
    """
    image_dir.mkdir(parents=True, exist_ok=True)
    annotation_file.parent.mkdir(parents=True, exist_ok=True)
    seed = [seed] if isinstance(seed, int) else list(seed)
    images, annotations = [], []
    for index in range(n_images):
        image, objects = render_sample(np.random.default_rng([*seed, index]), height, width)
        file_name = f"{index:06d}.jpg"
        ok, encoded = cv2.imencode(
            ".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
        )
        if not ok:
            raise RuntimeError(f"OpenCV could not encode {image_dir / file_name} as JPEG")
        (image_dir / file_name).write_bytes(encoded.tobytes())
        images.append({"id": index + 1, "file_name": file_name, "width": width, "height": height})
        for obj in objects:
            annotation = {
                "id": len(annotations) + 1,
                "image_id": index + 1,
                "category_id": int(category_ids[obj.label - 1]),
                "bbox": obj.bbox,
                "area": obj.area,
                "iscrowd": 0,
            }
            if with_masks:
                annotation["segmentation"] = obj.polygons
            annotations.append(annotation)
    categories = [
        {"id": int(cid), "name": name, "supercategory": "shape"}
        for cid, name in zip(category_ids, CLASS_NAMES, strict=True)
    ]
    document = {"images": images, "annotations": annotations, "categories": categories}
    annotation_file.write_text(json.dumps(document, separators=(",", ":")))


def _version(n_train: int, n_val: int, seed: int) -> dict[str, int]:
    return {
        "generator": GENERATOR_VERSION,
        "image_size": IMAGE_SIZE,
        "n_train": n_train,
        "n_val": n_val,
        "seed": seed,
    }


def _read_version(root: Path) -> dict[str, int] | None:
    try:
        return json.loads((root / "VERSION.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def ensure_shapes(
    root: str | Path = DEFAULT_ROOT, n_train: int = 1000, n_val: int = 100, seed: int = 0
) -> Path:
    """Generate the shapes set under ``root`` unless a matching one is already there.

    The set is written into a temporary folder next to ``root`` and renamed into place, so an
    interrupted run never leaves half a set. ``root/VERSION.json`` records the generator version
    and parameters; a set written by another version or with other parameters is replaced. A
    non-empty ``root`` without that file is an error rather than deleted.

    Returns ``root``.
    """
    root = Path(root)
    wanted = _version(n_train, n_val, seed)
    if _read_version(root) == wanted:
        return root
    if root.exists() and any(root.iterdir()) and _read_version(root) is None:
        raise FileExistsError(
            f"{root} exists and is not a shapes set written by resdet (no VERSION.json); "
            f"move it away or pass another root"
        )
    logger.info("generating the shapes set in %s (%d train, %d val images)", root, n_train, n_val)
    start = time.perf_counter()
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        for split_index, (split, n_images) in enumerate(zip(SPLITS, (n_train, n_val), strict=True)):
            write_coco_split(
                staging / split,
                staging / "annotations" / f"instances_{split}.json",
                n_images,
                seed=(seed, split_index),
            )
        (staging / "VERSION.json").write_text(json.dumps(wanted, sort_keys=True))
        _replace(root, staging, wanted)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("shapes set ready in %.1f s", time.perf_counter() - start)
    return root


def _replace(root: Path, staging: Path, wanted: dict[str, int]) -> None:
    """Move ``staging`` to ``root``; another process that got there first with the same set wins."""
    if _read_version(root) == wanted:
        return
    if root.exists():
        stale = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
        # Another process may have moved it away first.
        with contextlib.suppress(FileNotFoundError):
            os.replace(root, stale / root.name)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.rename(staging, root)
    except OSError:
        if _read_version(root) != wanted:
            raise


def build_shapes(
    split: Literal["train", "val"],
    *,
    train: bool,
    root: str | Path = DEFAULT_ROOT,
    n_train: int = 1000,
    n_val: int = 100,
    seed: int = 0,
    min_size: int | Sequence[int] = IMAGE_SIZE,
    max_size: int = 1333,
    with_masks: bool = False,
    keep_empty: bool = True,
    strict: bool = False,
) -> CocoDetection:
    """The shapes ``split`` as a `CocoDetection` (generated by `ensure_shapes` if needed).

    With the defaults images keep their 128x128 size.
    """
    if split not in SPLITS:
        raise ValueError(f"shapes split must be one of {SPLITS}, got {split!r}")
    root = ensure_shapes(root, n_train=n_train, n_val=n_val, seed=seed)
    dataset = CocoDetection(
        root / split,
        root / "annotations" / f"instances_{split}.json",
        train=train,
        min_size=min_size,
        max_size=max_size,
        with_masks=with_masks,
        keep_empty=keep_empty,
        strict=strict,
    )
    return dataset
