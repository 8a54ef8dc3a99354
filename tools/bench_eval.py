"""Time resdet's evaluate_coco against pycocotools on the same generated COCO files.

    python tools/bench_eval.py [--images 500] [--detections 50] [--seed 0] [--repeats 3]

Both sides start from the JSON files on disk (ground truth and results), so loading is timed
too: pycocotools is COCO(file) + loadRes(file) + evaluate + accumulate + summarize. The best of
``--repeats`` runs is reported for each. The twelve numbers must agree to 1e-9.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import typer
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from resdet.evaluation import STAT_NAMES, evaluate_coco


def generate(num_images: int, detections_per_image: int, seed: int) -> tuple[dict, list[dict]]:
    """COCO ground truth (3-12 objects of 10 classes per 480x640 image, all area ranges) and
    ``detections_per_image`` results per image: jittered objects and random boxes."""
    rng = np.random.default_rng(seed)
    images, annotations, results = [], [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "height": 480, "width": 640, "file_name": f"{image_id}.jpg"})
        objects = []
        for _ in range(int(rng.integers(3, 13))):
            w, h = rng.choice([16.0, 48.0, 160.0]) * rng.uniform(0.6, 1.6, 2)
            box = [
                float(rng.uniform(0, 640 - w)),
                float(rng.uniform(0, 480 - h)),
                float(w),
                float(h),
            ]
            category_id = int(rng.integers(1, 11))
            crowd = int(rng.random() < 0.02)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_id,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": crowd,
                }
            )
            objects.append((category_id, box))
        for _ in range(detections_per_image):
            if rng.random() < 0.5:
                category_id, (x, y, w, h) = objects[int(rng.integers(len(objects)))]
                dx, dy, dw, dh = rng.normal(0, 0.1, 4)
                box = [x + dx * w, y + dy * h, w * (1 + dw), h * (1 + dh)]
            else:
                category_id = int(rng.integers(1, 11))
                w, h = rng.uniform(8, 200, 2)
                box = [float(rng.uniform(0, 640 - w)), float(rng.uniform(0, 480 - h)), w, h]
            results.append(
                {
                    "image_id": image_id,
                    "category_id": category_id,
                    "bbox": [round(float(v), 2) for v in box],
                    "score": round(float(rng.random()), 4),
                }
            )
    categories = [{"id": c, "name": f"class{c}"} for c in range(1, 11)]
    return {"images": images, "annotations": annotations, "categories": categories}, results


def run_pycocotools(gt_path: Path, results_path: Path) -> list[float]:
    """The reference pipeline, its progress printing silenced."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_path))
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(str(results_path)), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [float(v) for v in evaluator.stats]


def best_time(function, repeats: int) -> tuple[float, list[float]]:
    """The shortest of ``repeats`` wall-clock times (seconds) and the function's last value."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        value = function()
        times.append(time.perf_counter() - start)
    return min(times), value


def main(images: int = 500, detections: int = 50, seed: int = 0, repeats: int = 3) -> None:
    """Generate the files, time both evaluations, check the numbers and print the ratio."""
    gt, results = generate(images, detections, seed)
    with tempfile.TemporaryDirectory() as directory:
        gt_path, results_path = Path(directory, "gt.json"), Path(directory, "results.json")
        gt_path.write_text(json.dumps(gt))
        results_path.write_text(json.dumps(results))
        reference_s, reference = best_time(lambda: run_pycocotools(gt_path, results_path), repeats)
        resdet_s, result = best_time(lambda: evaluate_coco(gt_path, results_path), repeats)
    ours = [result.stats[name] for name in STAT_NAMES]
    difference = max(abs(a - b) for a, b in zip(reference, ours, strict=True))
    print(f"{images} images, {len(results)} detections, {len(gt['annotations'])} objects")
    print("stats: " + " ".join(f"{n}={v:.4f}" for n, v in zip(STAT_NAMES, ours, strict=True)))
    print(
        f"pycocotools: {reference_s:.3f} s   resdet evaluate_coco: {resdet_s:.3f} s   "
        f"speed-up: {reference_s / resdet_s:.1f}x   (best of {repeats})"
    )
    print(f"largest difference over the 12 stats: {difference:.3g}")
    if difference > 1e-9:
        raise typer.Exit(code=1)


if __name__ == "__main__":
    typer.run(main)
