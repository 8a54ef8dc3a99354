"""PASCAL VOC detection evaluation with the rules of the official devkit as py-faster-rcnn's
``voc_eval.py`` implements them, and the challenge's per-class results files.

Boxes are VOC's: ``(xmin, ymin, xmax, ymax)`` in 1-based inclusive pixel coordinates, so a box
is ``xmax - xmin + 1`` pixels wide. Image ids are compared as strings (``5`` and ``"5"`` are the
same image), because the results files store them as text.
"""

from __future__ import annotations

import math
import os
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch

from resdet.evaluation.boxes import to_original_pixels
from resdet.evaluation.coco import gather_per_image

VocMetric = Literal["voc07", "voc12"]

# How each metric defines AP, as tables print it.
METRIC_DESCRIPTIONS = {"voc07": "AP (11-point)", "voc12": "AP (area)"}

Box = tuple[float, float, float, float]


class TruthBox(NamedTuple):
    """One ground-truth object: class name, box (1-based inclusive pixels), difficult flag."""

    name: str
    box: Box
    difficult: bool


class ScoredBox(NamedTuple):
    """One detection of a known class: image id, score, box (1-based inclusive pixels)."""

    image_id: str
    score: float
    box: Box


@dataclass(frozen=True)
class VocResult:
    """``metric`` is "voc07" or "voc12"; ``mAP`` and ``per_class`` AP are fractions. A class
    without non-difficult ground truth has AP ``nan`` and is left out of the mean."""

    metric: str
    mAP: float
    per_class: dict[str, float]


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool) -> float:
    """Average precision from a ranked list's recall and precision ([D] each, by rank).

    ``use_07_metric``: VOC2007's mean over recall thresholds 0, 0.1, ..., 1 of the highest
    precision at recall >= t; otherwise VOC2010+'s area under the monotone precision envelope.
    """
    recall, precision = np.asarray(recall, float), np.asarray(precision, float)
    if use_07_metric:
        # np.arange's thresholds (0.30000000000000004, ...) are kept on purpose: they are
        # py-faster-rcnn's and detectron2's, so published numbers are reproduced to the bit.
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            above = precision[recall >= t]
            ap += (above.max() if above.size else 0.0) / 11.0
        return float(ap)
    recall = np.concatenate(([0.0], recall, [1.0]))
    envelope = np.concatenate(([0.0], precision, [0.0]))
    envelope = np.maximum.accumulate(envelope[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1])
    return float(np.sum((recall[steps + 1] - recall[steps]) * envelope[steps + 1]))


def evaluate_voc(
    detections: Mapping[str, Sequence[ScoredBox]],
    ground_truth: Mapping[Hashable, Sequence[TruthBox]],
    class_names: Sequence[str],
    metric: VocMetric = "voc07",
    iou_thresh: float = 0.5,
) -> VocResult:
    """Per-class AP and their mean, as the VOC devkit computes them.

    Args:
        detections: class name -> (image_id, score, box) tuples; classes may be missing.
        ground_truth: image id -> the image's (class name, box, difficult) objects; every
            evaluated image needs an entry, an empty one when it holds no object.
        class_names: the classes to evaluate.
        metric: "voc07" (11-point) or "voc12" (area).
        iou_thresh: a detection matches when IoU > iou_thresh (IoU with +1 in width and height).

    Per class, detections sorted by score (ties keep their order) take the ground-truth box of
    highest IoU in their image: a true positive if it is unmatched, a false positive if it was
    matched already (a duplicate) or IoU <= iou_thresh, neither if that box is difficult.
    Difficult boxes are not counted as positives.
    """
    if metric not in METRIC_DESCRIPTIONS:
        raise ValueError(f"metric must be 'voc07' or 'voc12', got {metric!r}")
    unknown = sorted(set(detections) - set(class_names))
    if unknown:
        raise ValueError(f"detections for classes {unknown} that are not in class_names")
    objects_by_class: dict[str, dict[str, list[TruthBox]]] = {name: {} for name in class_names}
    for image_id, objects in ground_truth.items():
        for name in class_names:
            objects_by_class[name][str(image_id)] = []
        for name, box, is_difficult in objects:
            if name not in objects_by_class:
                raise ValueError(
                    f"image {image_id}: ground-truth class {name!r} is not in class_names"
                )
            objects_by_class[name][str(image_id)].append(TruthBox(name, box, is_difficult))
    per_class = {
        name: _class_ap(name, detections.get(name, ()), objects_by_class[name], metric, iou_thresh)
        for name in class_names
    }
    valid = [ap for ap in per_class.values() if not math.isnan(ap)]
    return VocResult(
        metric=metric, mAP=float(np.mean(valid)) if valid else math.nan, per_class=per_class
    )


