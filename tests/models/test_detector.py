"""Faster/Mask R-CNN on registry backbones: both head layouts, torchvision parity, loading."""

import copy
import json
import math
from datetime import datetime, timezone
from pathlib import Path

import pytest
import torch
from torchvision.models.detection import fasterrcnn_resnet50_fpn, maskrcnn_resnet50_fpn

from resdet.models import create_model
from resdet.models.detector import build_detector, load_detector_state
from resdet.models.factory import Variant
from resdet.models.rcnn_settings import RoIHeadSettings, RPNSettings
from resdet.models.weights import add_weights

# Small enough for a 2-core CPU: ~100-px images and few RoIs (C4 runs res5 on every RoI,
# about 0.4 GMAC each for resnet18).
SMALL = {
    "min_size": 96,
    "max_size": 128,
    "rpn": RPNSettings(
        pre_nms_top_n_train=100,
        post_nms_top_n_train=20,
        pre_nms_top_n_test=100,
        post_nms_top_n_test=10,
    ),
    "roi_heads": RoIHeadSettings(batch_size_per_image=16, detections_per_img=10),
}


pytestmark = pytest.mark.usefixtures("one_thread")


BOX_LOSSES = {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}


def _batch(masks: bool) -> tuple[list[torch.Tensor], list[dict]]:
    """Two images of different sizes, one with two objects and one with none, in resdet's
    detection target format (contracts.md), extra keys included."""
    images = [torch.rand(3, 96, 128), torch.rand(3, 112, 96)]
    targets = []
    for (h, w), boxes in zip(
        [(96, 128), (112, 96)],
        [[[8.0, 10.0, 60.0, 70.0], [50.0, 20.0, 120.0, 90.0]], []],
        strict=True,
    ):
        boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        target = {
            "boxes": boxes,
            "labels": torch.arange(1, len(boxes) + 1, dtype=torch.int64),
            "image_id": len(targets),
            "size": torch.tensor([h, w]),
            "orig_size": torch.tensor([2 * h, 2 * w]),
            "difficult": torch.zeros(len(boxes), dtype=torch.bool),
        }
        if masks:
            target["masks"] = torch.zeros(len(boxes), h, w, dtype=torch.uint8)
            for mask, (x0, y0, x1, y1) in zip(target["masks"], boxes.int().tolist(), strict=True):
                mask[y0:y1, x0:x1] = 1
        targets.append(target)
    return images, targets


@pytest.mark.parametrize(
    ("head", "masks", "frozen_bn"),
    [("c4", False, True), ("c4", True, False), ("fpn", False, False), ("fpn", True, True)],
)
def test_detector_trains_and_predicts(head: str, masks: bool, frozen_bn: bool) -> None:
    torch.manual_seed(0)
    model = build_detector(
        "resnet18",
        head=head,
        num_classes=3,
        masks=masks,
        backbone_weights=None,
        frozen_bn=frozen_bn,
        **SMALL,
    )
    assert (model.info.head, model.info.backbone, model.info.num_classes) == (head, "resnet18", 3)
    images, targets = _batch(masks)

    model.train()
    losses = model(images, targets)
    assert set(losses) == BOX_LOSSES | ({"loss_mask"} if masks else set())
    assert all(math.isfinite(v.item()) for v in losses.values())
    sum(losses.values()).backward()
    named = dict(model.named_parameters())
    # trainable_stages=3 (default): the stem and res2 are frozen, res3.. train.
    for name, parameter in named.items():
        if name.startswith(("backbone.body.conv1", "backbone.body.bn1", "backbone.body.layer1")):
            assert not parameter.requires_grad and parameter.grad is None, name
    res5 = "roi_heads.box_head.res5" if head == "c4" else "backbone.body.layer4"
    for prefix in ("backbone.body.layer2.0.conv1", f"{res5}.0.conv1", "rpn.head"):
        assert any(n.startswith(prefix) and p.grad is not None for n, p in named.items()), prefix

    model.eval()
    model.roi_heads.score_thresh = 0.0  # random weights score low: keep detections to check
    with torch.no_grad():
        outputs = model(images)
    assert len(outputs) == 2 and all(len(output["boxes"]) for output in outputs)
    for output, image in zip(outputs, images, strict=True):
        n = len(output["boxes"])
        assert output["boxes"].shape == (n, 4) and output["scores"].shape == (n,)
        assert output["labels"].dtype == torch.int64
        assert ((output["labels"] >= 1) & (output["labels"] <= 3)).all()
        # boxes are clipped to the input image, in its pixels
        assert (output["boxes"][:, 2] <= image.shape[2]).all()
        assert (output["boxes"][:, 3] <= image.shape[1]).all()
        if masks:
            assert output["masks"].shape == (n, 1, *image.shape[1:])


