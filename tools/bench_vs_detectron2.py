"""resdet vs detectron2: R50-C4 and R50-FPN training step and inference, same weights and batch.

    python tools/bench_vs_detectron2.py --detectron2-python /path/to/detectron2-env/bin/python

detectron2 lives in an environment of its own, so each measurement runs in a fresh process of
the library's own Python, alternating (resdet, detectron2, resdet, ...) for ``--rounds`` rounds.
Both build the same detector from the weights recipe of ``tests/fixtures/detectron2`` (3
classes; resdet through ``resdet.models.detectron2_io``, so with detectron2's conventions), on
the same batch (``--images`` drawn images of 480x640 with 6 boxes each), in fp32 on
``--threads`` threads, BN frozen and the stem and res2 frozen, 512 sampled RoIs per image. A
training step is forward, backward and an SGD step. Printed: median seconds per step / per
image and the median of the per-round ratios resdet / detectron2 (below 1: resdet faster).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "detectron2"
CONFIGS = {
    "c4": ("faster_rcnn_R_50_C4", "COCO-Detection/faster_rcnn_R_50_C4_1x.yaml"),
    "fpn": ("faster_rcnn_R_50_FPN", "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"),
}


def batch(images: int):
    """Images [3, 480, 640] RGB in [0, 1] and boxes [6, 4] xyxy, labels [6] in 1..3."""
    import torch

    generator = torch.Generator().manual_seed(0)
    pictures = [torch.rand(3, 480, 640, generator=generator) for _ in range(images)]
    corners = torch.rand(images, 6, 2, generator=generator) * torch.tensor([440.0, 300.0])
    sizes = 40 + torch.rand(images, 6, 2, generator=generator) * 150
    boxes = torch.cat([corners, corners + sizes], dim=2)
    labels = torch.randint(1, 4, (images, 6), generator=generator)
    return pictures, boxes, labels


def state_dict(head: str):
    spec = importlib.util.spec_from_file_location("w", FIXTURE / "synthetic_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    record = json.loads((FIXTURE / f"{CONFIGS[head][0]}.json").read_text())
    return module.synthetic_state(record["recipe"])


def resdet_worker(head: str, images: int):
    import torch

    from resdet.data.options import DetSizes
    from resdet.experiments.detection import build_model
    from resdet.experiments.detectron2_import import detectron2_experiment
    from resdet.models.detectron2_io import detector_state

    layout, state = detector_state(state_dict(head))
    cfg = detectron2_experiment(layout, "coco", stride_in_1x1=True)
    # detectron2's model resizes nothing (its data loader does): test at the batch's own size.
    cfg = replace(cfg, data=replace(cfg.data, sizes=DetSizes((480,), 640, keep_empty=False)))
    model = build_model(cfg, layout.num_classes, backbone_weights=None)
    model.load_state_dict(state)
    pictures, boxes, labels = batch(images)
    targets = [{"boxes": b, "labels": c} for b, c in zip(boxes, labels, strict=True)]

    def train_step():
        losses = model.train()(pictures, targets)
        sum(losses.values()).backward()

    def infer():
        with torch.no_grad():
            model.eval()(pictures)

    return model, train_step, infer


def detectron2_worker(head: str, images: int):
    import torch
    from detectron2 import model_zoo
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model
    from detectron2.structures import Boxes, Instances
    from detectron2.utils.events import EventStorage

    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file(CONFIGS[head][1]))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    model = build_model(cfg)
    model.load_state_dict(state_dict(head))
    pictures, boxes, labels = batch(images)
    inputs = []
    for picture, b, c in zip(pictures, boxes, labels, strict=True):
        instances = Instances((480, 640), gt_boxes=Boxes(b), gt_classes=c - 1)
        bgr = picture.flip(0) * 255
        inputs.append({"image": bgr, "height": 480, "width": 640, "instances": instances})

    def train_step():
        with EventStorage():  # detectron2's training logs its sampling statistics here
            losses = model.train()(inputs)
        sum(losses.values()).backward()

    def infer():
        with torch.no_grad():
            model.eval()(inputs)

    return model, train_step, infer


def measure(library: str, head: str, images: int, steps: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    build = resdet_worker if library == "resdet" else detectron2_worker
    model, train_step, infer = build(head, images)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trained, lr=1e-4, momentum=0.9)

    def step():
        optimizer.zero_grad(set_to_none=True)
        train_step()
        optimizer.step()

    step()  # warm-up: allocations, oneDNN kernel choice
    start = time.perf_counter()
    for _ in range(steps):
        step()
    per_step = (time.perf_counter() - start) / steps
    infer()
    start = time.perf_counter()
    for _ in range(steps):
        infer()
    per_image = (time.perf_counter() - start) / steps / images
    return {"step_s": per_step, "infer_s_per_image": per_image}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detectron2-python", default=sys.executable)
    parser.add_argument("--heads", nargs="+", default=["c4", "fpn"], choices=sorted(CONFIGS))
    parser.add_argument("--images", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", choices=["resdet", "detectron2"], help=argparse.SUPPRESS)
    parser.add_argument("--head", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker, args.head, args.images, args.steps, args.threads)))
        return
    pythons = {"resdet": sys.executable, "detectron2": args.detectron2_python}
    for head in args.heads:
        rows: dict[str, list[dict]] = {"resdet": [], "detectron2": []}
        for _ in range(args.rounds):
            for library, python in pythons.items():
                command = [python, __file__, "--worker", library, "--head", head,
                           "--images", str(args.images), "--steps", str(args.steps),
                           "--threads", str(args.threads)]  # fmt: skip
                done = subprocess.run(command, capture_output=True, text=True, check=True)
                rows[library].append(json.loads(done.stdout.strip().splitlines()[-1]))
        for key, unit in (
            ("step_s", "s per training step"),
            ("infer_s_per_image", "s per image, inference"),
        ):
            ours = [r[key] for r in rows["resdet"]]
            theirs = [r[key] for r in rows["detectron2"]]
            ratio = statistics.median(a / b for a, b in zip(ours, theirs, strict=True))
            print(
                f"R50-{head.upper()} {unit}: resdet {statistics.median(ours):.3f}, detectron2 "
                f"{statistics.median(theirs):.3f}; ratio resdet/detectron2 {ratio:.2f} "
                f"(median of {args.rounds} alternating rounds)"
            )


if __name__ == "__main__":
    main()
