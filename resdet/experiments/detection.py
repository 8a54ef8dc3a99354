"""Detection runs: Faster / Mask R-CNN training, evaluation (COCO or VOC tables) and prediction."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from resdet.data.catalog import VOC_SETS, build_det_dataset, prepare_det_dataset
from resdet.data.detection import collate
from resdet.data.loader import TrainLoader, build_eval_loader
from resdet.data.samplers import aspect_ratio_groups
from resdet.engine import distributed
from resdet.engine.checkpoint import load_checkpoint
from resdet.engine.evaluate import inference
from resdet.evaluation.coco import CocoEvaluator, CocoResult, save_results
from resdet.evaluation.voc import VocEvaluator, VocResult, write_voc_results
from resdet.experiments.common import (
    PhaseTimes,
    announce_data,
    build_trainer,
    check_same_classes,
    check_save_best,
    checkpoint_meta,
    config_from_checkpoint,
    logger,
    per_rank_batch,
    resolve_amp,
    seed_everything,
    set_up_threads,
    write_json,
)
from resdet.experiments.configs import DetExperiment
from resdet.experiments.run_dir import prepare_run_dir
from resdet.models.detector import build_detector, load_detector_state


def build_dataset(cfg: DetExperiment, *, train: bool) -> Dataset:
    """The training (``train``) or evaluation split of ``cfg.data``, resized to ``data.sizes``.

    The data pipeline resizes to the detector's own sizes so that the model's internal resize
    is a no-op and decoding work stays in the loader processes.
    """
    return build_det_dataset(
        cfg.data.dataset,
        cfg.data.root,
        train=train,
        sizes=cfg.data.sizes,
        with_masks=cfg.model.masks,
        val_annotations=cfg.data.val_annotations,
        strict=cfg.data.strict,
    )


def build_model(cfg: DetExperiment, num_classes: int, *, backbone_weights: str | None) -> nn.Module:
    """The detector of ``cfg.model`` for ``num_classes`` object classes."""
    m = cfg.model
    return build_detector(
        m.backbone,
        head=m.head,
        num_classes=num_classes,
        masks=m.masks,
        backbone_weights=backbone_weights,
        trainable_stages=m.trainable_stages,
        frozen_bn=m.frozen_bn,
        shortcut=m.shortcut,
        stride_in_1x1=m.stride_in_1x1,
        channels_last=cfg.train.channels_last,
        min_size=cfg.data.sizes.min_size,
        max_size=cfg.data.sizes.max_size,
        rpn=m.rpn,
        roi_heads=m.roi_heads,
        conventions=m.conventions,
        train_resize=False,  # build_dataset resizes, drawing the multi-scale size itself
        fpn_channels=m.fpn_channels,
    )


def pin_backbone_weights(cfg: DetExperiment) -> DetExperiment:
    """``cfg`` with the backbone weights it will start from written in: ``auto`` replaced by the
    chosen entry's tag, and that entry's sha256 (checked against ``backbone_sha256`` when the
    config already records one). Logs which entry and why (rank 0)."""
    from resdet.models.detector import resolve_backbone_weights
    from resdet.models.weights import find_weights

    m = cfg.model
    weights, message = resolve_backbone_weights(m.backbone, m.backbone_weights)
    if weights is None:  # random initialisation; for auto with nothing stored the builder warns
        if m.backbone_weights is None and distributed.is_main():
            logger.info(message)
        return cfg
    entry = find_weights(m.backbone, weights)
    if m.backbone_sha256 is not None and m.backbone_sha256 != entry.sha256:
        raise ValueError(
            f"the {m.backbone} weights {weights!r} ({entry.path}) have sha256 {entry.sha256}, but "
            f"this configuration was recorded with {m.backbone_sha256}: the entry was replaced "
            "since. Restore it, or set model.backbone_sha256=null to start from the new one"
        )
    if distributed.is_main():
        logger.info(message)
    return replace(
        cfg, model=replace(m, backbone_weights=str(weights), backbone_sha256=entry.sha256)
    )


def voc_metric(year: str, metric: str | None) -> str:
    """``metric`` when given, else the year's own: voc07 (11-point) for 2007, voc12 after."""
    chosen = metric or ("voc07" if str(year) == "2007" else "voc12")
    if chosen not in ("voc07", "voc12"):
        raise ValueError(f"VOC metric must be voc07 or voc12, got {chosen!r}")
    return chosen


def model_signature(cfg: DetExperiment) -> str:
    """E.g. ``resnet101/c4/box``; a resumed run must match it."""
    m = cfg.model
    return f"{m.backbone}/{m.head}/{'mask' if m.masks else 'box'}"


