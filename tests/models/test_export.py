"""ONNX and TorchScript exports of classifiers and detectors, run against PyTorch."""

import sys

import pytest
import torch

from resdet.models import create_model
from resdet.models.conventions import TORCHVISION, RCNNConventions
from resdet.models.detector import build_detector
from resdet.models.export import (
    TOLERANCES,
    ClassifierExport,
    DetectorExport,
    check_export,
    export_module,
    load_exported,
    read_metadata,
)
from resdet.models.mask_paste import _paste_separably, paste_masks_detectron2
from resdet.models.rcnn_settings import RoIHeadSettings, RPNSettings

pytestmark = pytest.mark.usefixtures("one_thread")
METADATA = {"class_names": ["a", "b"], "input": {"range": [0, 1]}, "note": "text"}


def _export_and_check(module, example, inputs, tmp_path, fmt, axes):
    path = tmp_path / f"model.{fmt}"
    name = "images" if isinstance(module, ClassifierExport) else "image"
    export_module(module, example, path, fmt, input_name=name, dynamic_axes=axes, metadata=METADATA)
    assert read_metadata(path, fmt) == METADATA
    return check_export(module, load_exported(path, fmt), inputs)


@pytest.mark.parametrize(("name", "size"), [("cifar_resnet20", 32), ("resnet18", 64)])
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_classifiers_export_with_a_variable_batch(tmp_path, name, size, fmt):
    torch.manual_seed(0)
    net = create_model(name, num_classes=5).eval()
    mean, std = torch.rand(3, size, size), torch.full((3, 1, 1), 0.25)
    module = ClassifierExport(net, mean, std).eval()
    inputs = [torch.rand(2, 3, size, size), torch.rand(5, 3, size, size)]
    checks = _export_and_check(module, inputs[0], inputs, tmp_path, fmt, {0: "batch"})
    assert [c.input_shape[0] for c in checks] == [2, 5]
    assert all(c.within_tolerance() for c in checks), [c.describe() for c in checks]
    # the normalisation is inside: the exported model is the network on (x - mean) / std
    with torch.no_grad():
        expected = net((inputs[0] - mean) / std)
    assert torch.allclose(module(inputs[0]), expected)


def _detector(head, masks, conventions, score_thresh=0.0):
    torch.manual_seed(0)
    return build_detector(
        "resnet18", head=head, num_classes=3, masks=masks, backbone_weights=None,
        conventions=conventions, min_size=96, max_size=128,
        rpn=RPNSettings(pre_nms_top_n_test=60, post_nms_top_n_test=30),
        roi_heads=RoIHeadSettings(detections_per_img=20, score_thresh=score_thresh),
    ).eval()  # fmt: skip


def _best_score(detector, image):
    with torch.no_grad():
        return float(detector([image])[0]["scores"].max())


@pytest.mark.parametrize(
    ("head", "masks", "d2", "fmt"),
    [
        ("fpn", True, False, "onnx"),
        ("c4", True, True, "onnx"),
        ("fpn", False, True, "torchscript"),
        ("c4", False, False, "torchscript"),
    ],
)
def test_detectors_export_and_find_the_same_boxes_at_other_sizes(tmp_path, head, masks, d2, fmt):
    conventions = RCNNConventions.detectron2(head) if d2 else TORCHVISION
    detector = _detector(head, masks, conventions)
    torch.manual_seed(1)
    noise, other, black = torch.rand(3, 90, 120), torch.rand(3, 120, 100), torch.zeros(3, 90, 120)
    # A threshold between the two images' best scores: the export is traced on an image with
    # detections and must still run where the detector finds nothing (torchvision#2380).
    found, empty = sorted([noise, black], key=lambda im: -_best_score(detector, im))
    detector.roi_heads.score_thresh = (
        _best_score(detector, found) + _best_score(detector, empty)
    ) / 2
    module = DetectorExport(detector).eval()
    assert module.outputs == ("boxes", "labels", "scores", *(("masks",) if masks else ()))
    axes = {1: "height", 2: "width"}
    checks = _export_and_check(module, found, [found, other, empty], tmp_path, fmt, axes)
    assert checks[0].found > 0 and checks[2].found == 0
    assert [c.input_shape for c in checks] == [(3, 90, 120), (3, 120, 100), (3, 90, 120)]
    assert all(c.within_tolerance() for c in checks), [c.describe() for c in checks]


def test_a_detector_that_finds_nothing_exports_and_runs(tmp_path):
    detector = _detector("fpn", True, RCNNConventions.detectron2("fpn"), score_thresh=1.0)
    module = DetectorExport(detector).eval()
    image = torch.rand(3, 90, 120)
    checks = _export_and_check(module, image, [image], tmp_path, "onnx", {1: "h", 2: "w"})
    assert checks[0].found == 0 and checks[0].within_tolerance()


def test_differences_and_other_shapes_are_reported():
    module = ClassifierExport(torch.nn.Flatten(), torch.zeros(3, 1, 1), torch.ones(3, 1, 1))
    x = torch.rand(2, 3, 1, 1)
    (check,) = check_export(module, lambda x: (x.flatten(1) + 1e-3,), [x])
    assert check.max_diff["logits"] == pytest.approx(1e-3, rel=1e-3)
    assert not check.within_tolerance() and TOLERANCES["logits"] < 1e-3
    # large logits are judged relative to their size: float32 steps are 6e-5 at 1000
    big = torch.full((2, 3, 1, 1), 1000.0)
    (large,) = check_export(module, lambda x: (x.flatten(1) + 1e-2,), [big])
    assert large.allowed["logits"] == pytest.approx(TOLERANCES["logits"] * 1000)
    assert large.within_tolerance()
    with pytest.raises(ValueError, match=r"logits has shape \[2, 2\], PyTorch's \[2, 3\]"):
        check_export(module, lambda x: (x.flatten(1)[:, :2],), [x])


def test_a_missing_onnx_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises ImportError
    module = ClassifierExport(torch.nn.Flatten(), torch.zeros(3, 1, 1), torch.ones(3, 1, 1))
    with pytest.raises(ImportError, match=r"resdet\[export\]"):
        export_module(
            module, torch.rand(1, 3, 1, 1), tmp_path / "m.onnx", "onnx",
            input_name="images", dynamic_axes={0: "batch"}, metadata={},
        )  # fmt: skip
    assert not (tmp_path / "m.onnx").exists()


def test_the_loop_free_detectron2_paste_equals_the_loop():
    torch.manual_seed(0)
    masks = torch.rand(5, 1, 28, 28)
    boxes = torch.tensor(
        [
            [10.3, 5.7, 40.2, 30.9],  # inside
            [-8.0, -3.5, 12.4, 9.0],  # over the top-left corner
            [50.5, 20.0, 75.0, 47.0],  # over the bottom-right corner
            [20.0, 20.0, 20.4, 20.6],  # under a pixel
            [2.0, 30.0, 70.0, 33.0],  # long and thin
        ]
    )
    loop = paste_masks_detectron2(masks, boxes, (45, 70))
    assert torch.allclose(_paste_separably(masks, boxes, (45, 70)), loop, atol=1e-6)
    assert (loop[0, 0, :, :8] == 0).all()  # beyond one pixel of its box: zero
