"""torchvision's and detectron2's conventions: each option does what it says, and the defaults
are exactly torchvision's."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import roi_align as tv_roi_align

from resdet.experiments.configs import DetExperiment
from resdet.experiments.detection import build_model
from resdet.models.anchors import ExactAnchorGenerator
from resdet.models.conventions import TORCHVISION, RCNNConventions
from resdet.models.detector import build_detector
from resdet.models.rcnn_heads import box_regression_loss
from resdet.models.rcnn_settings import RPNSettings
from resdet.models.roi_align import GatherMultiScaleRoIAlign


def test_exact_anchors_are_detectron2s_formula_and_round_to_torchvisions() -> None:
    sizes, ratios = ((32, 64),), ((0.5, 1.0, 2.0),)
    exact = ExactAnchorGenerator(sizes, ratios, strides=(16,))
    (cell,) = exact.cell_anchors
    # detectron2's DefaultAnchorGenerator: w = sqrt(s^2 / r), h = r * w, box [-w/2, -h/2, ...];
    # torchvision's order: aspect ratio major, size minor.
    expected = []
    for ratio in ratios[0]:
        for size in sizes[0]:
            w = math.sqrt(size * size / ratio)
            h = ratio * w
            expected.append([-w / 2, -h / 2, w / 2, h / 2])
    torch.testing.assert_close(cell, torch.tensor(expected), rtol=0, atol=1e-5)
    assert cell[0, 2].item() == pytest.approx(22.627, abs=1e-3)  # torchvision rounds it to 23
    (rounded,) = AnchorGenerator(sizes, ratios).cell_anchors
    torch.testing.assert_close(cell.round(), rounded)


def test_exact_anchors_keep_their_stride_on_unpadded_images() -> None:
    # A 600x800 image has a 38x50 stride-16 map; 600 // 38 is 15, so torchvision would place
    # the anchors 15 pixels apart in y.
    exact = ExactAnchorGenerator(((32,),), ((1.0,),), strides=(16,))
    images = ImageList(torch.zeros(1, 3, 600, 800), [(600, 800)])
    (anchors,) = exact(images, [torch.zeros(1, 8, 38, 50)])
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    assert anchors.shape == (38 * 50, 4)
    assert centres[:, 1].unique().tolist() == [16.0 * y for y in range(38)]
    assert centres[:, 0].unique().tolist() == [16.0 * x for x in range(50)]


@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_aligned_pooler_is_torchvisions_roi_align_v2_per_level(sampling_ratio: int) -> None:
    torch.manual_seed(0)
    features = {str(i): torch.randn(2, 4, 64 // 2**i, 64 // 2**i) for i in range(4)}
    boxes = [torch.tensor([[3.0, 5.0, 40.0, 60.0], [0.0, 0.0, 250.0, 250.0]]),
             torch.tensor([[10.5, 2.25, 20.0, 9.0]])]  # fmt: skip
    shapes = [(256, 256), (256, 256)]
    pooler = GatherMultiScaleRoIAlign(list(features), 7, sampling_ratio, aligned=True)
    ours = pooler(features, boxes, shapes)
    reference = MultiScaleRoIAlign(list(features), 7, sampling_ratio)
    reference(features, [b[:0] for b in boxes], shapes)  # infers the scales and level mapper
    levels = reference.map_levels(boxes)
    rois = torch.cat(
        [torch.cat([torch.full((len(b), 1), float(i)), b], 1) for i, b in enumerate(boxes)]
    )
    for k, (roi, level) in enumerate(zip(rois, levels, strict=True)):
        expected = tv_roi_align(
            features[str(int(level))], roi[None], 7, reference.scales[level], sampling_ratio, True
        )
        torch.testing.assert_close(ours[k : k + 1].contiguous(), expected, atol=2e-6, rtol=0)
    unaligned = GatherMultiScaleRoIAlign(list(features), 7, sampling_ratio)(features, boxes, shapes)
    assert not torch.allclose(ours, unaligned)


def test_box_regression_loss_is_l1_at_beta_zero() -> None:
    deltas, targets = torch.randn(10, 4), torch.randn(10, 4)
    assert box_regression_loss(deltas, targets, 0.0) == (deltas - targets).abs().sum()
    torch.testing.assert_close(
        box_regression_loss(deltas, targets, 1 / 9),
        F.smooth_l1_loss(deltas, targets, beta=1 / 9, reduction="sum"),
    )


def _batch() -> tuple[list[torch.Tensor], list[dict]]:
    images = [torch.rand(3, 96, 128), torch.rand(3, 112, 96)]
    boxes = [torch.tensor([[8.0, 10.0, 60.0, 70.0], [50.0, 20.0, 120.0, 90.0]]), torch.zeros(0, 4)]
    targets = []
    for (h, w), b in zip([(96, 128), (112, 96)], boxes, strict=True):
        masks = torch.zeros(len(b), h, w, dtype=torch.uint8)
        for mask, (x0, y0, x1, y1) in zip(masks, b.int().tolist(), strict=True):
            mask[y0:y1, x0:x1] = 1
        targets.append({"boxes": b, "labels": torch.arange(1, len(b) + 1), "masks": masks})
    return images, targets


@pytest.mark.parametrize("head", ["c4", "fpn"])
def test_default_heads_give_torchvisions_losses_and_detections(head: str) -> None:
    torch.manual_seed(0)
    small = {"min_size": 96, "max_size": 128, "rpn": RPNSettings(post_nms_top_n_test=50)}
    ours = build_detector(
        "resnet18", head=head, num_classes=3, masks=True, backbone_weights=None, **small
    )
    reference = copy.deepcopy(ours)
    # The same modules under torchvision's own classes: the subclasses must change nothing.
    reference.rpn.__class__ = RegionProposalNetwork
    reference.roi_heads.__class__ = RoIHeads
    images, targets = _batch()
    losses = []
    for model in (ours, reference):
        torch.manual_seed(1)  # the same RoI and anchor sampling
        losses.append(model.train()(images, copy.deepcopy(targets)))
    assert losses[0].keys() == losses[1].keys()
    for key in losses[0]:
        torch.testing.assert_close(losses[0][key], losses[1][key], rtol=0, atol=0)
    with torch.no_grad():
        detections = [model.eval()(images) for model in (ours, reference)]
    for mine, theirs in zip(*detections, strict=True):
        assert mine.keys() == theirs.keys()
        for key in mine:
            torch.testing.assert_close(mine[key], theirs[key], rtol=0, atol=0)


def test_l1_box_losses_differ_from_smooth_l1() -> None:
    torch.manual_seed(0)
    images, targets = _batch()
    models = [
        build_detector(
            "resnet18",
            head="fpn",
            num_classes=3,
            backbone_weights=None,
            min_size=96,
            max_size=128,
            conventions=RCNNConventions(rpn_box_loss_beta=beta, roi_box_loss_beta=beta),
        )
        for beta in (1 / 9, 0.0)
    ]
    models[1].load_state_dict(models[0].state_dict())
    losses = []
    for model in models:
        torch.manual_seed(1)
        losses.append(model.train()(images, copy.deepcopy(targets)))
    for key in ("loss_box_reg", "loss_rpn_box_reg"):
        # |x| - smooth_l1(x) lies in [0, beta / 2] per element, and is > 0 somewhere
        assert losses[1][key] > losses[0][key]
    torch.testing.assert_close(losses[1]["loss_classifier"], losses[0]["loss_classifier"])


def test_detectron2_conventions_reach_the_model() -> None:
    with torch.device("meta"):
        c4 = build_detector(
            "resnet18", head="c4", num_classes=3, masks=True, backbone_weights=None,
            conventions=RCNNConventions.detectron2("c4"),
        )  # fmt: skip
    assert c4.transform.size_divisible == 1
    assert isinstance(c4.rpn.anchor_generator, ExactAnchorGenerator)
    for pool in (c4.roi_heads.box_roi_pool, c4.roi_heads.mask_roi_pool):
        assert pool.aligned and pool.sampling_ratio == 0
    assert c4.rpn.box_loss_beta == 0 and c4.roi_heads.box_loss_beta == 0
    torch.manual_seed(0)
    fpn = build_detector(
        "resnet18", head="fpn", num_classes=3, masks=True, backbone_weights=None,
        conventions=RCNNConventions.detectron2("fpn"),
    )  # fmt: skip
    assert fpn.transform.size_divisible == 32
    predictor = fpn.roi_heads.box_predictor
    assert predictor.cls_score.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert predictor.bbox_pred.weight.std().item() == pytest.approx(0.001, rel=0.05)
    assert not predictor.cls_score.bias.any() and not predictor.bbox_pred.bias.any()
    # Kaiming-uniform a=1 draws U(+-sqrt(3 / fan_in)): std 1 / sqrt(fan_in), where PyTorch's
    # Linear default (U(+-1 / sqrt(fan_in))) has std 1 / sqrt(3 fan_in).
    fc6 = fpn.roi_heads.box_head.fc6
    assert fc6.weight.std().item() == pytest.approx(1 / math.sqrt(fc6.in_features), rel=0.02)
    assert not fc6.bias.any()
    logits = fpn.roi_heads.mask_predictor.mask_fcn_logits.weight
    assert logits.std().item() == pytest.approx(0.001, rel=0.1)


def test_config_defaults_are_torchvisions_conventions() -> None:
    cfg = DetExperiment()
    with torch.device("meta"):
        model = build_model(cfg, 3, backbone_weights=None)
    assert model.transform.size_divisible == TORCHVISION.size_divisible
    assert type(model.rpn.anchor_generator) is AnchorGenerator
    assert not model.roi_heads.box_roi_pool.aligned
    assert model.rpn.box_loss_beta == model.roi_heads.box_loss_beta == 1 / 9
