"""C4 Mask R-CNN training step on CPU: the mask branch on the box branch's res5 maps vs re-pooling.

resdet's ``BoxMaskHeads`` trains the C4 mask branch on the res5 maps the box branch computed for
the sampled RoIs (detectron2's ``Res5ROIHeads``). The former path, kept here as a subclass,
pooled the positive RoIs of res4 again and ran res5 on them a second time. One model (random
weights, frozen BN) trains on one synthetic batch, switching between the two paths step by step
(A B A B after warm-up); the median of the per-pair ratios new / old is printed (below 1: the
new path is faster), with the positive RoIs per step, which set the former path's extra work.

A random-weight RPN's proposals rarely overlap the objects, so the positives would be the
ground-truth boxes alone (torchvision adds them to the proposals); a trained RPN's proposals
cluster on the objects and the positives reach the sampler's cap (25% of the sampled RoIs).
``--near-object`` K appends K jittered copies of each ground-truth box to the proposals to
stand in for that; ``--near-object 0`` times the raw random RPN.

    python tools/bench_c4_masks.py --pairs 7
    python tools/bench_c4_masks.py --pairs 7 --near-object 0
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from torch import Tensor

from resdet.models.detector import build_detector
from resdet.models.rcnn_heads import BoxMaskHeads
from resdet.models.rcnn_settings import RoIHeadSettings, RPNSettings

SIZES = ((480, 560), (512, 384))  # (height, width) of the two images, px


class RePoolingHeads(BoxMaskHeads):
    """The former C4 training path: the mask head pools and runs res5 on the positive RoIs."""

    def _box_features(self, pooled: Tensor) -> tuple[Tensor, None]:
        return self.box_head(pooled), None


def synthetic_batch(objects: int, seed: int) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """Random images of ``SIZES``, each with ``objects`` boxes of 40-200 px and ellipse masks."""
    generator = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for height, width in SIZES:
        sizes = 40 + 160 * torch.rand(objects, 2, generator=generator)
        corners = torch.rand(objects, 2, generator=generator) * (
            torch.tensor([width, height]) - sizes
        )
        boxes = torch.cat([corners, corners + sizes], dim=1)
        ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        centre, half = (boxes[:, :2] + boxes[:, 2:]) / 2, sizes / 2
        inside = ((xs - centre[:, 0, None, None]) / half[:, 0, None, None]) ** 2 + (
            (ys - centre[:, 1, None, None]) / half[:, 1, None, None]
        ) ** 2
        images.append(torch.rand(3, height, width, generator=generator))
        targets.append(
            {
                "boxes": boxes,
                "labels": torch.randint(1, 4, (objects,), generator=generator),
                "masks": (inside <= 1).to(torch.uint8),
            }
        )
    return images, targets


def add_near_object_proposals(model: torch.nn.Module, copies: int, seed: int) -> None:
    """Append ``copies`` copies of each target box to the RPN's proposals, each coordinate
    moved by N(0, 0.1 x box size) (most keep IoU >= 0.5 with their box: positives)."""
    generator = torch.Generator().manual_seed(seed)

    def hook(rpn, inputs, output):
        proposals, losses = output
        targets = inputs[2]
        near = []
        for image_proposals, target in zip(proposals, targets, strict=True):
            boxes = target["boxes"].repeat(copies, 1)
            sizes = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
            boxes = boxes + 0.1 * sizes * torch.randn(boxes.shape, generator=generator)
            near.append(torch.cat([image_proposals, boxes]))
        return near, losses

    model.rpn.register_forward_hook(hook)


def build(backbone: str, rois: int, proposals: int) -> torch.nn.Module:
    """A 3-class C4 Mask R-CNN with random weights, ``proposals`` per image before and after
    NMS and ``rois`` sampled per image; images are used at their own size."""
    torch.manual_seed(0)
    model = build_detector(
        backbone,
        head="c4",
        num_classes=3,
        masks=True,
        backbone_weights=None,
        min_size=min(min(s) for s in SIZES),
        max_size=max(max(s) for s in SIZES),
        train_resize=False,
        rpn=RPNSettings(
            pre_nms_top_n_train=proposals,
            pre_nms_top_n_test=proposals,
            post_nms_top_n_train=proposals,
            post_nms_top_n_test=proposals,
        ),
        roi_heads=RoIHeadSettings(batch_size_per_image=rois),
    )
    return model.train()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--pairs", type=int, default=5, help="timed (old, new) pairs")
    parser.add_argument("--warmup", type=int, default=1, help="untimed pairs first")
    parser.add_argument("--objects", type=int, default=8, help="boxes per image")
    parser.add_argument("--rois", type=int, default=128, help="sampled RoIs per image")
    parser.add_argument("--proposals", type=int, default=1000, help="RPN proposals per image")
    parser.add_argument(
        "--near-object", type=int, default=8, help="jittered proposals per object (see above)"
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = build(args.backbone, args.rois, args.proposals)
    images, targets = synthetic_batch(args.objects, seed=1)
    if args.near_object:
        add_near_object_proposals(model, args.near_object, seed=2)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    positives: list[int] = []
    model.roi_heads.mask_predictor.register_forward_hook(
        lambda m, inputs, output: positives.append(len(output))
    )

    def step(heads: type) -> tuple[float, float]:
        """Seconds of one forward + backward + SGD step with ``heads``'s path, and loss_mask."""
        model.roi_heads.__class__ = heads
        start = time.perf_counter()
        losses = model(images, targets)
        sum(losses.values()).backward()
        optimizer.step()
        optimizer.zero_grad()
        return time.perf_counter() - start, losses["loss_mask"].item()

    for _ in range(args.warmup):
        step(RePoolingHeads), step(BoxMaskHeads)
    positives.clear()
    times: dict[str, list[float]] = {"old": [], "new": []}
    for _ in range(args.pairs):
        for name, heads in (("old", RePoolingHeads), ("new", BoxMaskHeads)):
            seconds, loss_mask = step(heads)
            times[name].append(seconds)
            assert math.isfinite(loss_mask), loss_mask
    ratios = [new / old for old, new in zip(times["old"], times["new"], strict=True)]
    sampled = args.rois * len(SIZES)
    print(
        f"{args.backbone}-C4 Mask R-CNN, images {SIZES}, {args.objects} objects each, "
        f"{args.rois} RoIs/image, {args.near_object} near-object proposals per object, "
        f"{args.threads} thread(s), torch {torch.__version__}"
    )
    print(
        f"positive RoIs per step: median {statistics.median(positives)} of {sampled} sampled "
        f"(min {min(positives)}, max {max(positives)})"
    )
    for name, path in (("old", "re-pool, res5 again"), ("new", "box branch's res5 maps")):
        steps = " ".join(f"{t:.3f}" for t in times[name])
        print(f"{name} ({path}): median step {statistics.median(times[name]):.3f} s ({steps})")
    print(f"step time new/old, median of {args.pairs} pair ratios: {statistics.median(ratios):.3f}")
    print("pair ratios: " + " ".join(f"{r:.3f}" for r in ratios))


if __name__ == "__main__":
    main()
