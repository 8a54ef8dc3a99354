"""COCO evaluation: pycocotools' numbers, computed by faster-coco-eval, and an evaluator that
turns torchvision detector outputs into COCO results.

faster-coco-eval's ``COCOeval_faster`` reimplements pycocotools' evaluate/accumulate in C++.
On generated files with crowd regions, images without ground truth, categories without ground
truth, tied scores, images over maxDets, polygon / RLE / uncompressed-RLE masks and empty results
it gives the same 12 numbers as pycocotools (differences below 1e-15; see
tests/evaluation/test_eval_coco.py), several times faster, so it is used for every case.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from faster_coco_eval import COCOeval_faster
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torchvision.ops import box_convert

from resdet.evaluation.boxes import to_original_pixels
from resdet.evaluation.coco_files import IouType, load_ground_truth, load_results

# The order of pycocotools' COCOeval.summarize() (its `stats` array).
STAT_NAMES = (
    "AP", "AP50", "AP75", "APs", "APm", "APl",
    "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)  # fmt: skip

K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True)
class CocoResult:
    """The outcome of one COCO evaluation.

    ``stats`` maps the twelve :data:`STAT_NAMES` to fractions in [0, 1], exactly pycocotools'
    ``COCOeval.stats`` (``-1.0`` where the ground truth has no object in that area range).
    ``per_class`` maps each category name to its AP@[.5:.95] (fraction; ``nan`` for a category
    without ground truth in the evaluated images).
    """

    iou_type: str
    stats: dict[str, float]
    per_class: dict[str, float]


def evaluate_coco(
    gt: COCO | str | os.PathLike,
    results: Sequence[Mapping[str, Any]] | str | os.PathLike,
    iou_type: IouType = "bbox",
    image_ids: Sequence[int] | None = None,
) -> CocoResult:
    """Evaluate COCO-format detections as pycocotools' ``COCOeval`` does.

    Args:
        gt: a pycocotools ``COCO`` (it is not modified) or the path of an annotation JSON
            (``images``, ``annotations`` with ``bbox`` [x, y, w, h] pixels, ``categories``).
        results: result dicts ``{"image_id", "category_id", "score", "bbox" [x, y, w, h] pixels
            and/or "segmentation" (RLE)}`` (not modified), or the path of a results JSON.
        iou_type: ``"bbox"`` or ``"segm"``; segm ignores the entries' ``bbox`` (as detectron2
            does), so object sizes are mask areas.
        image_ids: evaluate only these images (pycocotools' ``params.imgIds``); all by default.

    Returns:
        The twelve summary numbers and per-category AP. Empty results give zeros.

    Raises:
        ValueError: unknown ``iou_type``; a malformed JSON file; a results entry whose image_id
            or category_id is not in the ground truth (the message names the source, the entry
            index and the value).
    """
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    with _gc_paused():
        coco_gt = load_ground_truth(gt, iou_type)
        coco_dt = coco_gt.loadRes(load_results(results, coco_gt, iou_type))
        evaluator = COCOeval_faster(coco_gt, coco_dt, iou_type, print_function=_silent)
        if image_ids is not None:
            unknown = sorted(set(image_ids) - coco_gt.imgs.keys())
            if unknown:
                raise ValueError(f"image_ids {unknown[:5]} are not images of the ground truth")
            evaluator.params.imgIds = sorted(set(image_ids))
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = {name: float(value) for name, value in zip(STAT_NAMES, evaluator.stats, strict=False)}
    per_class = _per_class_ap(evaluator.eval["precision"], evaluator.params.catIds, coco_gt.cats)
    return CocoResult(iou_type=iou_type, stats=stats, per_class=per_class)


def save_results(path: str | os.PathLike, results: Sequence[Mapping[str, Any]]) -> Path:
    """Write COCO results (a JSON list of result dicts) to ``path``; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(list(results), f, default=_json_default)
    return path


class CocoEvaluator:
    """Collects torchvision detector outputs as COCO results and evaluates them.

    Only the images passed to :meth:`process` are evaluated, so a partial pass over the
    dataset gives that subset's numbers rather than counting the rest as misses.
    """

    def __init__(
        self,
        coco_gt: COCO,
        iou_types: Sequence[IouType] = ("bbox",),
        *,
        label_to_category_id: Mapping[int, int],
    ) -> None:
        """``coco_gt``: the dataset's ground truth; ``label_to_category_id``: model label
        (contiguous 1..K) -> COCO category id (sparse, e.g. 1..90)."""
        for iou_type in iou_types:
            if iou_type not in ("bbox", "segm"):
                raise ValueError(f"iou_types may hold 'bbox' and 'segm', got {iou_type!r}")
        self.coco_gt = coco_gt
        self.iou_types = tuple(iou_types)
        self.label_to_category_id = dict(label_to_category_id)
        self.last_result: dict[str, CocoResult] = {}
        self._per_image: dict[int, list[dict[str, Any]]] = {}

    def reset(self) -> None:
        """Forget everything processed so far."""
        self._per_image = {}

    def process(
        self, targets: Sequence[Mapping[str, Any]], outputs: Sequence[Mapping[str, torch.Tensor]]
    ) -> None:
        """Add one batch.

        Args:
            targets: dataset targets with ``image_id``, ``orig_size`` (H0, W0) of the file on
                disk and ``size`` (H, W) of the image the model saw.
            outputs: torchvision predictions: ``boxes`` [N, 4] xyxy pixels of the image the model
                saw, ``labels`` [N] int64 in 1..K, ``scores`` [N], and ``masks`` [N, 1, H, W]
                float probabilities when ``"segm"`` is evaluated. Boxes are scaled to the
                original image and masks resized to it, thresholded at 0.5 and RLE-encoded.
        """
        for target, output in zip(targets, outputs, strict=True):
            image_id = int(target["image_id"])
            if image_id not in self.coco_gt.imgs:
                raise ValueError(
                    f"image_id {image_id} is not an image of the evaluator's ground truth; build "
                    "the CocoEvaluator from the coco of the dataset being evaluated"
                )
            self._per_image[image_id] = self._to_results(image_id, target, output)

    def metric_names(self) -> list[str]:
        """The keys ``compute`` returns: ``<iou type>/<stat>`` for the twelve COCO stats."""
        return [f"{iou_type}/{name}" for iou_type in self.iou_types for name in STAT_NAMES]

    def compute(self) -> dict[str, float]:
        """Gather to rank 0 and evaluate there; every rank gets ``{"bbox/AP": ...,
        "segm/AP": ...}`` with the twelve :data:`STAT_NAMES` per iou type (fractions) and the
        same ``last_result`` (iou type -> :class:`CocoResult`). Collective: call it on every
        rank. Only rank 0 runs COCOeval: the others would compute the same numbers again, at
        the same cost, while rank 0's GPU waits for them."""
        per_image = gather_per_image(self._per_image, to_main=True)
        outcome: tuple[dict[str, float], dict[str, CocoResult]] | Exception | None = None
        failure: Exception | None = None
        if not _is_distributed() or dist.get_rank() == 0:
            try:
                outcome = self._evaluate(per_image)
            except Exception as error:  # every rank raises below, so none waits for the others
                failure = error
                outcome = RuntimeError(f"COCO evaluation failed on rank 0: {error}")
        if _is_distributed():
            holder = [outcome]
            dist.broadcast_object_list(holder, src=0)
            outcome = holder[0]
        if failure is not None:
            raise failure
        if isinstance(outcome, Exception):
            raise outcome
        metrics, self.last_result = outcome
        return metrics

    def _evaluate(
        self, per_image: Mapping[int, list[dict[str, Any]]]
    ) -> tuple[dict[str, float], dict[str, CocoResult]]:
        if not per_image:
            raise RuntimeError("CocoEvaluator.compute() before any process(): nothing to evaluate")
        results = [entry for image_id in sorted(per_image) for entry in per_image[image_id]]
        metrics: dict[str, float] = {}
        last: dict[str, CocoResult] = {}
        for iou_type in self.iou_types:
            result = evaluate_coco(self.coco_gt, results, iou_type, image_ids=list(per_image))
            last[iou_type] = result
            metrics.update({f"{iou_type}/{name}": value for name, value in result.stats.items()})
        return metrics, last

    def results(self) -> list[dict[str, Any]]:
        """All ranks' COCO results (``bbox`` xywh pixels of the original image, ``segmentation``
        RLE when masks were evaluated), sorted by image id. Collective: call it on every rank."""
        per_image = gather_per_image(self._per_image)
        return [entry for image_id in sorted(per_image) for entry in per_image[image_id]]

    def _to_results(
        self, image_id: int, target: Mapping[str, Any], output: Mapping[str, torch.Tensor]
    ) -> list[dict[str, Any]]:
        if "segm" in self.iou_types and "masks" not in output:
            raise ValueError(
                f"image {image_id}: 'segm' is evaluated but the model output has no 'masks'; "
                "use a Mask R-CNN model or evaluate iou_types=('bbox',)"
            )
        if len(output["boxes"]) == 0:
            return []
        orig_size = tuple(int(v) for v in target["orig_size"])
        boxes = to_original_pixels(
            output["boxes"], _model_image_size(image_id, target, output), orig_size
        )
        xywh = box_convert(boxes, "xyxy", "xywh").tolist()
        scores = output["scores"].detach().float().cpu().tolist()
        labels = output["labels"].detach().cpu().tolist()
        entries = [
            {"image_id": image_id, "category_id": self._category_id(label), "bbox": box, "score": s}
            for box, label, s in zip(xywh, labels, scores, strict=True)
        ]
        if "segm" in self.iou_types:
            for entry, rle in zip(entries, _encode_masks(output["masks"], orig_size), strict=True):
                entry["segmentation"] = rle
        return entries

    def _category_id(self, label: int) -> int:
        try:
            return self.label_to_category_id[label]
        except KeyError:
            raise ValueError(
                f"model label {label} has no COCO category id in label_to_category_id "
                f"(labels {min(self.label_to_category_id)}..{max(self.label_to_category_id)}); "
                "the model predicts more classes than the dataset has"
            ) from None


def gather_per_image(per_image: dict[K, V], *, to_main: bool = False) -> dict[K, V]:
    """Merge ``image_id -> per-image results`` from every rank (``all_gather_object``, or with
    ``to_main`` ``gather_object`` to rank 0, the others getting ``{}``); without an initialised
    process group, a copy of ``per_image``. Samplers that pad shards (as ``DistributedSampler``
    does) repeat images on several ranks; the first rank's copy is kept, so each image counts
    once. Collective: call it on every rank."""
    if not _is_distributed() or dist.get_world_size() == 1:
        return dict(per_image)
    shards: list[dict[K, V] | None] = [None] * dist.get_world_size()
    if to_main:
        main = dist.get_rank() == 0
        dist.gather_object(per_image, shards if main else None, dst=0)
        if not main:
            return {}
    else:
        dist.all_gather_object(shards, per_image)
    merged: dict[K, V] = {}
    for shard in shards:
        for image_id, value in (shard or {}).items():
            merged.setdefault(image_id, value)
    return merged


def _is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _model_image_size(
    image_id: int, target: Mapping[str, Any], output: Mapping[str, torch.Tensor]
) -> tuple[int, int]:
    """(H, W) of the image the model saw: the target's ``size``, else the masks' shape."""
    if "size" in target:
        h, w = (int(v) for v in target["size"])
        return h, w
    if "masks" in output:
        h, w = output["masks"].shape[-2:]
        return int(h), int(w)
    raise ValueError(
        f"image {image_id}: the target has no 'size' (H, W) of the image the model saw and the "
        "output has no masks to read it from, so boxes cannot be scaled to 'orig_size'; "
        "add 'size' to the dataset's targets"
    )


def _encode_masks(masks: torch.Tensor, orig_size: tuple[int, int]) -> list[dict[str, Any]]:
    """Masks [N, 1, H, W] (or [N, H, W]) float probabilities -> N compressed RLEs (JSON-ready,
    ``counts`` str) of the masks resized to ``orig_size`` (H0, W0) and thresholded at 0.5."""
    masks = masks.detach().float()
    if masks.ndim == 3:  # [N, H, W], as dataset targets hold them
        masks = masks[:, None]
    if tuple(masks.shape[-2:]) != orig_size:
        masks = F.interpolate(masks, size=orig_size, mode="bilinear", align_corners=False)
    binary = (masks[:, 0] > 0.5).cpu().numpy().astype(np.uint8)
    # pycocotools encodes column-major [H, W, N] arrays.
    rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def _per_class_ap(
    precision: np.ndarray, category_ids: Sequence[int], categories: Mapping[int, dict]
) -> dict[str, float]:
    """Per-category AP@[.5:.95] as detectron2 derives it: precision is [T IoU thresholds,
    R recall thresholds, K categories, A area ranges, M maxDets]; take area "all" and the
    largest maxDets and average the entries > -1 (-1 marks "no ground truth")."""
    per_class = {}
    for k, category_id in enumerate(category_ids):
        values = precision[:, :, k, 0, -1]
        values = values[values > -1]
        per_class[categories[category_id]["name"]] = (
            float(values.mean()) if values.size else math.nan
        )
    return per_class


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Loading builds hundreds of thousands of small acyclic objects, which trigger full
    garbage collections over every live object (torch's too): 0.05 s became up to 0.6 s for
    parsing one 25k-detection results file. Collection waits until evaluation is done."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _json_default(value: Any) -> Any:
    """RLE counts from ``mask_utils.encode`` are bytes; numpy scalars come from array math."""
    if isinstance(value, bytes):
        return value.decode("ascii")
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} {value!r} cannot be written to a COCO results file")


def _silent(*args: Any, **kwargs: Any) -> None:
    """faster-coco-eval prints progress and the summary through this; resdet prints tables."""
