"""Inference speed of resdet's ResNets against torchvision's, side by side in one process.

Same weights, batch, input size, memory format and thread count; runs alternate so that both
see the same machine state. Prints images/s for each and the ratio resdet / torchvision
(>= 0.97 means resdet is not slower).

    python tools/bench_backbone.py --batch 8 --size 224 --rounds 5
"""

from __future__ import annotations

import argparse
import time

import torch
import torchvision

import resdet


def images_per_second(model: torch.nn.Module, x: torch.Tensor, iters: int) -> float:
    with torch.inference_mode():
        start = time.perf_counter()
        for _ in range(iters):
            model(x)
        if x.is_cuda:
            torch.cuda.synchronize()
        return iters * x.shape[0] / (time.perf_counter() - start)


def bench(arch: str, args: argparse.Namespace, device: torch.device) -> float:
    # torchvision's layout (stride on the 3x3) so both run the same network with the same weights.
    ours = resdet.create_model(arch, stride_in_1x1=False).eval()
    theirs = getattr(torchvision.models, arch)(weights=None).eval()
    ours.load_state_dict(theirs.state_dict())
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    ours = ours.to(device, memory_format=memory_format)
    theirs = theirs.to(device, memory_format=memory_format)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    x = x.contiguous(memory_format=memory_format)
    with torch.inference_mode():
        diff = (ours(x) - theirs(x)).abs().max().item()
    for model in (ours, theirs):  # warm-up
        images_per_second(model, x, 2)
    ours_runs, theirs_runs = [], []
    for _ in range(args.rounds):
        ours_runs.append(images_per_second(ours, x, args.iters))
        theirs_runs.append(images_per_second(theirs, x, args.iters))
    ours_best, theirs_best = max(ours_runs), max(theirs_runs)
    ratio = ours_best / theirs_best
    print(
        f"{arch:9s} batch {args.batch} {args.size}px {'channels_last' if args.channels_last else 'NCHW'}"
        f" on {device}: resdet {ours_best:7.1f} img/s  torchvision {theirs_best:7.1f} img/s"
        f"  ratio {ratio:.3f}  max |logit diff| {diff:.1e}"
    )
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["resnet50", "resnet18"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--iters", type=int, default=3, help="forward passes per timed run")
    parser.add_argument("--rounds", type=int, default=5, help="alternating timed runs; best kept")
    parser.add_argument("--nchw", dest="channels_last", action="store_false")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    ratios = [bench(arch, args, torch.device(args.device)) for arch in args.archs]
    print(f"worst ratio {min(ratios):.3f} (target >= 0.97)")


if __name__ == "__main__":
    main()