def build_evaluator(dataset: Dataset, cfg: DetExperiment) -> CocoEvaluator | VocEvaluator:
    """VOC sets get the VOC metric (voc07 for VOC2007 test), everything else COCO's."""
    from resdet.data.voc import voc_ground_truth

    if cfg.data.dataset in VOC_SETS:
        metric = voc_metric(VOC_SETS[cfg.data.dataset][1][0], cfg.data.voc_metric)
        return VocEvaluator(dataset.class_names, voc_ground_truth(dataset), metric)
    iou_types = ("bbox", "segm") if cfg.model.masks else ("bbox",)
    return CocoEvaluator(dataset.coco, iou_types, label_to_category_id=dataset.label_to_category_id)


@dataclass
class DetReport:
    """What one evaluation found: COCO results per IoU type, or a VOC result."""

    coco: dict[str, CocoResult] = field(default_factory=dict)
    voc: VocResult | None = None

    def as_json(self) -> dict[str, Any]:
        """COCO: ``{"bbox": {12 stats, "per_class"}, "segm": ...}``; VOC: metric, mAP, per_class."""
        if self.voc is not None:
            return {"metric": self.voc.metric, "mAP": self.voc.mAP, "per_class": self.voc.per_class}
        return {t: {**r.stats, "per_class": r.per_class} for t, r in self.coco.items()}


def report_of(evaluator: CocoEvaluator | VocEvaluator) -> DetReport:
    """The full result of the evaluator's last ``compute()``, for tables and eval.json."""
    if isinstance(evaluator, VocEvaluator):
        return DetReport(voc=evaluator.last_result)
    return DetReport(coco=dict(evaluator.last_result))


def save_detections(evaluator: CocoEvaluator | VocEvaluator, dataset: Dataset, path: Path) -> None:
    """COCO results JSON at ``path``; for VOC, ``comp4_det_test_<class>.txt`` files in ``path``."""
    if isinstance(evaluator, VocEvaluator):
        from resdet.data.voc import voc_image_names

        names = voc_image_names(dataset)
        detections = {
            c: [d._replace(image_id=names[int(d.image_id)]) for d in dets]
            for c, dets in evaluator.detections().items()
        }
        if distributed.is_main():
            write_voc_results(path, detections)
        return
    results = evaluator.results()
    if distributed.is_main():
        save_results(path, results)


@dataclass
class DetRunResult:
    """A finished detection run: final report and run folder."""

    report: DetReport
    out_dir: Path


def train_detector(
    cfg: DetExperiment, out_dir: Path, *, resume: Path | None = None, overwrite: bool = False
) -> DetRunResult:
    """Train ``cfg`` into ``out_dir`` (config.yaml, metrics.jsonl, last.pt, eval.json), evaluate."""
    device = distributed.init_distributed(cfg.train.device)
    distributed.configure_backends(
        device, deterministic=cfg.train.deterministic, fixed_shapes=False
    )
    workers = set_up_threads(device, cfg.data.workers, cfg.train.threads, resume).workers
    seed_everything(cfg.train.seed)
    # A resumed run or a fine-tuning start loads every parameter: skip the store lookup.
    from_store = resume is None and not cfg.model.init
    if from_store:
        cfg = pin_backbone_weights(cfg)
    prepare_run_dir(out_dir, cfg, resume=resume is not None, overwrite=overwrite)
    times = PhaseTimes()
    with times.phase("data"):
        # One process writes a generated set, the others wait for it.
        prepare_det_dataset(cfg.data.dataset, cfg.data.root, write=distributed.is_main())
        distributed.barrier()
        train_set = build_dataset(cfg, train=True)
        test_set = build_dataset(cfg, train=False)
    check_same_classes(cfg.data.dataset, train_set, test_set)
    data_counts = announce_data(cfg.data.dataset, {"train": train_set, "eval": test_set})
    backbone_weights = cfg.model.backbone_weights if from_store else None
    with times.phase("model"):
        model = build_model(cfg, len(train_set.class_names), backbone_weights=backbone_weights)
    if cfg.model.init and resume is None:
        for message in load_detector_state(model, load_checkpoint(cfg.model.init)["model"]):
            warnings.warn(message, stacklevel=2)
    group_ids = aspect_ratio_groups(train_set.aspect_ratios()) if cfg.data.aspect_grouping else None
    loader = TrainLoader(
        train_set,
        batch_size=per_rank_batch(cfg.data.batch_size),
        seed=cfg.train.seed,
        num_workers=workers,
        collate_fn=collate,
        group_ids=group_ids,
        rank=distributed.get_rank(),
        world_size=distributed.get_world_size(),
        pin_memory=device.type == "cuda",
    )
    eval_loader = build_eval_loader(
        test_set,
        batch_size=max(1, per_rank_batch(cfg.data.batch_size)),
        num_workers=workers,
        collate_fn=collate,
        rank=distributed.get_rank(),
        world_size=distributed.get_world_size(),
    )
    evaluator = build_evaluator(test_set, cfg)
    check_save_best(cfg.train, evaluator.metric_names())
    amp = resolve_amp(cfg.train.amp, device)

    def evaluate(trained: nn.Module) -> dict[str, float]:
        with times.phase("evaluation"):
            return inference(trained, eval_loader, evaluator, device, amp)

    meta = checkpoint_meta(cfg, "det", model_signature(cfg), cfg.data.dataset)
    meta["class_names"] = list(train_set.class_names)
    trainer = build_trainer(
        model,
        loader,
        cfg.optim,
        cfg.train,
        out_dir=out_dir,
        device=device,
        evaluate=evaluate,
        checkpoint_meta=meta,
        channels_last=False,  # images are a list of sizes; the backbone converts itself
    )
    if resume is not None:
        trainer.resume(resume)
    else:
        trainer.metrics_log.write({"type": "data", "iter": 0, "splits": data_counts})
    with times.phase("training"):
        trainer.fit()
    report = report_of(evaluator)
    seconds = times.without("training", "evaluation")
    if distributed.is_main():
        logger.info("seconds: " + ", ".join(f"{name} {value}" for name, value in seconds.items()))
    write_json(out_dir / "eval.json", {**report.as_json(), "data": data_counts, "seconds": seconds})
    return DetRunResult(report, out_dir)


