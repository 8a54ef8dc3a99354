"""Record detectron2's outputs for resdet's twin test (run where detectron2 is importable).

    /path/to/detectron2-env/bin/python tools/detectron2_twins.py [--out tests/fixtures/detectron2]

Builds detectron2's R50-C4 and R50-FPN Faster R-CNN and R50-FPN Mask R-CNN (3 classes) with
weights regenerated from a recipe (``tests/fixtures/detectron2/synthetic_weights.py``: every
tensor drawn from a generator seeded with its name), runs them on three drawn images, and
writes per model a JSON with the recipe, detectron2's commit and settings, the top proposals,
and the detections (boxes, scores, labels, masks as COCO RLE). ``tests/models/
test_detectron2_twins.py`` rebuilds the same weights, saves them as a detectron2 checkpoint,
imports it with ``resdet weights import --format detectron2`` and requires a twin for every
detection. detectron2 is a reference to test against, never a dependency of resdet.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import subprocess
from pathlib import Path

import cv2
import numpy as np
import torch
from detectron2 import model_zoo
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from pycocotools import mask as mask_utils

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "detectron2"
# (fixture name, detectron2 config, overrides). C4 keeps 100 proposals after NMS so that res5
# per RoI stays cheap on a CPU; everything else is the config's own.
MODELS = (
    ("faster_rcnn_R_50_C4", "COCO-Detection/faster_rcnn_R_50_C4_1x.yaml", {"MODEL.RPN.POST_NMS_TOPK_TEST": 100}),
    ("faster_rcnn_R_50_FPN", "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml", {}),
    ("mask_rcnn_R_50_FPN", "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml", {}),
)  # fmt: skip
# Sizes that are, and are not, multiples of 32 (C4 pads nothing; strides must stay 16).
IMAGE_SIZES = ((256, 320), (250, 330), (288, 224))
NUM_CLASSES = 3
TOP_PROPOSALS = 100


def load_recipe_module():
    spec = importlib.util.spec_from_file_location(
        "synthetic_weights", FIXTURE / "synthetic_weights.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def draw_image(index: int, height: int, width: int) -> np.ndarray:
    """uint8 BGR [H, W, 3]: a colour gradient with filled rectangles, circles and triangles."""
    rng = random.Random(index)  # Python's generator: the same stream on every version
    ys, xs = np.mgrid[0:height, 0:width]
    base = [rng.randint(0, 255) for _ in range(3)]
    image = np.stack(
        [(b + (xs * (c + 1) + ys * (2 - c)) // 4) % 256 for c, b in enumerate(base)], -1
    )
    image = image.astype(np.uint8)
    for _ in range(12):
        color = tuple(rng.randint(0, 255) for _ in range(3))
        x, y = rng.randint(0, width - 20), rng.randint(0, height - 20)
        size = rng.randint(12, min(height, width) // 2)
        kind = rng.choice(("rect", "circle", "triangle"))
        if kind == "rect":
            cv2.rectangle(image, (x, y), (x + size, y + size * 2 // 3), color, -1)
        elif kind == "circle":
            cv2.circle(image, (x, y), size // 2, color, -1)
        else:
            points = np.array([[x, y + size], [x + size, y + size], [x + size // 2, y]], np.int32)
            cv2.fillPoly(image, [points], color)
    return image


def detectron2_commit() -> str:
    import detectron2

    try:
        return subprocess.run(
            ["git", "-C", str(Path(detectron2.__file__).parents[1]), "rev-parse", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return f"detectron2 {detectron2.__version__}"


def run_model(name: str, config: str, overrides: dict, images: list[np.ndarray], recipes) -> dict:
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file(config))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = NUM_CLASSES
    for key, value in overrides.items():
        cfg.merge_from_list([key, value])
    model = build_model(cfg).eval()
    recipe = [
        [key, list(value.shape), *recipes.tensor_recipe(key, tuple(value.shape))]
        for key, value in model.state_dict().items()
    ]
    model.load_state_dict(recipes.synthetic_state(recipe), strict=True)
    outputs = []
    with torch.no_grad():
        for bgr in images:
            height, width = bgr.shape[:2]
            inputs = [
                {
                    "image": torch.from_numpy(bgr).permute(2, 0, 1).float(),
                    "height": height,
                    "width": width,
                }
            ]
            batch = model.preprocess_image(inputs)
            proposals, _ = model.proposal_generator(batch, model.backbone(batch.tensor))
            top = proposals[0][:TOP_PROPOSALS]
            instances = model(inputs)[0]["instances"]
            record = {
                "proposals": top.proposal_boxes.tensor.tolist(),
                "objectness": top.objectness_logits.tolist(),
                "boxes": instances.pred_boxes.tensor.tolist(),
                "scores": instances.scores.tolist(),
                "labels": (instances.pred_classes + 1).tolist(),  # resdet's labels: 1..K
            }
            if instances.has("pred_masks"):
                masks = np.asfortranarray(
                    instances.pred_masks.numpy().astype(np.uint8).transpose(1, 2, 0)
                )
                record["masks"] = [
                    {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
                    for rle in mask_utils.encode(masks)
                ]
            outputs.append(record)
    settings = {key: str(value) for key, value in overrides.items()}
    return {
        "detectron2": detectron2_commit(),
        "config": config,
        "overrides": settings,
        "num_classes": NUM_CLASSES,
        "recipe": recipe,
        "outputs": outputs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=FIXTURE)
    args = parser.parse_args()
    torch.set_num_threads(2)
    recipes = load_recipe_module()
    args.out.mkdir(parents=True, exist_ok=True)
    images = []
    for index, (height, width) in enumerate(IMAGE_SIZES):
        image = draw_image(index, height, width)
        cv2.imwrite(str(args.out / f"image{index}.png"), image)
        images.append(image)
    for name, config, overrides in MODELS:
        result = run_model(name, config, overrides, images, recipes)
        result["images"] = [f"image{i}.png" for i in range(len(images))]
        (args.out / f"{name}.json").write_text(json.dumps(result, separators=(",", ":")) + "\n")
        counts = [len(o["boxes"]) for o in result["outputs"]]
        print(f"{name}: detections per image {counts}")


if __name__ == "__main__":
    main()