def write_voc_results(
    directory: str | os.PathLike, detections: Mapping[str, Sequence[ScoredBox]]
) -> list[Path]:
    """Write one ``comp4_det_test_<class>.txt`` per class of ``detections``, lines
    ``<image_id> <score> <xmin> <ymin> <xmax> <ymax>`` (numbers written exactly, so reading
    them back gives the same floats). Returns the files written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, class_detections in detections.items():
        path = directory / f"comp4_det_test_{name}.txt"
        lines = [
            " ".join([str(image_id), *(repr(float(v)) for v in (score, *box))]) + "\n"
            for image_id, score, box in class_detections
        ]
        path.write_text("".join(lines), encoding="utf-8")
        paths.append(path)
    return paths


def read_voc_results(
    directory: str | os.PathLike, class_names: Sequence[str]
) -> dict[str, list[ScoredBox]]:
    """Read ``comp4_det_test_<class>.txt`` for every class; image ids come back as strings."""
    detections = {}
    for name in class_names:
        path = Path(directory) / f"comp4_det_test_{name}.txt"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: no results file for class {name!r}; the challenge format has one file "
                "per class (an empty one when the class has no detections)"
            )
        detections[name] = [
            _parse_line(line, path, number)
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
            if line.strip()
        ]
    return detections


class VocEvaluator:
    """Collects torchvision detector outputs as VOC detections and evaluates them against the
    ground truth of the images processed (so a partial pass evaluates that subset)."""

    def __init__(
        self,
        class_names: Sequence[str],
        ground_truth: Mapping[Hashable, Sequence[TruthBox]],
        metric: VocMetric = "voc07",
    ) -> None:
        """``class_names[i]`` is model label ``i + 1``; ``ground_truth`` maps each image id (as
        the targets' ``image_id``) to its objects in 1-based VOC pixels."""
        if metric not in METRIC_DESCRIPTIONS:
            raise ValueError(f"metric must be 'voc07' or 'voc12', got {metric!r}")
        self.class_names = list(class_names)
        self.ground_truth = {str(k): list(v) for k, v in ground_truth.items()}
        self.metric = metric
        self.last_result: VocResult | None = None
        self._per_image: dict[str, list[tuple[str, ScoredBox]]] = {}

    def reset(self) -> None:
        """Forget everything processed so far."""
        self._per_image = {}

    def process(
        self, targets: Sequence[Mapping[str, Any]], outputs: Sequence[Mapping[str, torch.Tensor]]
    ) -> None:
        """Add one batch.

        Args:
            targets: dataset targets with ``image_id``, ``size`` (H, W) of the image the model
                saw and ``orig_size`` (H0, W0) of the file.
            outputs: torchvision predictions: ``boxes`` [N, 4] xyxy in 0-based continuous pixels
                of the image the model saw, ``labels`` [N] in 1..K, ``scores`` [N]. Boxes are
                scaled to the original image and turned into VOC's 1-based inclusive pixels
                by adding 1 to xmin and ymin, the inverse of how resdet.data.voc reads them
                (detectron2's convention: only xmin and ymin lose 1 when read).
        """
        for target, output in zip(targets, outputs, strict=True):
            image_id = str(_as_python(target["image_id"]))
            if image_id not in self.ground_truth:
                raise ValueError(
                    f"image {image_id} is not in the evaluator's ground truth; build the "
                    "VocEvaluator from the same split as the data loader"
                )
            size = tuple(int(v) for v in target["size"])
            orig_size = tuple(int(v) for v in target["orig_size"])
            to_voc = torch.tensor([1.0, 1.0, 0.0, 0.0])
            boxes = (to_original_pixels(output["boxes"], size, orig_size) + to_voc).tolist()
            labels = output["labels"].detach().cpu().tolist()
            scores = output["scores"].detach().float().cpu().tolist()
            self._per_image[image_id] = [
                (self._class_name(label), ScoredBox(image_id, score, tuple(box)))
                for box, label, score in zip(boxes, labels, scores, strict=True)
            ]

    def metric_names(self) -> list[str]:
        """The keys ``compute`` returns."""
        return ["voc/mAP", "voc/AP50"]

    def compute(self) -> dict[str, float]:
        """Gather across ranks and evaluate: ``{"voc/mAP": m, "voc/AP50": m}`` (fractions; the
        same number under both names). Also sets ``last_result``."""
        per_image = gather_per_image(self._per_image)
        if not per_image:
            raise RuntimeError("VocEvaluator.compute() before any process(): nothing to evaluate")
        ground_truth = {image_id: self.ground_truth[image_id] for image_id in per_image}
        result = evaluate_voc(
            _by_class(per_image, self.class_names), ground_truth, self.class_names, self.metric
        )
        self.last_result = result
        return {"voc/mAP": result.mAP, "voc/AP50": result.mAP}

    def detections(self) -> dict[str, list[ScoredBox]]:
        """All ranks' detections per class (VOC pixels of the original image), for
        :func:`write_voc_results`. Collective: call it on every rank."""
        return _by_class(gather_per_image(self._per_image), self.class_names)

    def _class_name(self, label: int) -> str:
        if not 1 <= label <= len(self.class_names):
            raise ValueError(
                f"model label {label} is outside 1..{len(self.class_names)} (the VOC classes); "
                "the model predicts more classes than the dataset has"
            )
        return self.class_names[label - 1]


def _class_ap(
    name: str,
    detections: Sequence[ScoredBox],
    objects: Mapping[str, list[TruthBox]],
    metric: VocMetric,
    iou_thresh: float,
) -> float:
    """AP of one class; ``objects`` holds that class's objects of every evaluated image."""
    boxes = {
        i: np.array([o.box for o in objs], float).reshape(-1, 4) for i, objs in objects.items()
    }
    difficult = {i: np.array([o.difficult for o in objs], bool) for i, objs in objects.items()}
    matched = {i: np.zeros(len(objs), bool) for i, objs in objects.items()}
    positives = sum(int((~flags).sum()) for flags in difficult.values())
    if positives == 0:
        return math.nan
    scores = np.array([score for _, score, _ in detections], float)
    tp, fp = np.zeros(len(detections)), np.zeros(len(detections))
    for rank, index in enumerate(np.argsort(-scores, kind="stable")):
        image_id, _, box = detections[index]
        image_id = str(image_id)
        if image_id not in boxes:
            raise ValueError(
                f"a {name!r} detection is on image {image_id!r}, which has no ground-truth entry; "
                "ground_truth needs every evaluated image (an empty list if it has no objects)"
            )
        overlaps = _iou_inclusive(np.asarray(box, float), boxes[image_id])
        best = int(np.argmax(overlaps)) if overlaps.size else -1
        if best < 0 or overlaps[best] <= iou_thresh:
            fp[rank] = 1.0
        elif difficult[image_id][best]:
            continue
        elif matched[image_id][best]:
            fp[rank] = 1.0
        else:
            tp[rank] = 1.0
            matched[image_id][best] = True
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    recall = tp / positives
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return voc_ap(recall, precision, use_07_metric=metric == "voc07")


def _iou_inclusive(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box [4] with boxes [G, 4], both inclusive pixel boxes (+1 in width, height)."""
    iw = np.maximum(np.minimum(boxes[:, 2], box[2]) - np.maximum(boxes[:, 0], box[0]) + 1.0, 0.0)
    ih = np.maximum(np.minimum(boxes[:, 3], box[3]) - np.maximum(boxes[:, 1], box[1]) + 1.0, 0.0)
    inter = iw * ih
    area = (box[2] - box[0] + 1.0) * (box[3] - box[1] + 1.0)
    areas = (boxes[:, 2] - boxes[:, 0] + 1.0) * (boxes[:, 3] - boxes[:, 1] + 1.0)
    return inter / (area + areas - inter)


def _by_class(
    per_image: Mapping[str, list[tuple[str, ScoredBox]]], class_names: Sequence[str]
) -> dict[str, list[ScoredBox]]:
    detections: dict[str, list[ScoredBox]] = {name: [] for name in class_names}
    for image_id in sorted(per_image):
        for name, detection in per_image[image_id]:
            detections[name].append(detection)
    return detections


def _parse_line(line: str, path: Path, number: int) -> ScoredBox:
    fields = line.split()
    try:
        if len(fields) != 6:
            raise ValueError(f"{len(fields)} fields")
        score, *box = (float(v) for v in fields[1:])
    except ValueError as err:
        raise ValueError(
            f"{path}:{number}: expected '<image_id> <score> <xmin> <ymin> <xmax> <ymax>', "
            f"got {line!r} ({err})"
        ) from None
    return ScoredBox(fields[0], score, (box[0], box[1], box[2], box[3]))


def _as_python(value: Any) -> Any:
    """A tensor image id as a Python number; anything else unchanged."""
    return value.item() if isinstance(value, torch.Tensor) else value
