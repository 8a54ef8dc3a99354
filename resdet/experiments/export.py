"""``resdet export``: a run's checkpoint as an ONNX or TorchScript file that needs nothing else.

The file holds the network with its input normalisation (classifiers) or the whole detector
(normalising, resizing, post-processing), and metadata saying what goes in and comes out:
class names, input layout and range, the resize rule, the test thresholds. The export is then
checked against the PyTorch model (``resdet.models.export.check_export``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import resdet
from resdet.config import from_dict
from resdet.data.cls_transforms import IMAGENET_MEAN, IMAGENET_STD
from resdet.data.detection import read_image
from resdet.engine.checkpoint import load_checkpoint
from resdet.experiments.common import TASK_NAMES, WeightChoice, checkpoint_weights
from resdet.experiments.configs import ClsExperiment, DetExperiment
from resdet.models.export import (
    TOLERANCES,
    ClassifierExport,
    DetectorExport,
    ExportCheck,
    Format,
    check_export,
    export_module,
    load_exported,
)

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
SEED = 0  # of the random images the export is traced and checked on


@dataclass(frozen=True)
class ExportResult:
    """What `export_checkpoint` wrote: the file, the weights it holds (``ema`` or ``raw``), its
    metadata and the checks run on it (empty without the check)."""

    path: Path
    fmt: Format
    weights: str
    metadata: dict[str, Any]
    checks: list[ExportCheck]


@dataclass
class _Plan:
    """One model's export: the module, the trace input, its variable axes and the check inputs."""

    module: torch.nn.Module
    input_name: str
    example: Tensor
    dynamic_axes: dict[int, str]
    check_inputs: list[Tensor]
    metadata: dict[str, Any]


def export_checkpoint(
    checkpoint: Path,
    fmt: str = "onnx",
    *,
    out: Path | None = None,
    image_size: tuple[int, int] | None = None,
    dynamic: bool | None = None,
    check: bool = True,
    weights: WeightChoice = "auto",
    check_images: tuple[Path, ...] = (),
) -> ExportResult:
    """Export a classification or detection checkpoint (``last.pt``, ``best.pt``).

    ``out`` defaults to the checkpoint's name with ``.onnx`` or ``.torchscript.pt``.
    ``image_size`` (H, W) is the size the model is traced at: a classifier's test crop and a
    detector's 4:3 image at its test size by default. ``dynamic`` (default: the task's) keeps
    a classifier's height and width variable as well as its batch (``False``: the batch only),
    and a detector's image size (``False``: fixed). ``weights``: ``auto`` exports the EMA
    weights when the run kept them, ``ema`` insists on them, ``raw`` takes the trained ones.
    ``check_images`` are images (files) a detector is also checked on: its checks otherwise
    run on random and grey images, where a trained detector may find nothing.
    """
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: choose onnx or torchscript")
    state = load_checkpoint(checkpoint)
    task = state["meta"].get("task")
    model_state, used = checkpoint_weights(state, weights, checkpoint)
    if task == "cls":
        plan = _classifier_plan(checkpoint, state, model_state, image_size, dynamic)
    elif task == "det":
        plan = _detector_plan(checkpoint, state, model_state, image_size, dynamic, check_images)
    else:
        raise ValueError(f"{checkpoint} has task {task!r}; resdet exports 'cls' and 'det'")
    path = out or checkpoint.with_name(checkpoint.name.removesuffix(".pt") + SUFFIXES[fmt])
    if path.resolve() == checkpoint.resolve():
        raise ValueError(f"--out {path} is the checkpoint itself; choose another file")
    metadata = {
        "producer": f"resdet {resdet.__version__}",
        "task": TASK_NAMES[task],
        **plan.metadata,
        "weights": f"{used} ({'averaged' if used == 'ema' else 'trained'}) weights of "
        f"{checkpoint} at iteration {state['iteration']}",
    }
    export_module(
        plan.module,
        plan.example,
        path,
        fmt,  # type: ignore[arg-type]
        input_name=plan.input_name,
        dynamic_axes=plan.dynamic_axes,
        metadata=metadata,
    )
    checks = []
    if check:
        run = load_exported(path, fmt)  # type: ignore[arg-type]
        checks = check_export(plan.module, run, plan.check_inputs)
        if not all(c.within_tolerance() for c in checks):
            raise ValueError(
                f"{path} differs from the PyTorch model by more than the tolerances "
                f"({', '.join(f'{k} {v:g}' for k, v in TOLERANCES.items())}; logits relative "
                "to the largest one above 1): "
                + "; ".join(c.describe() for c in checks)
                + ". The file is kept for inspection. Float sums in another order differ more "
                "in untrained networks (random weights magnify them with depth and image "
                "size); for a trained one, please report this with the checkpoint's config"
            )
    return ExportResult(path, fmt, used, metadata, checks)  # type: ignore[arg-type]


