"""Training-step RoIAlign (forward + backward) on CPU: resdet's gather against torchvision's kernel.

Each case pools seeded random RoIs from seeded channels-last features (as resdet's detectors
hold them) with torchvision's ``MultiScaleRoIAlign`` and resdet's ``GatherMultiScaleRoIAlign``,
times forward + backward alternately (median of the timed runs) and prints the time ratio
resdet / torchvision (below 1: resdet is faster) and the largest differences of the outputs
and of the feature gradients.

    python tools/bench_roi_align.py --runs 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torchvision.ops import MultiScaleRoIAlign

from resdet.models.roi_align import GatherMultiScaleRoIAlign

FPN = {"0": 4, "1": 8, "2": 16, "3": 32}  # P2..P5 and their strides


@dataclass(frozen=True)
class Case:
    levels: dict[str, int]  # feature map name: stride
    channels: int
    images: int
    size: tuple[int, int]  # image (height, width), px
    rois_per_image: int
    output_size: int
    sampling_ratio: int


CASES = {
    "shapes FPN box (R18, 8x128px)": Case(FPN, 256, 8, (128, 128), 64, 7, 1),
    "shapes FPN mask": Case(FPN, 256, 8, (128, 128), 16, 14, 1),
    "COCO FPN box (2x800x1088)": Case(FPN, 256, 2, (800, 1088), 512, 7, 2),
    "COCO FPN mask": Case(FPN, 256, 2, (800, 1088), 128, 14, 2),
    "COCO C4 box (R50 res4, 1x800x1088)": Case({"res4": 16}, 1024, 1, (800, 1088), 128, 14, 0),
}


def make_case(case: Case, seed: int):
    """The two poolers and a step(pooler) -> (pooled, feature gradients) on shared inputs."""
    g = torch.Generator().manual_seed(seed)
    height, width = case.size
    features = OrderedDict(
        (
            name,
            torch.randn(
                case.images, case.channels, -(-height // stride), -(-width // stride), generator=g
            )
            .contiguous(memory_format=torch.channels_last)
            .requires_grad_(),
        )
        for name, stride in case.levels.items()
    )
    boxes = []
    for _ in range(case.images):
        # 8 to 600 px on a side, log-uniform, inside the image
        side = torch.exp(torch.empty(case.rois_per_image, 2).uniform_(2.1, 6.4, generator=g))
        side = torch.minimum(side, torch.tensor([width - 1.0, height - 1.0]))
        corner = torch.rand(case.rois_per_image, 2, generator=g) * (
            torch.tensor([width, height]) - side
        )
        boxes.append(torch.cat([corner, corner + side], 1))
    pooler_args = (list(case.levels), case.output_size, case.sampling_ratio)
    poolers = {
        "torchvision": MultiScaleRoIAlign(*pooler_args),
        "resdet": GatherMultiScaleRoIAlign(*pooler_args),
    }
    upstream = None

    def step(pooler: torch.nn.Module) -> tuple[torch.Tensor, list[torch.Tensor]]:
        nonlocal upstream
        pooled = pooler(features, boxes, [case.size] * case.images)
        if upstream is None:
            upstream = torch.randn(pooled.shape, generator=g)
        grads = torch.autograd.grad(pooled, list(features.values()), upstream)
        return pooled, list(grads)

    return poolers, step


def timed(fn: Callable[..., object], *args: object) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per implementation")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}; times are forward + backward, median")
    for name, case in CASES.items():
        poolers, step = make_case(case, seed=0)
        (expected, expected_grads), (pooled, grads) = (step(p) for p in poolers.values())
        out_diff = (pooled - expected).abs().max().item()
        grad_diff = max(
            (a - b).abs().max().item() for a, b in zip(grads, expected_grads, strict=True)
        )
        seconds = {label: [] for label in poolers}
        for _ in range(args.runs):  # alternate, so that other load hits both alike
            for label, pooler in poolers.items():
                seconds[label].append(timed(step, pooler))
        tv, ours = (statistics.median(seconds[label]) for label in ("torchvision", "resdet"))
        print(
            f"{name:38s} torchvision {tv * 1e3:8.1f} ms  resdet {ours * 1e3:7.1f} ms  "
            f"ratio {ours / tv:.3f}  max diff: output {out_diff:.1e}, grad {grad_diff:.1e}"
        )


if __name__ == "__main__":
    main()