def evaluate_detector_checkpoint(
    checkpoint: Path,
    *,
    data_root: str | None = None,
    device: str = "auto",
    voc_metric: str | None = None,
    results_out: Path | None = None,
) -> DetReport:
    """Evaluate a detection checkpoint on its data set's evaluation split (read from it)."""
    cfg, state = config_from_checkpoint(checkpoint, DetExperiment, "det")
    if data_root is not None:
        cfg = replace(cfg, data=replace(cfg.data, root=data_root))
    if voc_metric is not None:
        cfg = replace(cfg, data=replace(cfg.data, voc_metric=voc_metric))
    target = distributed.resolve_device(device)
    workers = set_up_threads(target, cfg.data.workers, cfg.train.threads).workers
    test_set = build_dataset(cfg, train=False)
    announce_data(cfg.data.dataset, {"eval": test_set})
    model = build_model(cfg, len(test_set.class_names), backbone_weights=None)
    model.load_state_dict(state["model"])
    model.to(target)
    evaluator = build_evaluator(test_set, cfg)
    loader = build_eval_loader(test_set, batch_size=2, num_workers=workers, collate_fn=collate)
    inference(model, loader, evaluator, target, resolve_amp(cfg.train.amp, target))
    if results_out is not None:
        save_detections(evaluator, test_set, results_out)
    return report_of(evaluator)


def load_detector(checkpoint: Path, device: str = "auto") -> tuple[nn.Module, list[str]]:
    """A trained detector from a checkpoint, in eval mode on ``device``, and its class names."""
    cfg, state = config_from_checkpoint(checkpoint, DetExperiment, "det")
    class_names = list(state["meta"]["class_names"])
    model = build_model(cfg, len(class_names), backbone_weights=None)
    model.load_state_dict(state["model"])
    target = distributed.resolve_device(device)
    set_up_threads(target, 0, cfg.train.threads)
    return model.to(target).eval(), class_names


def predict_image(
    model: nn.Module, image: np.ndarray, score_thresh: float
) -> dict[str, np.ndarray]:
    """Detections on one uint8 RGB image [H, W, 3], in its own pixels.

    Returns ``boxes`` float [N, 4] xyxy, ``labels`` int [N] (1..K), ``scores`` [N] and, for
    Mask R-CNN, ``masks`` bool [N, H, W]; only detections scoring at least ``score_thresh``.
    The model resizes internally and maps its boxes back to the image it was given.
    """
    device = next(model.parameters()).device
    tensor = torch.from_numpy(image).permute(2, 0, 1).float().div_(255).to(device)
    with torch.inference_mode():
        output = model([tensor])[0]
    keep = output["scores"] >= score_thresh
    result = {k: v[keep].cpu().numpy() for k, v in output.items()}
    if "masks" in result:
        result["masks"] = result["masks"][:, 0] >= 0.5
    return result
