"""torchvision's RPN and RoI heads with the box-regression loss's smooth-L1 beta as a parameter.

torchvision fixes beta at 1/9 in both; detectron2 trains with beta 0 (plain L1) in both. The
losses are otherwise torchvision's: the RPN's box loss is summed over the sampled positive
anchors and divided by the number of sampled anchors, the RoI head's summed over the positive
RoIs (at their class's regression) and divided by all sampled RoIs; detectron2 normalises the
same way (its RPN by ``batch_size_per_image x images``, which is the number of sampled anchors
whenever an image has enough of them). Inference is untouched. The C4 mask branch trains on the
box branch's res5 maps, as detectron2's ``Res5ROIHeads`` (see ``BoxMaskHeads``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_inference, maskrcnn_loss
from torchvision.models.detection.rpn import RegionProposalNetwork

from resdet.models.c4 import Res5MaskHead

TORCHVISION_BETA = 1 / 9


def box_regression_loss(deltas: Tensor, targets: Tensor, beta: float) -> Tensor:
    """Summed smooth-L1 (``beta`` > 0) or L1 (``beta`` = 0) of [N, 4] deltas against targets."""
    if beta == 0:
        return F.l1_loss(deltas, targets, reduction="sum")
    return F.smooth_l1_loss(deltas, targets, beta=beta, reduction="sum")


class RPN(RegionProposalNetwork):
    """torchvision's ``RegionProposalNetwork`` whose box loss uses ``box_loss_beta``."""

    def __init__(self, *args: Any, box_loss_beta: float = TORCHVISION_BETA, **kwargs: Any) -> None:
        """torchvision's arguments, and the smooth-L1 ``box_loss_beta`` (0: L1)."""
        super().__init__(*args, **kwargs)
        self.box_loss_beta = box_loss_beta

    def compute_loss(
        self,
        objectness: Tensor,
        pred_bbox_deltas: Tensor,
        labels: list[Tensor],
        regression_targets: list[Tensor],
    ) -> tuple[Tensor, Tensor]:
        """(objectness BCE mean over the sampled anchors, box loss / number sampled)."""
        positive, negative = self.fg_bg_sampler(labels)
        positive_index = torch.where(torch.cat(positive))[0]
        sampled = torch.cat([positive_index, torch.where(torch.cat(negative))[0]])
        box_loss = (
            box_regression_loss(
                pred_bbox_deltas[positive_index],
                torch.cat(regression_targets)[positive_index],
                self.box_loss_beta,
            )
            / sampled.numel()
        )
        objectness_loss = F.binary_cross_entropy_with_logits(
            objectness.flatten()[sampled], torch.cat(labels)[sampled]
        )
        return objectness_loss, box_loss


