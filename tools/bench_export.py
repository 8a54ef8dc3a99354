"""CPU inference of exported models: PyTorch eager vs onnxruntime vs TorchScript, same inputs.

Two models with seeded random weights (BN statistics measured on random images, so that
activations keep a trained network's scale), exported by ``resdet.models.export`` (what
``resdet export`` writes): a ResNet-50 classifier on a batch of 8 images at 224x224, and an
R50-FPN Faster R-CNN (80 classes, torchvision's test settings: 800/1333 resizing, score
threshold 0.05, at most 100 detections, which these weights reach) on one 800x1067 image. The three runtimes take turns within each
round, so that load from other processes hits them alike. Prints the median seconds per call,
the median over rounds of each runtime's time over eager's in that round (below 1: faster) and the largest differences
from eager's outputs.

    python tools/bench_export.py --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from resdet.data.cls_transforms import IMAGENET_MEAN, IMAGENET_STD
from resdet.models import create_model
from resdet.models.detector import build_detector
from resdet.models.export import (
    ClassifierExport,
    DetectorExport,
    check_export,
    export_module,
    load_exported,
)


def calibrated_resnet50() -> torch.nn.Module:
    """A random ResNet-50 whose BN statistics are measured on random normalised images.

    With BN's initial statistics (mean 0, variance 1) the activations of random weights grow
    layer by layer, and so do float differences between runtimes; measured statistics keep
    them at the scale of a trained network's."""
    net = create_model("resnet50")
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # a plain average over the calibration batches
    net.train()
    with torch.no_grad():
        for _ in range(4):
            net(torch.randn(8, 3, 224, 224))
    return net.eval()


def classifier() -> tuple[torch.nn.Module, torch.Tensor, str, dict[int, str]]:
    net = calibrated_resnet50()
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ClassifierExport(net, mean, std).eval(), torch.rand(8, 3, 224, 224), "images", {0: "b"}


def detector() -> tuple[torch.nn.Module, torch.Tensor, str, dict[int, str]]:
    model = build_detector(
        "resnet50",
        head="fpn",
        num_classes=80,
        backbone_weights=None,
    )
    backbone = {k: v for k, v in calibrated_resnet50().state_dict().items() if "fc." not in k}
    model.backbone.body.load_state_dict(backbone)
    return DetectorExport(model.eval()).eval(), torch.rand(3, 800, 1067), "image", {1: "h", 2: "w"}


def time_call(run: Callable[[torch.Tensor], object], x: torch.Tensor) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        run(x)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed calls per runtime")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import onnxruntime

    print(
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime "
        f"{onnxruntime.__version__}; median seconds per call over {args.rounds} rounds"
    )
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, build in (
            ("resnet50, batch 8 at 224", classifier),
            ("R50-FPN, 800x1067", detector),
        ):
            torch.manual_seed(0)
            module, x, input_name, axes = build()
            runtimes: dict[str, Callable[[torch.Tensor], object]] = {"eager": module}
            diffs = {}
            for fmt in ("onnx", "torchscript"):
                path = Path(folder) / f"model.{fmt}"
                export_module(
                    module, x, path, fmt, input_name=input_name, dynamic_axes=axes, metadata={}
                )
                runtimes[fmt] = load_exported(path, fmt)
                (check,) = check_export(module, runtimes[fmt], [x])
                diffs[fmt] = ", ".join(f"{k} {v:.1e}" for k, v in check.max_diff.items())
            for run in runtimes.values():  # warm-up
                time_call(run, x)
            times: dict[str, list[float]] = {k: [] for k in runtimes}
            for _ in range(args.rounds):
                for key, run in runtimes.items():
                    times[key].append(time_call(run, x))
            for key in runtimes:
                ratios = [t / e for t, e in zip(times[key], times["eager"], strict=True)]
                rows.append(
                    (
                        name,
                        key,
                        statistics.median(times[key]),
                        statistics.median(ratios),
                        diffs.get(key, "-"),
                    )
                )
    print("| model | runtime | s per call | time / eager | max difference from eager |")
    print("|---|---|---|---|---|")
    for name, key, seconds, ratio, diff in rows:
        print(f"| {name} | {key} | {seconds:.3f} | {ratio:.2f} | {diff} |")


if __name__ == "__main__":
    main()
