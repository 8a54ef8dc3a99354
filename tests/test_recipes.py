"""Recipe choice: data set and network -> packaged config, in one function per task."""

from pathlib import Path

import pytest

from resdet.experiments.recipes import cls_recipe, det_recipe, recipe_file


def test_classification_recipes():
    assert cls_recipe("cifar10", "resnet110").name == "cifar10_resnet110.yaml"
    assert cls_recipe("cifar10", None).name == "cifar10_base.yaml"
    assert cls_recipe("folder:/data/x", "resnet50").name == "imagenet_resnet50.yaml"
    with pytest.raises(ValueError, match="no packaged recipe for 'mnist'"):
        cls_recipe("mnist", None)


def test_detection_recipes():
    assert (
        det_recipe("coco", "resnet101", None, masks=False).name == "coco_faster_rcnn_r101_c4.yaml"
    )
    assert det_recipe("coco", "resnet50", None, masks=True).name == "coco_mask_rcnn_r50_fpn.yaml"
    assert (
        det_recipe("voc2007", "resnet50", "c4", masks=False).name
        == "voc0712_faster_rcnn_r50_c4.yaml"
    )
    assert det_recipe("coco", "resnet18", "fpn", masks=False).name == "coco_base.yaml"
    assert det_recipe("shapes", None, None, masks=True).name == "shapes_segm.yaml"
    assert det_recipe("coco-format:a.json", None, None, masks=False).name == "coco_format_base.yaml"


def test_config_by_file_or_packaged_name(tmp_path):
    own = tmp_path / "mine.yaml"
    own.write_text("model: {}\n")
    assert recipe_file(own, "det") == own
    assert recipe_file(None, "det") is None
    packaged = recipe_file(Path("detectron2/PascalVOC-Detection/faster_rcnn_R_50_C4"), "det")
    assert packaged.is_file() and packaged.parent.name == "PascalVOC-Detection"
    with pytest.raises(ValueError, match="neither a file nor a packaged recipe"):
        recipe_file(Path("nope"), "cls")
