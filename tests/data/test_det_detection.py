"""Shared detection pieces: box cleaning, decoding, the resize/flip pipeline, collate."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from resdet.data.detection import (
    BOX_PROBLEMS,
    AnnotationLog,
    DetectionTransform,
    clean_boxes,
    collate,
    decode_segmentation,
    read_image,
)
from resdet.data.samplers import split_key


def _noise_image(height: int, width: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_clean_boxes_clips_and_names_each_problem() -> None:
    boxes = np.array(
        [
            [10, 10, 20, 20],  # inside: unchanged
            [-5, 90, 30, 130],  # crosses left and bottom edges: clipped
            [40, 40, 40, 50],  # zero width: dropped
            [60, 30, 50, 35],  # negative width: dropped
            [200, 10, 250, 20],  # entirely right of the image: zero width after clipping
            [np.nan, 0, 10, 10],  # NaN: dropped
            [0, 0, np.inf, 10],  # infinite: dropped, not clipped into a full-width box
        ],
        dtype=np.float32,
    )
    clipped, codes = clean_boxes(boxes, width=100, height=100)
    problems = ["kept"] + list(BOX_PROBLEMS)
    assert [problems[c] for c in codes] == [
        "kept",
        "clipped_boxes",
        "dropped_zero_size",
        "dropped_zero_size",
        "dropped_outside",
        "dropped_not_finite",
        "dropped_not_finite",
    ]
    np.testing.assert_array_equal(clipped[1], [0, 90, 30, 100])
    np.testing.assert_array_equal(clipped[0], boxes[0])


def test_annotation_log_counts_or_refuses(tmp_path) -> None:
    _, codes = clean_boxes(np.array([[0, 0, 5, 5], [-1, 0, 5, 5], [3, 3, 3, 9]]), 10, 10)
    log = AnnotationLog(tmp_path / "a.json", strict=False)
    log.boxes(codes, lambda i: f"box {i}")
    assert log.stats["clipped_boxes"] == 1 and log.stats["dropped_zero_size"] == 1
    strict = AnnotationLog(tmp_path / "a.json", strict=True)
    with pytest.raises(ValueError, match=r"a\.json: box 1 reaches outside the image.*--strict"):
        strict.boxes(codes, lambda i: f"box {i}")
    strict.boxes(codes[:1], lambda i: f"box {i}")  # nothing wrong: no error


def test_resize_follows_torchvision_scale_rule() -> None:
    # scale = min(min_size / short, max_size / long): torchvision GeneralizedRCNNTransform.
    image = _noise_image(100, 200)
    boxes = np.array([[20, 10, 60, 50]], dtype=np.float32)
    out = DetectionTransform(train=False, min_size=50, max_size=1000)(image, boxes)
    assert out.image.shape == (50, 100, 3)  # scale 0.5 from the shorter side
    np.testing.assert_allclose(out.boxes, [[10, 5, 30, 25]], atol=1e-3)
    out = DetectionTransform(train=False, min_size=100, max_size=150)(image, boxes)
    assert out.image.shape == (75, 150, 3)  # min(100/100, 150/200) = 0.75: longer side capped
    np.testing.assert_allclose(out.boxes, [[15, 7.5, 45, 37.5]], atol=1e-3)


def test_eval_uses_last_min_size_and_never_flips() -> None:
    # torchvision's GeneralizedRCNNTransform takes min_size[-1] at test time.
    image = _noise_image(100, 200)
    transform = DetectionTransform(train=False, min_size=(50, 80), max_size=1000)
    for seed in range(10):
        out = transform(image, np.zeros((0, 4), np.float32), seed=seed)
        assert out.image.shape == (80, 160, 3)
        expected = cv2.resize(image, (160, 80), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_array_equal(out.image, expected)


def test_training_flip_and_multiscale_are_seeded() -> None:
    image = _noise_image(100, 200)
    boxes = np.array([[20, 10, 60, 50]], dtype=np.float32)
    masks = np.zeros((1, 100, 200), np.uint8)
    masks[0, 10:50, 20:60] = 1
    transform = DetectionTransform(train=True, min_size=(50, 100), max_size=1000)
    outcomes = set()
    for seed in range(20):
        first = transform(image, boxes, masks, seed=seed)
        transform(image, boxes, masks, seed=seed + 100)  # what ran before must not matter
        again = transform(image, boxes, masks, seed=seed)
        np.testing.assert_array_equal(first.image, again.image)
        np.testing.assert_array_equal(first.boxes, again.boxes)
        height, width = first.image.shape[:2]
        scale = height / 100
        flipped = first.boxes[0, 0] > width / 2
        expected = boxes[0] * scale
        if flipped:
            expected = np.array(
                [width - expected[2], expected[1], width - expected[0], expected[3]]
            )
        np.testing.assert_allclose(first.boxes[0], expected, atol=1e-3)
        ys, xs = np.nonzero(first.masks[0])
        mask_box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        np.testing.assert_allclose(mask_box, first.boxes[0], atol=1)
        outcomes.add((height, bool(flipped)))
    assert outcomes == {(50, False), (50, True), (100, False), (100, True)}


def test_unseeded_transform_is_random() -> None:
    image = _noise_image(100, 200)
    transform = DetectionTransform(train=True, min_size=(50, 60, 70, 80, 90, 100), max_size=1000)
    shapes = {transform(image, np.zeros((0, 4), np.float32)).image.shape for _ in range(30)}
    assert len(shapes) > 1


def test_empty_masks_keep_the_output_size() -> None:
    transform = DetectionTransform(train=True, min_size=50, max_size=1000)
    out = transform(_noise_image(100, 200), np.zeros((0, 4), np.float32), np.zeros((0, 100, 200)))
    assert out.masks.shape == (0, 50, 100)
    assert out.boxes.shape == (0, 4)


def test_bad_sizes_are_rejected() -> None:
    with pytest.raises(ValueError, match="min_size=0"):
        DetectionTransform(train=True, min_size=0, max_size=1000)


def test_read_image_is_rgb_and_names_bad_files(tmp_path) -> None:
    red_bgr = np.zeros((4, 6, 3), np.uint8)
    red_bgr[..., 2] = 255
    cv2.imwrite(str(tmp_path / "red.png"), red_bgr)
    image = read_image(tmp_path / "red.png", 4, 6)
    assert image.shape == (4, 6, 3)
    assert image[0, 0].tolist() == [255, 0, 0]
    with pytest.raises(ValueError, match="red.png is 4x6"):
        read_image(tmp_path / "red.png", 5, 6)
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        read_image(tmp_path / "missing.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.jpg"):
        read_image(tmp_path / "broken.jpg")


def test_decode_segmentation_polygon_and_rle() -> None:
    mask = decode_segmentation([[2, 1, 6, 1, 6, 4, 2, 4]], 8, 10)
    assert mask.shape == (8, 10) and mask.dtype == np.uint8
    ys, xs = np.nonzero(mask)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (2, 5, 1, 3)
    # Uncompressed RLE, column-major runs: 3 zeros, 2 ones, rest zeros.
    rle = decode_segmentation({"size": [4, 2], "counts": [3, 2, 3]}, 4, 2)
    assert rle[:, 0].tolist() == [0, 0, 0, 1] and rle[:, 1].tolist() == [1, 0, 0, 0]


def test_collate_and_split_key() -> None:
    batch = [(torch.zeros(3, 4, 5), {"image_id": 1}), (torch.zeros(3, 6, 2), {"image_id": 2})]
    images, targets = collate(batch)
    assert [im.shape[1:] for im in images] == [(4, 5), (6, 2)]
    assert [t["image_id"] for t in targets] == [1, 2]
    assert split_key(3, 5) == (3, None)
    assert split_key((3, 99), 5) == (3, 99)
    assert split_key(-1, 5) == (4, None)
    with pytest.raises(IndexError, match="out of range"):
        split_key(5, 5)
