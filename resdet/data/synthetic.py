"""Tiny COCO and VOC sets in the real on-disk layouts, drawn with the shapes generator.

For tests and end-to-end smoke runs that must not download anything: `write_tiny_coco` writes
``ROOT/annotations/instances_{train,val}2017.json`` + ``ROOT/{train,val}2017/*.jpg`` (read with
`resdet.data.coco.build_coco`), `write_tiny_voc` writes a ``VOCdevkit`` with VOC2007 and VOC2012
(read with `resdet.data.voc.VocDetection` / `VocConcat`). Output is deterministic in ``seed``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from resdet.data.shapes import render_sample, write_coco_split

# Sparse, like COCO's 1..90, so the category id <-> label mapping is exercised.
TINY_COCO_CATEGORY_IDS = (3, 17, 90)
# The VOC classes the three shapes are written as (square, circle, triangle).
TINY_VOC_CLASSES = ("tvmonitor", "bottle", "boat")
TINY_HEIGHT, TINY_WIDTH = 120, 160


def write_tiny_coco(
    root: str | Path, n_images: int = 4, with_masks: bool = True, *, seed: int = 0
) -> Path:
    """Write a COCO 2017-layout set of ``n_images`` 120x160 shapes images per split.

    Categories: square, circle, triangle with ids `TINY_COCO_CATEGORY_IDS` (labels 1, 2, 3);
    polygon masks when ``with_masks``. Returns ``root``.
    """
    root = Path(root)
    for split_index, split in enumerate(("train", "val")):
        write_coco_split(
            root / f"{split}2017",
            root / "annotations" / f"instances_{split}2017.json",
            n_images,
            seed=(seed, split_index),
            category_ids=TINY_COCO_CATEGORY_IDS,
            height=TINY_HEIGHT,
            width=TINY_WIDTH,
            with_masks=with_masks,
        )
    return root


def _voc_xml(name: str, height: int, width: int, objects: list[tuple[str, list[int], bool]]) -> str:
    annotation = ET.Element("annotation")
    ET.SubElement(annotation, "filename").text = f"{name}.jpg"
    size = ET.SubElement(annotation, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    for class_name, box, difficult in objects:
        obj = ET.SubElement(annotation, "object")
        ET.SubElement(obj, "name").text = class_name
        ET.SubElement(obj, "difficult").text = str(int(difficult))
        bndbox = ET.SubElement(obj, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True):
            ET.SubElement(bndbox, tag).text = str(value)
    return ET.tostring(annotation, encoding="unicode")


def write_tiny_voc(
    root: str | Path,
    n_images: int = 4,
    *,
    years: Sequence[str] = ("2007", "2012"),
    difficult_every: int = 3,
    seed: int = 0,
) -> Path:
    """Write ``root/VOCdevkit`` with ``n_images`` 120x160 shapes images per year.

    Shapes are written as the classes `TINY_VOC_CLASSES` with 1-based inclusive boxes; every
    ``difficult_every``-th object of a year is marked difficult. Image ids are ``000000``... for
    2007 and ``2012_000000``... for 2012. Splits: ``train`` the even images, ``val`` the odd
    ones, ``trainval`` and (2007 only, as in the real devkit) ``test`` all of them.

    Returns the ``VOCdevkit`` folder.
    """
    devkit = Path(root) / "VOCdevkit"
    for year_index, year in enumerate(years):
        base = devkit / f"VOC{year}"
        for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
            (base / folder).mkdir(parents=True, exist_ok=True)
        names = [f"{i:06d}" if year == "2007" else f"{year}_{i:06d}" for i in range(n_images)]
        n_objects = 0
        for index, name in enumerate(names):
            rng = np.random.default_rng([seed, 100 + year_index, index])
            image, shapes = render_sample(rng, TINY_HEIGHT, TINY_WIDTH)
            cv2.imwrite(
                str(base / "JPEGImages" / f"{name}.jpg"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
            )
            objects = []
            for shape in shapes:
                x, y, w, h = shape.bbox
                n_objects += 1
                difficult = n_objects % difficult_every == 0
                objects.append(
                    (TINY_VOC_CLASSES[shape.label - 1], [x + 1, y + 1, x + w, y + h], difficult)
                )
            xml = _voc_xml(name, TINY_HEIGHT, TINY_WIDTH, objects)
            (base / "Annotations" / f"{name}.xml").write_text(xml)
        splits = {"train": names[0::2], "val": names[1::2], "trainval": names}
        if year == "2007":
            splits["test"] = names
        for split, split_names in splits.items():
            (base / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(split_names) + "\n")
    return devkit


CIFAR_NAMES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


def write_tiny_cifar10(
    root: str | Path, per_batch: int = 10, n_test: int = 10, *, seed: int = 0
) -> Path:
    """Write ``root/cifar-10-batches-py`` in the real python format (the CIFAR
    site's "python version", https://www.cs.toronto.edu/~kriz/cifar.html).

    Five training batches of ``per_batch`` random images and a test batch of ``n_test``, each a
    protocol-2 pickle of ``{b"data": uint8 [N, 3072], b"labels": [...]}``. Returns ``root``.
    """
    import pickle

    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def dump(name: str, entry: dict) -> None:
        with open(folder / name, "wb") as f:
            pickle.dump({k.encode(): v for k, v in entry.items()}, f, protocol=2)

    for i in range(1, 6):
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        dump(f"data_batch_{i}", {"data": data, "labels": labels})
    test = rng.integers(0, 256, size=(n_test, 3072), dtype=np.uint8)
    dump("test_batch", {"data": test, "labels": [int(v) for v in rng.integers(0, 10, n_test)]})
    dump("batches.meta", {"label_names": list(CIFAR_NAMES)})
    return Path(root)


def write_bright_dark_folder(
    root: str | Path, per_class: int = 24, size: int = 40, *, seed: int = 0
) -> Path:
    """A learnable two-class ``train/`` + ``val/`` folder set of JPEGs: dark vs bright noise.

    ``root/{train,val}/{dark,bright}/*.jpg``; a classifier that learns anything gets it right.
    """
    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("val", max(4, per_class // 3))):
        for name, low in (("dark", 0), ("bright", 150)):
            folder = Path(root) / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(low, low + 106, size=(size, size, 3), dtype=np.uint8)
                cv2.imwrite(str(folder / f"{i:03d}.jpg"), pixels)
    return Path(root)