@pytest.mark.parametrize("head", ["c4", "fpn"])
def test_frozen_bn_keeps_statistics_and_affine_through_training(head: str) -> None:
    # Paper Appendix A: "BN layers are frozen (fixed affine, statistics from ImageNet)".
    torch.manual_seed(0)
    model = build_detector(
        "resnet18", head=head, num_classes=3, backbone_weights=None, trainable_stages=5, **SMALL
    )
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    frozen = {
        n: b.clone()
        for n, b in model.named_buffers()
        if n.endswith(("running_mean", "weight", "bias", "running_var"))
    }
    assert any(".res5." in n for n in frozen) == (head == "c4")  # C4's per-RoI res5 too
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    images, targets = _batch(masks=False)
    sum(model(images, targets).values()).backward()
    optimizer.step()
    for name, before in frozen.items():
        assert torch.equal(model.get_buffer(name), before), name


def test_c4_structure_resnet50() -> None:
    # Paper Appendix A: conv1..conv4 (stride 16) feed the RPN, conv5_x
    # runs per RoI; R50's res4 has 1024 channels and res5 2048 (paper Table 1: 256x4, 512x4).
    with torch.device("meta"):
        model = build_detector(
            "resnet50", head="c4", num_classes=20, masks=True, backbone_weights=None
        )
        features = model.backbone(torch.empty(1, 3, 224, 320))
        assert list(features) == ["res4"]
        assert features["res4"].shape == (1, 1024, 224 // 16, 320 // 16)
        assert model.roi_heads.box_head(torch.empty(5, 1024, 14, 14)).shape == (5, 2048)
        mask_trunk = model.roi_heads.mask_head(torch.empty(5, 1024, 14, 14))
        assert mask_trunk.shape == (5, 2048, 7, 7)
        assert model.roi_heads.mask_predictor(mask_trunk).shape == (5, 21, 14, 14)
    # 5 sizes x 3 aspect ratios (detectron2's C4 default) at one level
    assert model.rpn.anchor_generator.num_anchors_per_location() == [15]
    assert model.rpn.head.conv[0][0].in_channels == 1024
    assert model.roi_heads.box_predictor.cls_score.in_features == 2048
    # the mask branch shares res5 with the box head: its weights are stored once
    assert not any(k.startswith("roi_heads.mask_head") for k in model.state_dict())
    assert model.roi_heads.mask_head._shared[0] is model.roi_heads.box_head
    clone = copy.deepcopy(model)
    assert clone.roi_heads.mask_head._shared[0] is clone.roi_heads.box_head


def test_torchvision_r50_fpn_state_dicts_load_strictly() -> None:
    with torch.device("meta"):
        reference = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
        # torchvision's num_classes counts background: 91 -> 90 object classes
        ours = build_detector(
            "resnet50",
            head="fpn",
            num_classes=90,
            masks=True,
            backbone_weights=None,
            stride_in_1x1=False,
        )
    ours.load_state_dict(reference.state_dict(), strict=True)


def test_torchvision_r50_fpn_gives_the_same_detections() -> None:
    torch.manual_seed(0)
    # 100 proposals keep the 12544x1024 fc6 cheap; box_score_thresh=0 keeps random detections.
    sizes = {"min_size": 96, "max_size": 128}
    reference = fasterrcnn_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        rpn_post_nms_top_n_test=100,
        box_score_thresh=0.0,
        **sizes,
    ).eval()
    # Give BN non-trivial statistics and affine, as trained weights have.
    for module in reference.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0.0, 0.1)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0.0, 0.1)
    ours = build_detector(
        "resnet50",
        head="fpn",
        num_classes=90,
        backbone_weights=None,
        stride_in_1x1=False,
        channels_last=False,
        rpn=RPNSettings(post_nms_top_n_test=100),
        roi_heads=RoIHeadSettings(score_thresh=0.0),
        **sizes,
    ).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    images = [torch.rand(3, 90, 120)]
    with torch.no_grad():
        expected = reference(images)[0]
        same_order = ours(images)[0]
        ours.backbone.channels_last = True
        channels_last = ours(images)[0]
    # box_score_thresh=0: random weights fill torchvision's box_detections_per_img (100)
    assert len(expected["boxes"]) == 100
    # Same kernels in the same memory order (FusedFrozenBatchNorm2d runs the batch_norm kernel
    # that torchvision's untrained BatchNorm2d runs in eval mode) except RoIAlign, whose gather
    # sums each bin's four corners in another order: rounding only.
    assert torch.equal(same_order["labels"], expected["labels"])
    torch.testing.assert_close(same_order["boxes"], expected["boxes"], atol=1e-4, rtol=0)
    torch.testing.assert_close(same_order["scores"], expected["scores"], atol=1e-5, rtol=0)
    # Channels-last convolutions sum in another order: float rounding only (measured up to
    # 2e-2 px and 1e-4 in score at 128-512 px with tools/bench_det_infer.py).
    assert torch.equal(channels_last["labels"], expected["labels"])
    torch.testing.assert_close(channels_last["boxes"], expected["boxes"], atol=0.05, rtol=0)
    torch.testing.assert_close(channels_last["scores"], expected["scores"], atol=1e-3, rtol=0)