def _classifier_plan(
    checkpoint: Path,
    state: dict[str, Any],
    model_state: dict[str, Tensor],
    image_size: tuple[int, int] | None,
    dynamic: bool | None,
) -> _Plan:
    from resdet.experiments.classification import build_classifier, input_meta, test_split

    cfg = from_dict(ClsExperiment, state["meta"]["config"], where=f"{checkpoint} config")
    meta = state["meta"]
    if "class_names" not in meta:  # checkpoints of earlier versions: ask the data set
        from resdet.experiments.classification import build_dataset

        meta = {**meta, **input_meta(build_dataset(cfg.data, test_split(cfg.data), train=False))}
    class_names = list(meta["class_names"])
    cfg = replace(cfg, model=replace(cfg.model, weights=None))
    classifier = build_classifier(cfg, len(class_names))
    classifier.load_state_dict(model_state)
    mean_image = meta.get("mean_image")
    if mean_image is not None:  # CIFAR's per-pixel mean, 0..255, [H, W, 3]
        mean = torch.tensor(mean_image, dtype=torch.float32).permute(2, 0, 1) / 255
        std = torch.ones(3, 1, 1)
        size = tuple(mean.shape[1:])
        if dynamic or (image_size is not None and tuple(image_size) != size):
            raise ValueError(
                f"{cfg.data.dataset} networks subtract a {size[0]}x{size[1]} mean image: they "
                f"take {size[0]}x{size[1]} inputs only; drop --image-size and --dynamic"
            )
        preprocessing = {
            "normalisation": "inside the model: the training set's per-pixel mean image over "
            "255 is subtracted (the paper's CIFAR-10 normalisation)",
            "resize": f"none: {size[0]}x{size[1]} images, as the training set's",
        }
    else:
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        views = cfg.data.views
        size = tuple(image_size) if image_size else (views.eval_crop, views.eval_crop)
        preprocessing = {
            "normalisation": "inside the model: (x - mean) / std per channel",
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "resize": f"shorter side to {views.test_size} px (bilinear, antialiased), then the "
            f"centre {views.eval_crop}x{views.eval_crop} crop",
        }
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic else {0: "batch"}
    generator = torch.Generator().manual_seed(SEED)
    h, w = size
    inputs = [
        torch.rand(2, 3, h, w, generator=generator),
        torch.rand(3, 3, h, w, generator=generator),
    ]
    if dynamic:
        inputs.append(torch.rand(1, 3, h + 32, w + 64, generator=generator))
    return _Plan(
        ClassifierExport(classifier.net, mean, std).eval(),
        "images",
        inputs[0],
        axes,
        inputs,
        {
            "model": cfg.model.name,
            "class_names": class_names,
            "input": _input_text(
                "images", ["batch", 3, *(axes.get(i, s) for i, s in ((2, h), (3, w)))]
            ),
            "preprocessing": preprocessing,
            "outputs": {
                "logits": f"float32 [batch, {len(class_names)}], softmax for probabilities"
            },
        },
    )


def _detector_plan(
    checkpoint: Path,
    state: dict[str, Any],
    model_state: dict[str, Tensor],
    image_size: tuple[int, int] | None,
    dynamic: bool | None,
    check_images: tuple[Path, ...],
) -> _Plan:
    from resdet.experiments.detection import build_model

    cfg = from_dict(DetExperiment, state["meta"]["config"], where=f"{checkpoint} config")
    class_names = list(state["meta"]["class_names"])
    detector = build_model(cfg, len(class_names), backbone_weights=None)
    detector.load_state_dict(model_state)
    detector.eval()
    transform, heads = detector.transform, detector.roi_heads
    test_size = transform.min_size[-1]
    h, w = image_size or (test_size, round(test_size * 4 / 3))
    dynamic = True if dynamic is None else dynamic
    generator = torch.Generator().manual_seed(SEED)
    example = torch.rand(3, h, w, generator=generator)
    inputs = [example]
    if dynamic:
        inputs.append(torch.rand(3, w, h, generator=generator))
    inputs.append(torch.full((3, h, w), 0.5))  # a grey image: usually nothing is found
    for path in check_images:
        inputs.append(torch.from_numpy(read_image(path)).permute(2, 0, 1).float() / 255)
    info = detector.info
    kind = "Mask R-CNN" if info.masks else "Faster R-CNN"
    outputs = {
        "boxes": "float32 [N, 4], x1 y1 x2 y2 in the input image's pixels",
        "labels": "int64 [N], 1..K: class_names[label - 1]",
        "scores": "float32 [N], highest first",
    }
    if info.masks:
        outputs["masks"] = "float32 [N, 1, height, width] probabilities; threshold at 0.5"
    return _Plan(
        DetectorExport(detector).eval(),
        "image",
        example,
        {1: "height", 2: "width"} if dynamic else {},
        inputs,
        {
            "model": f"{info.backbone}-{info.head} {kind}",
            "class_names": class_names,
            "input": _input_text(
                "image", [3, "height" if dynamic else h, "width" if dynamic else w]
            ),
            "preprocessing": {
                "normalisation": "inside the model: (x - mean) / std per channel",
                "mean": list(transform.image_mean),
                "std": list(transform.image_std),
                "resize": f"inside the model: shorter side to {test_size} px, longer side at "
                f"most {transform.max_size} px (bilinear); outputs in the input's pixels",
            },
            "postprocessing": {
                "score_thresh": heads.score_thresh,
                "nms_thresh": heads.nms_thresh,
                "detections_per_img": heads.detections_per_img,
            },
            "outputs": outputs,
        },
    )


def _input_text(name: str, shape: list[Any]) -> dict[str, Any]:
    return {"name": name, "shape": shape, "dtype": "float32", "range": [0, 1], "channels": "RGB"}
