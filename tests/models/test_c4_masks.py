"""The C4 mask branch trains on the box branch's res5 maps (detectron2's ``Res5ROIHeads``).

Checked against the path it replaces, kept here as a subclass: pool the positive RoIs a second
time and run res5 on them again. With frozen BN both give the same loss and gradients.
"""

import pytest
import torch
from torch import Tensor

from resdet.models.detector import build_detector
from resdet.models.rcnn_heads import BoxMaskHeads
from resdet.models.rcnn_settings import RoIHeadSettings, RPNSettings


class RePoolingHeads(BoxMaskHeads):
    """The former C4 training path: the mask head pools and runs res5 on the positive RoIs."""

    def _box_features(self, pooled: Tensor) -> tuple[Tensor, None]:
        return self.box_head(pooled), None


pytestmark = pytest.mark.usefixtures("one_thread")


def _small_mask_rcnn(head: str = "c4") -> torch.nn.Module:
    """A resnet18 Mask R-CNN with random weights and few proposals and RoIs."""
    torch.manual_seed(0)
    return build_detector(
        "resnet18", head=head, num_classes=3, masks=True, backbone_weights=None,
        min_size=96, max_size=128,
        rpn=RPNSettings(
            pre_nms_top_n_train=100, pre_nms_top_n_test=100,
            post_nms_top_n_train=20, post_nms_top_n_test=10,
        ),
        # random weights: a zero score threshold keeps detections to mask
        roi_heads=RoIHeadSettings(batch_size_per_image=16, detections_per_img=10, score_thresh=0.0),
    )  # fmt: skip


def _batch() -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """Two images with two and one boxes, each mask the box's inner half."""
    torch.manual_seed(1)
    images, targets = [], []
    for (h, w), boxes in (
        ((96, 128), [[8, 10, 60, 70], [50, 20, 120, 90]]),
        ((112, 96), [[20, 30, 80, 100]]),
    ):
        masks = torch.zeros(len(boxes), h, w, dtype=torch.uint8)
        for k, (x0, y0, x1, y1) in enumerate(boxes):
            masks[
                k, (3 * y0 + y1) // 4 : (y0 + 3 * y1) // 4, (3 * x0 + x1) // 4 : (x0 + 3 * x1) // 4
            ] = 1
        images.append(torch.rand(3, h, w))
        targets.append(
            {
                "boxes": torch.tensor(boxes, dtype=torch.float32),
                "labels": torch.arange(1, len(boxes) + 1),
                "masks": masks,
            }
        )
    return images, targets


def _count_calls(module: torch.nn.Module) -> list[int]:
    """Batch sizes of ``module``'s calls, appended as they happen."""
    calls: list[int] = []
    module.register_forward_hook(lambda m, inputs, output: calls.append(len(output)))
    return calls


def _train_step(model: torch.nn.Module) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Losses and the trained parameters' gradients of one step, RoI sampling seeded."""
    model.train()
    model.zero_grad()
    images, targets = _batch()
    torch.manual_seed(2)
    losses = model(images, targets)
    sum(losses.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, grads


def test_c4_training_runs_res5_once_and_pools_once() -> None:
    model = _small_mask_rcnn()
    res5_calls = _count_calls(model.roi_heads.box_head.res5)
    mask_pool_calls = _count_calls(model.roi_heads.mask_roi_pool)
    box_pool_calls = _count_calls(model.roi_heads.box_roi_pool)
    losses, _ = _train_step(model)
    assert losses["loss_mask"] > 0
    assert len(box_pool_calls) == 1 and mask_pool_calls == []
    assert res5_calls == box_pool_calls  # one res5 pass, on all sampled RoIs


def test_c4_mask_loss_and_gradients_equal_the_repooling_path() -> None:
    model = _small_mask_rcnn()
    res5_calls = _count_calls(model.roi_heads.box_head.res5)
    new_losses, new_grads = _train_step(model)
    model.roi_heads.__class__ = RePoolingHeads
    old_losses, old_grads = _train_step(model)
    # the former path's second res5 pass ran on the positives: fewer RoIs than the first
    assert len(res5_calls) == 3 and 0 < res5_calls[2] < res5_calls[1] == res5_calls[0]
    assert new_losses.keys() == old_losses.keys()
    for key in new_losses:
        torch.testing.assert_close(new_losses[key], old_losses[key], rtol=1e-5, atol=1e-6)
    assert new_grads.keys() == old_grads.keys()
    assert any(".res5." in name for name in new_grads)
    for name in new_grads:
        torch.testing.assert_close(new_grads[name], old_grads[name], rtol=1e-4, atol=1e-6)


def test_c4_eval_masks_the_detections_with_res5() -> None:
    model = _small_mask_rcnn().eval()
    pooled_boxes: list[list[Tensor]] = []
    model.roi_heads.mask_roi_pool.register_forward_hook(
        lambda m, inputs, output: pooled_boxes.append(inputs[1])
    )
    res5_calls = _count_calls(model.roi_heads.box_head.res5)
    heads_out: list[list[dict[str, Tensor]]] = []
    model.roi_heads.register_forward_hook(lambda m, inputs, output: heads_out.append(output[0]))
    images, _ = _batch()
    with torch.no_grad():
        detections = model(images)
        model.roi_heads.__class__ = RePoolingHeads
        former = model(images)
    # res5 on the proposals, then on the detections (twice: once per path)
    assert len(res5_calls) == 4 and res5_calls[1] == sum(len(d["boxes"]) for d in detections)
    for boxes, result in zip(pooled_boxes[0], heads_out[0], strict=True):
        assert torch.equal(boxes, result["boxes"])  # the detections, before rescaling
    assert all(len(d["masks"]) == len(d["boxes"]) > 0 for d in detections)
    for ours, theirs in zip(detections, former, strict=True):
        for key in ("boxes", "labels", "scores", "masks"):
            assert torch.equal(ours[key], theirs[key]), key


def test_fpn_mask_branch_still_pools_the_positives() -> None:
    model = _small_mask_rcnn("fpn")
    mask_pool_calls = _count_calls(model.roi_heads.mask_roi_pool)
    losses, _ = _train_step(model)
    assert losses["loss_mask"] > 0 and len(mask_pool_calls) == 1
