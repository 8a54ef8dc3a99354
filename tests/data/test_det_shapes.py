"""The generated shapes set: byte-for-byte determinism, atomic writing, annotation sanity."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

import resdet.data.shapes as shapes
from resdet.data.shapes import CLASS_NAMES, build_shapes, ensure_shapes, render_sample

N_TRAIN, N_VAL = 8, 3


def _digest(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory) -> Path:
    return ensure_shapes(tmp_path_factory.mktemp("a") / "shapes", n_train=N_TRAIN, n_val=N_VAL)


def test_same_seed_same_bytes(shapes_root, tmp_path) -> None:
    again = ensure_shapes(tmp_path / "shapes", n_train=N_TRAIN, n_val=N_VAL)
    assert _digest(again) == _digest(shapes_root)
    other = ensure_shapes(tmp_path / "other", n_train=N_TRAIN, n_val=N_VAL, seed=1)
    assert _digest(other)["train/000000.jpg"] != _digest(shapes_root)["train/000000.jpg"]


def test_layout_and_reuse(shapes_root) -> None:
    assert sorted(p.name for p in (shapes_root / "train").iterdir())[-1] == "000007.jpg"
    assert len(list((shapes_root / "val").iterdir())) == N_VAL
    annotations = shapes_root / "annotations" / "instances_train.json"
    stamp = annotations.stat().st_mtime_ns
    assert ensure_shapes(shapes_root, n_train=N_TRAIN, n_val=N_VAL) == shapes_root
    assert annotations.stat().st_mtime_ns == stamp  # reused, not rewritten
    leftovers = [p.name for p in shapes_root.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # no staging folders left behind


def test_changed_parameters_regenerate(tmp_path) -> None:
    root = ensure_shapes(tmp_path / "shapes", n_train=2, n_val=1)
    ensure_shapes(root, n_train=3, n_val=1)
    assert len(list((root / "train").iterdir())) == 3
    assert json.loads((root / "VERSION.json").read_text())["n_train"] == 3


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch) -> None:
    real = shapes.write_coco_split
    calls = []

    def fail_on_val(*args, **kwargs):
        calls.append(args[0].name)
        if args[0].name == "val":
            raise KeyboardInterrupt
        real(*args, **kwargs)

    monkeypatch.setattr(shapes, "write_coco_split", fail_on_val)
    with pytest.raises(KeyboardInterrupt):
        ensure_shapes(tmp_path / "shapes", n_train=2, n_val=1)
    assert calls == ["train", "val"]
    assert list(tmp_path.iterdir()) == []


def test_foreign_folder_is_not_overwritten(tmp_path) -> None:
    (tmp_path / "shapes").mkdir()
    (tmp_path / "shapes" / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="no VERSION.json"):
        ensure_shapes(tmp_path / "shapes", n_train=1, n_val=1)
    assert (tmp_path / "shapes" / "mine.txt").read_text() == "keep me"


def test_annotations_match_masks_and_spec(shapes_root) -> None:
    for split, n_images in (("train", N_TRAIN), ("val", N_VAL)):
        document = json.loads((shapes_root / "annotations" / f"instances_{split}.json").read_text())
        assert [c["name"] for c in document["categories"]] == list(CLASS_NAMES)
        assert len(document["images"]) == n_images
        per_image = {image["id"]: 0 for image in document["images"]}
        union = {}
        for ann in document["annotations"]:
            per_image[ann["image_id"]] += 1
            rle = mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], 128, 128))
            mask = mask_utils.decode(rle)
            assert [int(v) for v in mask_utils.toBbox(rle)] == ann["bbox"]
            assert int(mask.sum()) == ann["area"] > 0
            seen = union.setdefault(ann["image_id"], np.zeros((128, 128), np.uint8))
            assert not (seen & mask).any()  # visible parts never overlap
            seen |= mask
            # Shapes are at most OBJECT_SIZES[1] px (module spec); occlusion can only shrink a
            # box, rotation of a square grows it by at most sqrt(2).
            assert max(ann["bbox"][2:]) <= shapes.OBJECT_SIZES[1] * math.sqrt(2) + 1
        assert all(1 <= n <= shapes.MAX_OBJECTS for n in per_image.values())


def test_dataset_targets_match_masks(shapes_root) -> None:
    ds = build_shapes(
        "val", train=True, root=shapes_root, n_train=N_TRAIN, n_val=N_VAL, with_masks=True
    )
    assert ds.class_names == list(CLASS_NAMES) and len(ds) == N_VAL
    for index in range(N_VAL):
        image, target = ds[(index, index)]
        assert image.shape == (3, 128, 128)  # default min_size keeps 128x128
        for box, mask in zip(target["boxes"], target["masks"], strict=True):
            ys, xs = np.nonzero(mask.numpy())
            mask_box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            np.testing.assert_allclose(mask_box, box, atol=1e-3)


def test_render_sample_rejects_small_images() -> None:
    with pytest.raises(ValueError, match="both sides >= 96"):
        render_sample(np.random.default_rng(0), 64, 128)