class BoxMaskHeads(RoIHeads):
    """torchvision's ``RoIHeads`` for boxes and masks (no keypoints) whose box loss uses
    ``box_loss_beta``.

    ``forward`` is torchvision's sequence: sample RoIs in training, pool, box head, predictor;
    then the classification and box losses, or ``postprocess_detections``; then the mask branch
    on the positive RoIs (training) or the detections (inference) with torchvision's
    ``maskrcnn_loss`` / ``maskrcnn_inference``.

    With the C4 mask head (``Res5MaskHead``, which shares the box head's res5) training does
    not pool the positive RoIs again nor run res5 on them a second time: the box branch keeps
    its res5 maps [N, C5, 7, 7] of all sampled RoIs and the mask predictor takes the positive
    ones, as detectron2's ``Res5ROIHeads``. Those are the maps the second pass would compute
    from the same 14x14 RoIs (same loss, same gradients) when BN in res5 is frozen; with
    trainable BN they are normalised with all sampled RoIs' batch statistics, not the positive
    ones' alone. Inference pools the detections and runs res5 on them (they are not proposals).
    """

    def __init__(self, *args: Any, box_loss_beta: float = TORCHVISION_BETA, **kwargs: Any) -> None:
        """torchvision's arguments (no keypoint heads), and the smooth-L1 ``box_loss_beta``."""
        super().__init__(*args, **kwargs)
        if self.has_keypoint():
            raise ValueError("keypoint heads are not supported")
        self.box_loss_beta = box_loss_beta

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Detections per image (eval) or ``loss_classifier``, ``loss_box_reg`` (and
        ``loss_mask``) in training; arguments as torchvision's ``RoIHeads.forward``."""
        matched_idxs = labels = None
        if self.training:
            if targets is None:
                raise ValueError("training needs targets")
            proposals, matched_idxs, labels, regression_targets = self.select_training_samples(
                proposals, targets
            )
        box_features, res5_maps = self._box_features(
            self.box_roi_pool(features, proposals, image_shapes)
        )
        class_logits, box_regression = self.box_predictor(box_features)
        result: list[dict[str, Tensor]] = []
        if self.training:
            losses = self._box_losses(class_logits, box_regression, labels, regression_targets)
        else:
            losses = {}
            boxes, scores, classes = self.postprocess_detections(
                class_logits, box_regression, proposals, image_shapes
            )
            result = [
                {"boxes": b, "labels": c, "scores": s}
                for b, s, c in zip(boxes, scores, classes, strict=True)
            ]
        if self.has_mask():
            losses.update(
                self._mask_branch(
                    features,
                    proposals,
                    image_shapes,
                    targets,
                    result,
                    matched_idxs,
                    labels,
                    res5_maps,
                )
            )
        return result, losses

    def _box_features(self, pooled: Tensor) -> tuple[Tensor, Tensor | None]:
        """The box head's features of the pooled RoIs, and in C4 Mask R-CNN training also the
        res5 maps [N, C5, 7, 7] they are averaged from, for the mask branch (else None)."""
        if not (self.training and isinstance(self.mask_head, Res5MaskHead)):
            return self.box_head(pooled), None
        res5_maps = self.box_head.run_res5(pooled)
        return res5_maps.mean(dim=(2, 3)), res5_maps  # as Res5BoxHead.forward

    def _box_losses(
        self,
        class_logits: Tensor,
        box_regression: Tensor,
        labels: list[Tensor],
        regression_targets: list[Tensor],
    ) -> dict[str, Tensor]:
        labels_all = torch.cat(labels)
        positive = torch.where(labels_all > 0)[0]
        per_class = box_regression.reshape(len(class_logits), -1, 4)
        box_loss = box_regression_loss(
            per_class[positive, labels_all[positive]],
            torch.cat(regression_targets)[positive],
            self.box_loss_beta,
        )
        return {
            "loss_classifier": F.cross_entropy(class_logits, labels_all),
            "loss_box_reg": box_loss / labels_all.numel(),
        }

    def _mask_branch(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None,
        result: list[dict[str, Tensor]],
        matched_idxs: list[Tensor] | None,
        labels: list[Tensor] | None,
        res5_maps: Tensor | None,
    ) -> dict[str, Tensor]:
        """The mask loss in training (on positive RoIs); in eval, adds ``masks`` to ``result``.

        ``res5_maps``: the box branch's maps of all sampled RoIs (C4 training), whose positive
        ones replace pooling and running the mask head again; None pools ``mask_boxes``.
        """
        if self.training:
            positive = [torch.where(image_labels > 0)[0] for image_labels in labels]
            mask_boxes = [p[keep] for p, keep in zip(proposals, positive, strict=True)]
            matched = [m[keep] for m, keep in zip(matched_idxs, positive, strict=True)]
        else:
            mask_boxes = [r["boxes"] for r in result]
        if res5_maps is not None:
            # image by image, positives in proposal order: the order of mask_boxes
            mask_features = res5_maps[torch.cat(labels) > 0]
        else:
            mask_features = self.mask_head(self.mask_roi_pool(features, mask_boxes, image_shapes))
        mask_logits = self.mask_predictor(mask_features)
        if self.training:
            loss = maskrcnn_loss(
                mask_logits,
                mask_boxes,
                [t["masks"] for t in targets],
                [t["labels"] for t in targets],
                matched,
            )
            return {"loss_mask": loss}
        probabilities = maskrcnn_inference(mask_logits, [r["labels"] for r in result])
        for masks, r in zip(probabilities, result, strict=True):
            r["masks"] = masks
        return {}
