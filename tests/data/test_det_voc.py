"""PASCAL VOC: devkit parsing, 1-based box conversion, difficult objects, VOC07+12, errors."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch

from resdet.data.catalog import build_det_dataset
from resdet.data.options import DetSizes
from resdet.data.synthetic import TINY_HEIGHT, TINY_WIDTH, write_tiny_voc
from resdet.data.voc import (
    VOC_CLASSES,
    VocDetection,
    build_voc,
    parse_voc_xml,
    voc_ground_truth,
    voc_image_names,
)


@pytest.fixture(scope="module")
def devkit(tmp_path_factory) -> Path:
    return write_tiny_voc(tmp_path_factory.mktemp("voc"), n_images=4)


def _xml_objects(devkit: Path, year: str, name: str) -> list[tuple[str, list[float], bool]]:
    root = ET.parse(devkit / f"VOC{year}" / "Annotations" / f"{name}.xml").getroot()
    return [
        (
            obj.findtext("name"),
            [float(obj.find("bndbox").findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")],
            obj.findtext("difficult") == "1",
        )
        for obj in root.iter("object")
    ]


def test_twenty_classes_in_the_standard_order() -> None:
    # The devkit's VOCopts.classes order (VOC2007 devkit, VOCinit.m).
    assert len(VOC_CLASSES) == 20
    assert VOC_CLASSES[0] == "aeroplane" and VOC_CLASSES[14] == "person"
    assert VOC_CLASSES[-1] == "tvmonitor"


def test_boxes_are_zero_based_continuous_xyxy(devkit) -> None:
    # Native size (short side 120 = image height), so scale 1: (xmin - 1, ymin - 1, xmax, ymax),
    # detectron2's pascal_voc.py conversion.
    ds = VocDetection(devkit, "2007", "test", train=False, min_size=TINY_HEIGHT)
    for image_id in range(len(ds)):
        image, target = ds[image_id]
        assert image.shape == (3, TINY_HEIGHT, TINY_WIDTH)
        objects = _xml_objects(devkit, "2007", ds.image_names[image_id])
        expected = [[x1 - 1, y1 - 1, x2, y2] for _, (x1, y1, x2, y2), _ in objects]
        np.testing.assert_allclose(target["boxes"].numpy(), expected, atol=1e-3)
        assert target["labels"].tolist() == [VOC_CLASSES.index(n) + 1 for n, _, _ in objects]
        assert target["difficult"].tolist() == [d for _, _, d in objects]  # kept at test time
        assert target["image_id"] == image_id


def test_difficult_objects_dropped_in_training_but_kept_in_ground_truth(devkit) -> None:
    train = VocDetection(devkit, "2007", "trainval", train=True, min_size=TINY_HEIGHT)
    test = VocDetection(devkit, "2007", "trainval", train=False, min_size=TINY_HEIGHT)
    n_difficult = sum(int(test[i][1]["difficult"].sum()) for i in range(len(test)))
    assert n_difficult > 0  # write_tiny_voc marks every third object difficult
    n_train = sum(len(train[(i, 0)][1]["boxes"]) for i in range(len(train)))
    n_test = sum(len(test[i][1]["boxes"]) for i in range(len(test)))
    assert n_train == n_test - n_difficult
    assert not any(train[(i, 0)][1]["difficult"].any() for i in range(len(train)))
    truth = voc_ground_truth(train)
    assert sorted(truth) == list(range(4))
    for image_id, objects in truth.items():
        assert objects == [
            (n, tuple(b), d)
            for n, b, d in _xml_objects(devkit, "2007", train.image_names[image_id])
        ]


def test_voc0712_concatenates_with_unique_ids(devkit) -> None:
    ds = build_det_dataset("voc0712", devkit, train=True, sizes=DetSizes((TINY_HEIGHT,), 1000))
    assert len(ds) == 8 and ds.class_names == list(VOC_CLASSES)
    assert ds.label_to_category_id[20] == 20
    assert ds.aspect_ratios() == [TINY_WIDTH / TINY_HEIGHT] * 8
    names = voc_image_names(ds)
    assert names[0] == "000000" and names[4] == "2012_000000"
    ids = [ds[(i, 5)][1]["image_id"] for i in range(len(ds))]
    assert ids == list(range(8))
    assert ds[-1][1]["image_id"] == 7
    _, last = ds[(7, 3)]
    objects = _xml_objects(devkit, "2012", "2012_000003")
    kept = [n for n, _, d in objects if not d]
    assert last["labels"].tolist() == [VOC_CLASSES.index(n) + 1 for n in kept]
    truth = voc_ground_truth(ds)
    assert len(truth) == 8 and truth[7] == [(n, tuple(b), d) for n, b, d in objects]


def test_seeded_flip_is_deterministic(devkit) -> None:
    ds = VocDetection(devkit, "2012", "train", train=True, min_size=(100, 140), max_size=1000)
    for seed in range(5):
        a_image, a = ds[(1, seed)]
        b_image, b = ds[(1, seed)]
        assert torch.equal(a_image, b_image) and torch.equal(a["boxes"], b["boxes"])


def test_clipping_is_counted(tmp_path) -> None:
    devkit = write_tiny_voc(tmp_path, n_images=2, years=("2007",))
    path = devkit / "VOC2007" / "Annotations" / "000000.xml"
    tree = ET.parse(path)
    tree.getroot().find("object/bndbox/xmax").text = str(TINY_WIDTH + 20)
    tree.write(path)
    ds = build_voc(devkit, "2007", "trainval", train=False, min_size=TINY_HEIGHT)
    assert ds.stats["clipped_boxes"] == 1
    assert ds[0][1]["boxes"][0, 2] == TINY_WIDTH


def test_malformed_xml_names_file_and_error(tmp_path) -> None:
    devkit = write_tiny_voc(tmp_path, n_images=2, years=("2007",))
    path = devkit / "VOC2007" / "Annotations" / "000001.xml"
    path.write_text("<annotation><size><width>5</width></size>")
    with pytest.raises(ValueError, match=r"000001\.xml is not valid XML: no element found"):
        VocDetection(devkit, "2007", "val", train=False)
    path.write_text(
        "<annotation><size><width>5</width><height>4</height></size><object>"
        "<name>unicorn</name></object></annotation>"
    )
    with pytest.raises(ValueError, match=r"000001\.xml: unknown class 'unicorn'"):
        parse_voc_xml(path)
    path.write_text(
        "<annotation><size><width>5</width><height>4</height></size><object>"
        "<name>cat</name><bndbox><xmin>a</xmin></bndbox></object></annotation>"
    )
    with pytest.raises(ValueError, match=r"000001\.xml: <xmin> is 'a', not a number"):
        parse_voc_xml(path)


def test_missing_split_and_annotation_files(tmp_path) -> None:
    devkit = write_tiny_voc(tmp_path, n_images=2, years=("2012",))
    with pytest.raises(FileNotFoundError, match=r"ImageSets/Main/test\.txt not found"):
        VocDetection(devkit, "2012", "test", train=False)
    (devkit / "VOC2012" / "Annotations" / "2012_000000.xml").unlink()
    with pytest.raises(FileNotFoundError, match=r"2012_000000\.xml not found"):
        VocDetection(devkit, "2012", "train", train=True)
