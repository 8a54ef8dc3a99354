"""Throughput of the detection input pipeline, boxes and masks, on generated COCO-format data.

Images per CPU second (one thread: the rate one worker core gives) of COCO training samples at
COCO's size (640x480 JPEGs resized to shorter side 800, flipped, about COCO's 7.3 objects per
image), with boxes only and with polygon masks, as resdet makes them now (uint8 images; the float conversion happens on the
device) and with the float conversion still in the worker, as before; timed in alternating
rounds, median ratio printed. Then the cores per GPU each needs at a given training speed.

    python tools/bench_det_loader.py [--images 64] [--rounds 5] [--gpu-img-per-s 40]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import torch

from resdet.data.coco import CocoDetection
from resdet.data.shapes import write_coco_split


def rate(dataset: CocoDetection, convert: bool) -> float:
    """Samples per CPU second over ``dataset`` (``convert``: plus the former float copy)."""
    start = time.process_time()
    for i in range(len(dataset)):
        image, _ = dataset[(i, i)]
        if convert:
            image.float().div_(255)
    return len(dataset) / (time.process_time() - start)


def crowd_like_coco(annotation_file: Path, per_image: float) -> float:
    """Repeat each image's annotations until it has about ``per_image`` objects (COCO 2017
    train averages 7.3); returns the mean reached. Copies overlap, which costs the same."""
    document = json.loads(annotation_file.read_text())
    by_image: dict[int, list[dict]] = {}
    for annotation in document["annotations"]:
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    annotations = []
    for found in by_image.values():
        copies = max(1, round(per_image / len(found)))
        for annotation in found * copies:
            annotations.append({**annotation, "id": len(annotations) + 1})
    document["annotations"] = annotations
    annotation_file.write_text(json.dumps(document))
    return len(annotations) / len(document["images"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--objects", type=float, default=7.3, help="objects per image")
    # detectron2's model zoo trains R50-FPN at 0.21 s/iter with 2 images per V100 (9.5 img/s);
    # an H100 in bf16 is roughly four times that.
    parser.add_argument(
        "--gpu-img-per-s",
        type=float,
        default=40.0,
        help="training speed of one GPU to size the workers for (R50-FPN at 800 px)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_coco_split(
            root / "images", root / "train.json", args.images, 0, height=480, width=640
        )
        objects = crowd_like_coco(root / "train.json", args.objects)
        print(f"{args.images} images of 640x480, {objects:.1f} objects per image")
        for name, masks in (("boxes", False), ("masks", True)):
            dataset = CocoDetection(
                root / "images", root / "train.json", train=True, with_masks=masks
            )
            now, before = [], []
            for _ in range(args.rounds):
                now.append(rate(dataset, convert=False))
                before.append(rate(dataset, convert=True))
            per_core = statistics.median(now)
            ratio = statistics.median(a / b for a, b in zip(now, before, strict=True))
            print(
                f"{name}: {per_core:6.1f} img/s per core (uint8 out), "
                f"{statistics.median(before):6.1f} with the float copy in the worker "
                f"({ratio:.2f}x); {args.gpu_img_per_s:.0f} img/s per GPU needs "
                f"{args.gpu_img_per_s / per_core:.1f} cores"
            )


if __name__ == "__main__":
    main()