def test_num_classes_change_reinitialises_only_the_predictor() -> None:
    torch.manual_seed(0)
    source = build_detector(
        "resnet18", head="fpn", num_classes=3, masks=True, backbone_weights=None
    )
    target = build_detector(
        "resnet18", head="fpn", num_classes=5, masks=True, backbone_weights=None
    )
    state = source.state_dict()
    messages = load_detector_state(target, state)
    assert len(messages) == 1 and "3 object classes" in messages[0] and "5" in messages[0]
    predictor = ("box_predictor.cls_score", "box_predictor.bbox_pred", "mask_fcn_logits")
    for key, value in target.state_dict().items():
        if any(p in key for p in predictor):
            assert value.shape[0] in (6, 24), key  # 5 classes + background; 4 coords each
        else:
            assert torch.equal(value, state[key]), key
    assert load_detector_state(source, state) == []


def test_other_state_dict_mismatches_name_the_keys() -> None:
    with torch.device("meta"):
        fpn = build_detector("resnet18", head="fpn", num_classes=3, backbone_weights=None)
        c4 = build_detector("resnet18", head="c4", num_classes=3, backbone_weights=None)
        wide = build_detector(
            "resnet18",
            head="fpn",
            num_classes=3,
            backbone_weights=None,
            roi_heads=RoIHeadSettings(box_head_width=256),
        )
    with pytest.raises(
        ValueError,
        match=r"missing keys: backbone\.body\.layer4.*unexpected keys: roi_heads\.box_head\.res5",
    ):
        load_detector_state(fpn, c4.state_dict())
    # fc6 takes 256 FPN channels x 7x7 pooled bins = 12544 inputs (torchvision's TwoMLPHead)
    with pytest.raises(
        ValueError,
        match=r"shape mismatches \(checkpoint vs model\): roi_heads\.box_head\.fc6\.weight \[256, 12544\] vs \[1024, 12544\]",
    ):
        load_detector_state(fpn, wide.state_dict())


def test_auto_weights_warn_when_the_store_has_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RESDET_HOME", str(tmp_path))
    with torch.device("meta"), pytest.warns(UserWarning, match="no ImageNet weights for resnet18"):
        model = build_detector("resnet18", head="c4", num_classes=3)
    assert "resdet weights import" in model.info.backbone_init
    assert "resdet train-cls imagenet --depth 18" in model.info.backbone_init


def test_auto_weights_take_the_newest_imagenet_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RESDET_HOME", str(tmp_path))
    torch.manual_seed(0)
    stored = {}
    for tag, year in (("newer", 2024), ("older", 2020)):
        state = create_model("resnet18").state_dict()
        state["bn1.running_var"] = torch.rand(64) + 0.5  # visible in the FrozenBatchNorm2d
        entry = add_weights(
            "resnet18",
            state,
            tag=tag,
            variant=Variant("B", True),
            num_classes=1000,
            dataset="imagenet",
            metrics={},
            source="test",
        )
        manifest = json.loads(entry.manifest_path.read_text())
        manifest["date"] = datetime(year, 1, 1, tzinfo=timezone.utc).isoformat()
        entry.manifest_path.write_text(json.dumps(manifest))
        stored[tag] = state
    model = build_detector("resnet18", head="fpn", num_classes=3)
    assert "'newer'" in model.info.backbone_init
    body = model.backbone.body
    assert torch.equal(body.layer3[0].conv1.weight, stored["newer"]["layer3.0.conv1.weight"])
    assert torch.equal(body.bn1.running_var, stored["newer"]["bn1.running_var"])


def test_fpn_needs_one_anchor_size_per_level() -> None:
    with torch.device("meta"), pytest.raises(ValueError, match="one anchor size per level"):
        build_detector(
            "resnet18",
            head="fpn",
            num_classes=3,
            backbone_weights=None,
            rpn=RPNSettings(anchor_sizes=(32, 64)),
        )


def test_cifar_backbones_are_refused() -> None:
    with pytest.raises(ValueError, match="cifar_resnet20 is a CIFAR network"):
        build_detector("cifar_resnet20", head="fpn", num_classes=3, backbone_weights=None)


def test_the_pyramid_width_is_a_setting_of_the_fpn_head():
    model = build_detector(
        "resnet18", head="fpn", num_classes=3, masks=True, backbone_weights=None, fpn_channels=64
    )
    assert model.backbone.out_channels == 64
    assert model.roi_heads.box_head.fc6.in_features == 64 * 7 * 7
    assert model.roi_heads.mask_head[0][0].in_channels == 64
    model.eval()
    with torch.no_grad():
        (detections,) = model([torch.rand(3, 96, 128)])
    assert detections["boxes"].shape[1] == 4
    with pytest.raises(ValueError, match="fpn_channels=64 is the FPN head's width"):
        build_detector("resnet18", head="c4", num_classes=3, backbone_weights=None, fpn_channels=64)
