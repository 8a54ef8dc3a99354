"""The RPN's and the RoI heads' settings of ``build_detector``, as two typed groups.

Defaults are torchvision's ``FasterRCNN`` arguments of the same names (``rpn_*`` and
``box_*``), so a default detector is torchvision's. detectron2's C4 configs keep more proposals
before NMS (12000 in training, 6000 in testing); its FPN configs match torchvision here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RPNSettings:
    """Anchors and proposal selection of the region proposal network.

    ``anchor_sizes`` in pixels: C4 puts them all on its one stride-16 level (times
    ``aspect_ratios``: 15 anchors per location); FPN puts one per level P2..P6 (5 sizes).
    ``pre_nms_top_n_*``: proposals kept per level before NMS (IoU ``nms_thresh``),
    ``post_nms_top_n_*``: per image after it. For the loss, anchors with IoU >= ``fg_iou_thresh``
    to a ground-truth box are positives, < ``bg_iou_thresh`` negatives, and
    ``batch_size_per_image`` of them are sampled per image, at most ``positive_fraction``
    positive.
    """

    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    pre_nms_top_n_train: int = 2000
    pre_nms_top_n_test: int = 1000
    post_nms_top_n_train: int = 2000
    post_nms_top_n_test: int = 1000
    nms_thresh: float = 0.7
    fg_iou_thresh: float = 0.7
    bg_iou_thresh: float = 0.3
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5

    def __post_init__(self) -> None:
        counts = {
            name: getattr(self, name)
            for name in (
                "pre_nms_top_n_train",
                "pre_nms_top_n_test",
                "post_nms_top_n_train",
                "post_nms_top_n_test",
                "batch_size_per_image",
            )
        }
        bad = {name: value for name, value in counts.items() if value < 1}
        if bad or not self.anchor_sizes or not self.aspect_ratios:
            raise ValueError(
                f"RPN settings need positive counts and at least one anchor size and ratio, "
                f"got {bad or (self.anchor_sizes, self.aspect_ratios)}"
            )

    def top_n(self, stage: str) -> dict[str, int]:
        """``{"training": n, "testing": n}`` for ``stage`` ``"pre_nms"`` or ``"post_nms"``, as
        torchvision's ``RegionProposalNetwork`` takes them."""
        return {
            "training": getattr(self, f"{stage}_top_n_train"),
            "testing": getattr(self, f"{stage}_top_n_test"),
        }


@dataclass(frozen=True)
class RoIHeadSettings:
    """The box and mask heads on the pooled RoIs.

    For the losses, proposals with IoU >= ``fg_iou_thresh`` are foreground, < ``bg_iou_thresh``
    background, and ``batch_size_per_image`` of them are sampled per image, at most
    ``positive_fraction`` foreground. ``box_head_width``: the FPN
    box head's two fc layers (C4's box head is res5, whose width the backbone fixes).
    ``mask_head_layers``: the FPN mask head's 3x3 conv widths (torchvision's four 256s dominate
    the CPU time of small-image training). ``score_thresh``, ``nms_thresh`` (per class) and
    ``detections_per_img`` select the detections at test time.
    """

    fg_iou_thresh: float = 0.5
    bg_iou_thresh: float = 0.5
    batch_size_per_image: int = 512
    positive_fraction: float = 0.25
    box_head_width: int = 1024
    mask_head_layers: tuple[int, ...] = (256, 256, 256, 256)
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_img: int = 100

    def __post_init__(self) -> None:
        if min(self.batch_size_per_image, self.box_head_width, self.detections_per_img) < 1:
            raise ValueError(
                "RoI head settings need batch_size_per_image, box_head_width and "
                f"detections_per_img >= 1, got {self}"
            )
        if not self.mask_head_layers or min(self.mask_head_layers) < 1:
            raise ValueError(
                f"mask_head_layers must be positive widths, got {self.mask_head_layers}"
            )
