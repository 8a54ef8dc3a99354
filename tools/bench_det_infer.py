"""Inference speed of resdet's R50-FPN Faster R-CNN against torchvision's, same weights.

Both models are torchvision's ``fasterrcnn_resnet50_fpn`` layout with FrozenBatchNorm2d (what
torchvision builds when it loads trained weights); torchvision's is built from its public parts
so nothing is downloaded. One seeded random state dict is loaded into both, they see the same
images, and timed runs alternate between them so that load from other processes hits both
alike. Prints seconds per image (median over the timed runs), the ratio resdet / torchvision
(below 1 means resdet is faster) and whether the detections agree to float tolerance. CPU
time (all threads of this process) is printed too: on a machine shared with other jobs it is
less disturbed than wall time.

    python tools/bench_det_infer.py --min-size 512 --max-size 853 --runs 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

from resdet.models.detector import build_detector

# Agreement tolerance: channels-last convolutions sum in another order, which moves boxes by
# about 1e-3 px and scores by about 1e-5 on random weights (measured at 128-512 px).
BOX_ATOL_PX = 0.05
SCORE_ATOL = 1e-3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--min-size", type=int, default=512, help="shorter side after resize, px")
    parser.add_argument("--max-size", type=int, default=853, help="longer side limit, px")
    parser.add_argument("--height", type=int, default=480, help="input image height, px")
    parser.add_argument("--width", type=int, default=640, help="input image width, px")
    parser.add_argument("--batch", type=int, default=1, help="images per forward pass")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per model")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per model first")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-channels-last", action="store_true", help="resdet in NCHW order")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    sizes = {"min_size": args.min_size, "max_size": args.max_size}
    torch.manual_seed(args.seed)
    reference = FasterRCNN(
        resnet_fpn_backbone(backbone_name="resnet50", weights=None), num_classes=91, **sizes
    ).eval()
    resdet = build_detector(
        "resnet50",
        head="fpn",
        num_classes=90,
        backbone_weights=None,
        stride_in_1x1=False,
        channels_last=not args.no_channels_last,
        **sizes,
    ).eval()
    resdet.load_state_dict(reference.state_dict(), strict=True)
    images = list(torch.rand(args.batch, 3, args.height, args.width))

    models = {"torchvision": reference, "resdet": resdet}
    times: dict[str, list[float]] = {name: [] for name in models}
    cpu_times: dict[str, list[float]] = {name: [] for name in models}
    outputs = {}
    with torch.inference_mode():
        for name, model in models.items():
            for _ in range(args.warmup):
                outputs[name] = model(images)
        for _ in range(args.runs):
            for name, model in models.items():
                start, cpu_start = time.perf_counter(), time.process_time()
                model(images)
                times[name].append((time.perf_counter() - start) / args.batch)
                cpu_times[name].append((time.process_time() - cpu_start) / args.batch)

    per_image = {name: statistics.median(values) for name, values in times.items()}
    best = {name: min(values) for name, values in times.items()}
    print(
        f"R50-FPN Faster R-CNN inference, {args.batch} x {args.height}x{args.width} image(s) "
        f"resized to min {args.min_size} / max {args.max_size}, {torch.get_num_threads()} "
        f"threads, {args.runs} alternating runs (median):"
    )
    cpu = {name: statistics.median(values) for name, values in cpu_times.items()}
    for name, seconds in per_image.items():
        spread = f"{best[name]:.3f}-{max(times[name]):.3f}"
        print(
            f"  {name:<12} {seconds:.3f} s/image wall median (runs {spread}), "
            f"{cpu[name]:.3f} s/image CPU time median"
        )
    print(
        f"  ratio resdet/torchvision: {per_image['resdet'] / per_image['torchvision']:.3f} "
        f"(wall medians), {best['resdet'] / best['torchvision']:.3f} (fastest runs), "
        f"{cpu['resdet'] / cpu['torchvision']:.3f} (CPU time medians)"
    )
    print(f"  detections {_agreement(outputs['resdet'], outputs['torchvision'])}")


def _agreement(ours: list[dict[str, torch.Tensor]], theirs: list[dict[str, torch.Tensor]]) -> str:
    """How two models' detections agree: bit for bit, to tolerance, or not (with counts).

    Detections are matched one to one (same label, boxes and scores within tolerance), not by
    position: random weights give near-equal scores whose order rounding may swap.
    """
    if all(
        torch.equal(mine[key], ref[key])
        for mine, ref in zip(ours, theirs, strict=True)
        for key in ("boxes", "labels", "scores")
    ):
        return "identical (bit for bit)"
    unmatched = total = 0
    box_diff = score_diff = 0.0
    for mine, ref in zip(ours, theirs, strict=True):
        total += max(len(mine["boxes"]), len(ref["boxes"]))
        box_gap = (mine["boxes"][:, None] - ref["boxes"][None]).abs().amax(dim=2)
        score_gap = (mine["scores"][:, None] - ref["scores"][None]).abs()
        fits = (
            (mine["labels"][:, None] == ref["labels"][None])
            & (box_gap <= BOX_ATOL_PX)
            & (score_gap <= SCORE_ATOL)
        )
        taken = torch.zeros(len(ref["boxes"]), dtype=torch.bool)
        for i in range(len(mine["boxes"])):
            candidates = torch.nonzero(fits[i] & ~taken).flatten()
            if len(candidates) == 0:
                unmatched += 1
                continue
            j = candidates[box_gap[i, candidates].argmin()]
            taken[j] = True
            box_diff = max(box_diff, box_gap[i, j].item())
            score_diff = max(score_diff, score_gap[i, j].item())
        unmatched += (
            len(ref["boxes"]) - len(mine["boxes"]) if len(ref["boxes"]) > len(mine["boxes"]) else 0
        )
    diffs = f"max |box diff| {box_diff:.2e} px, max |score diff| {score_diff:.2e}"
    if unmatched == 0:
        return f"equal to tolerance, up to order ({diffs})"
    return f"DIFFERENT: {unmatched} of {total} detections unmatched ({diffs} among matched)"


if __name__ == "__main__":
    main()
