"""COCO-format detection: category mapping, cleaning, masks, augmentation, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from resdet.data.coco import CocoDetection, build_coco, build_coco_format
from resdet.data.detection import collate
from resdet.data.synthetic import TINY_COCO_CATEGORY_IDS, write_tiny_coco

HEIGHT, WIDTH = 100, 150


def _rle(top: int, bottom: int, left: int, right: int) -> dict:
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[top:bottom, left:right] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def _edge_case_coco(root: Path) -> tuple[Path, Path]:
    """A COCO set with every awkward case: returns (image_dir, annotation_file)."""
    image_dir = root / "images"
    image_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        cv2.imwrite(str(image_dir / name), rng.integers(0, 256, (HEIGHT, WIDTH, 3), np.uint8))
    rect = [10, 20, 40, 20, 40, 60, 10, 60]  # x 10..40, y 20..60
    annotations = [
        {"id": 1, "image_id": 7, "category_id": 90, "bbox": [10, 20, 30, 40], "segmentation": [rect]},
        # Reaches beyond the image (x2=180 > 150, y2=110 > 100): clipped; RLE mask.
        {"id": 2, "image_id": 7, "category_id": 3, "bbox": [100, 50, 80, 60],
         "segmentation": _rle(50, 100, 100, 150)},
        {"id": 3, "image_id": 7, "category_id": 3, "bbox": [0, 0, 150, 100], "iscrowd": 1,
         "segmentation": _rle(0, 100, 0, 150)},
        {"id": 4, "image_id": 7, "category_id": 17, "bbox": [50, 50, 0, 10],
         "segmentation": [rect]},  # zero width: dropped
        {"id": 5, "image_id": 7, "category_id": 17, "bbox": [60, 10, 20, 20],
         "segmentation": [[60, 10, 80, 10]]},  # only a 2-point polygon: no usable mask
        {"id": 6, "image_id": 7, "category_id": 17, "bbox": [70, 60, 20, 30],
         "segmentation": [[70, 60, 90, 60, 90, 90, 70, 90], [1, 2, math.nan, 4, 5, 6]]},
        {"id": 7, "image_id": 12, "category_id": 3, "bbox": [0, 0, 10, 10], "iscrowd": 1,
         "segmentation": _rle(0, 10, 0, 10)},
    ]  # fmt: skip
    document = {
        "images": [
            {"id": 7, "file_name": "a.jpg", "width": WIDTH, "height": HEIGHT},
            {"id": 9, "file_name": "b.jpg", "width": WIDTH, "height": HEIGHT},  # no annotations
            {"id": 12, "file_name": "c.jpg", "width": WIDTH, "height": HEIGHT},  # only a crowd
        ],
        "annotations": annotations,
        # Unsorted and sparse: labels must follow sorted ids 3, 17, 90.
        "categories": [
            {"id": 90, "name": "ninety"},
            {"id": 3, "name": "three"},
            {"id": 17, "name": "seventeen"},
        ],
    }
    annotation_file = root / "instances.json"
    annotation_file.write_text(json.dumps(document))
    return image_dir, annotation_file


@pytest.fixture
def edge_case_coco(tmp_path) -> tuple[Path, Path]:
    return _edge_case_coco(tmp_path)


def test_categories_map_to_contiguous_labels(edge_case_coco) -> None:
    ds = CocoDetection(*edge_case_coco, train=False, min_size=HEIGHT, max_size=1000)
    assert ds.class_names == ["three", "seventeen", "ninety"]
    assert ds.label_to_category_id == {1: 3, 2: 17, 3: 90}
    assert ds.coco.getImgIds() == [7, 9, 12]


def test_cleaning_without_masks(edge_case_coco) -> None:
    ds = CocoDetection(*edge_case_coco, train=False, min_size=HEIGHT, max_size=1000)
    assert ds.stats == {
        "images": 3,
        "boxes": 4,  # annotations 1, 2, 5, 6
        "dropped_zero_size": 1,  # annotation 4
        "dropped_not_finite": 0,
        "dropped_outside": 0,
        "clipped_boxes": 1,  # annotation 2
        "dropped_polygons": 0,  # polygons are not read without masks
        "objects_without_mask": 0,
        "images_without_objects": 2,  # image 9 (nothing) and 12 (crowd only)
        "dropped_empty_images": 0,
    }
    assert len(ds) == 3  # empty images are kept as negatives by default
    image, target = ds[0]
    assert image.shape == (3, HEIGHT, WIDTH) and image.dtype == torch.uint8
    assert target["image_id"] == 7
    assert target["labels"].tolist() == [3, 1, 2, 2]  # ids 90, 3, 17, 17; crowd ignored
    expected = [[10, 20, 40, 60], [100, 50, 150, 100], [60, 10, 80, 30], [70, 60, 90, 90]]
    np.testing.assert_allclose(target["boxes"].numpy(), expected, atol=1e-3)
    assert target["size"].tolist() == [HEIGHT, WIDTH]
    assert target["orig_size"].tolist() == [HEIGHT, WIDTH]
    assert "masks" not in target
    empty_image, empty = ds[1]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
    assert empty["image_id"] == 9


def test_cleaning_with_masks_and_polygon_warning(edge_case_coco) -> None:
    with pytest.warns(UserWarning, match=r"dropped 2 malformed polygons .* annotations 5, 6"):
        ds = CocoDetection(
            *edge_case_coco, train=False, min_size=HEIGHT, max_size=1000, with_masks=True
        )
    assert ds.stats["dropped_polygons"] == 2
    assert ds.stats["objects_without_mask"] == 1  # annotation 5
    _, target = ds[0]
    assert target["labels"].tolist() == [3, 1, 2]
    masks = target["masks"]
    assert masks.shape == (3, HEIGHT, WIDTH) and masks.dtype == torch.uint8
    # RLE mask of annotation 2 is exactly rows 50..99, columns 100..149.
    assert masks[1, 50:, 100:].all() and masks[1].sum() == 50 * 50
    for box, mask in zip(target["boxes"], masks, strict=True):
        ys, xs = np.nonzero(mask.numpy())
        np.testing.assert_allclose([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], box, atol=1)
    _, empty = ds[1]
    assert empty["masks"].shape == (0, HEIGHT, WIDTH)


def test_keep_empty_false_drops_negatives(edge_case_coco) -> None:
    ds = CocoDetection(
        *edge_case_coco, train=True, min_size=HEIGHT, max_size=1000, keep_empty=False
    )
    assert len(ds) == 1 and ds.stats["images_without_objects"] == 2
    assert ds.aspect_ratios() == [WIDTH / HEIGHT]


def test_resize_and_flip_move_boxes_and_masks_together(edge_case_coco) -> None:
    # min_size 200, max_size 250: scale = min(200/100, 250/150) -> 167x250 (torchvision rule).
    kwargs = {"min_size": 200, "max_size": 250, "with_masks": True}
    with pytest.warns(UserWarning):
        train = CocoDetection(*edge_case_coco, train=True, **kwargs)
    with pytest.warns(UserWarning):
        test = CocoDetection(*edge_case_coco, train=False, **kwargs)
    plain_image, plain = test[0]
    assert plain["size"].tolist() == [167, 250]
    raw = np.array([[10, 20, 40, 60], [100, 50, 150, 100], [70, 60, 90, 90]], np.float32)
    scaled = raw * np.array([250 / 150, 167 / 100] * 2, np.float32)
    np.testing.assert_allclose(plain["boxes"].numpy(), scaled, atol=1e-3)
    flips = set()
    for seed in range(12):
        image, target = train[(0, seed)]
        flipped = torch.equal(image, plain_image.flip(-1))
        assert flipped or torch.equal(image, plain_image)
        expected = scaled.copy()
        if flipped:
            expected[:, [0, 2]] = 250 - scaled[:, [2, 0]]
        np.testing.assert_allclose(target["boxes"].numpy(), expected, atol=1e-3)
        for box, mask in zip(target["boxes"], target["masks"], strict=True):
            ys, xs = np.nonzero(mask.numpy())
            mask_box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            np.testing.assert_allclose(mask_box, box, atol=1)
        flips.add(flipped)
    assert flips == {True, False}


def test_seeded_samples_are_deterministic(tmp_path) -> None:
    root = write_tiny_coco(tmp_path, n_images=3)
    first = build_coco(root, "train", train=True, min_size=(96, 128, 160), max_size=400)
    second = build_coco(root, "train", train=True, min_size=(96, 128, 160), max_size=400)
    for index in range(3):
        a_image, a = first[(index, 1234 + index)]
        first[(index, 99)]  # an unrelated sample in between must not matter
        b_image, b = second[(index, 1234 + index)]
        assert torch.equal(a_image, b_image)
        assert torch.equal(a["boxes"], b["boxes"])
    sizes = {tuple(first[(0, seed)][1]["size"].tolist()) for seed in range(20)}
    assert sizes == {(96, 128), (128, 171), (160, 213)}  # 120x160 images, short side drawn


def test_tiny_coco_round_trip_and_collate(tmp_path) -> None:
    root = write_tiny_coco(tmp_path, n_images=2, with_masks=True)
    ds = build_coco(root, "val", train=False, min_size=120, max_size=1000, with_masks=True)
    assert ds.label_to_category_id == dict(enumerate(TINY_COCO_CATEGORY_IDS, start=1))
    assert ds.aspect_ratios() == [160 / 120, 160 / 120]
    images, targets = collate([ds[0], ds[1]])
    assert len(images) == 2 and [t["image_id"] for t in targets] == [1, 2]
    for target in targets:
        for box, mask in zip(target["boxes"], target["masks"], strict=True):
            ys, xs = np.nonzero(mask.numpy())
            mask_box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            np.testing.assert_allclose(mask_box, box, atol=1e-3)  # shapes boxes are mask extents


def test_coco_format_images_relative_to_json_folder(tmp_path, edge_case_coco) -> None:
    image_dir, annotation_file = edge_case_coco
    document = json.loads(annotation_file.read_text())
    for image in document["images"]:
        image["file_name"] = f"images/{image['file_name']}"
    spec_file = tmp_path / "custom.json"
    spec_file.write_text(json.dumps(document))
    ds = build_coco_format(f"coco-format:{spec_file}", train=False, min_size=100, max_size=1000)
    assert ds[0][0].shape == (3, HEIGHT, WIDTH)
    with pytest.raises(FileNotFoundError, match="relative to the JSON's folder"):
        build_coco_format(annotation_file, train=False)


def test_missing_files_name_path_and_layout(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"instances_val2017\.json.*annotations/instances_"):
        build_coco(tmp_path, "val", train=False)
    root = write_tiny_coco(tmp_path / "coco", n_images=1)
    (root / "val2017" / "000000.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"000000\.jpg not found; expected the layout"):
        build_coco(root, "val", train=False)
    with pytest.raises(ValueError, match="split must be 'train' or 'val'"):
        build_coco(root, "test", train=False)


def test_missing_image_is_an_error_naming_it(edge_case_coco) -> None:
    image_dir, annotation_file = edge_case_coco
    (image_dir / "b.jpg").unlink()
    ds = CocoDetection(image_dir, annotation_file, train=False, min_size=100, max_size=1000)
    with pytest.raises(FileNotFoundError, match=r"b\.jpg"):
        ds[1]


def test_malformed_json_names_file_and_position(tmp_path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [}')
    with pytest.raises(ValueError, match=r"bad\.json is not valid COCO JSON: .*line 1 column 13"):
        CocoDetection(tmp_path, bad, train=False)
    bad.write_text('{"annotations": []}')
    with pytest.raises(ValueError, match="bad.json: the 'images' list is missing"):
        CocoDetection(tmp_path, bad, train=False)


def test_wrong_rle_size_names_the_image(edge_case_coco) -> None:
    image_dir, annotation_file = edge_case_coco
    document = json.loads(annotation_file.read_text())
    document["annotations"][1]["segmentation"]["size"] = [HEIGHT, WIDTH + 1]
    annotation_file.write_text(json.dumps(document))
    with pytest.raises(ValueError, match=r"annotation 2 of image a\.jpg has an RLE mask of size"):
        CocoDetection(image_dir, annotation_file, train=False, with_masks=True)


def test_unknown_category_is_an_error(edge_case_coco) -> None:
    image_dir, annotation_file = edge_case_coco
    document = json.loads(annotation_file.read_text())
    document["annotations"][0]["category_id"] = 5
    annotation_file.write_text(json.dumps(document))
    with pytest.raises(ValueError, match="annotation 1 has category_id 5"):
        CocoDetection(image_dir, annotation_file, train=False)
