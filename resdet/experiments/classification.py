"""Classification runs: the paper's ImageNet and CIFAR-10 experiments, and their evaluation."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from resdet.data.catalog import build_cls_dataset
from resdet.data.device_input import collate_cls, cpu_decodes
from resdet.data.loader import TrainLoader, build_eval_loader
from resdet.engine import distributed
from resdet.engine.evaluate import inference
from resdet.engine.hooks import BestCheckpoint, CountedImages
from resdet.evaluation.classification import (
    PAPER_TEST_SCALES,
    ClassificationEvaluator,
    MultiScale,
    TenCrop,
)
from resdet.experiments.common import (
    WeightChoice,
    announce_data,
    build_trainer,
    check_same_classes,
    check_save_best,
    checkpoint_meta,
    checkpoint_weights,
    config_from_checkpoint,
    find_ema,
    per_rank_batch,
    resolve_amp,
    seed_everything,
    set_up_threads,
    write_json,
)
from resdet.experiments.configs import ClsDataConfig, ClsExperiment
from resdet.experiments.run_dir import prepare_run_dir
from resdet.models.api import create_model, get_spec, resolve_variant
from resdet.models.blocks import set_stochastic_depth
from resdet.models.classifier import Classifier

# The split each data set is tested on; CIFAR-10 with a held-out part tests on it instead.
TEST_SPLITS = {"cifar10": "test", "imagenet": "val", "digits": "test"}


def test_split(data: ClsDataConfig) -> str:
    """The split a run evaluates on (``val`` for CIFAR-10 with ``val_size``, as the paper tunes)."""
    if data.dataset == "cifar10" and data.val_size:
        return "val"
    return TEST_SPLITS.get(data.dataset, "val")


def build_dataset(
    data: ClsDataConfig,
    split: str,
    *,
    train: bool,
    ten_crop: bool = False,
    test_scales: tuple[int, ...] = (),
) -> Dataset:
    """The data set of ``data`` for ``split``, with training augmentation when ``train``;
    ``ten_crop`` and ``test_scales`` ask for those test views instead of the centre crop."""
    views = data.views
    if ten_crop or test_scales:
        views = replace(views, ten_crop=ten_crop, test_scales=test_scales)
    return build_cls_dataset(
        data.dataset,
        data.root,
        split,
        train=train,
        views=views,
        val_size=data.val_size,
        download=data.download and train,
        decode=data.decode,
        strict=data.strict,
        augment=data.augment,
    )


def build_classifier(cfg: ClsExperiment, num_classes: int) -> Classifier:
    """The configured network wrapped in the classification loss contract."""
    model = cfg.model
    net = create_model(
        model.name,
        num_classes=num_classes,
        weights=model.weights,
        shortcut=model.shortcut,
        stride_in_1x1=model.stride_in_1x1,
        zero_init_residual=model.zero_init_residual,
    )
    set_stochastic_depth(net, model.drop_path)
    return Classifier(net, loss=cfg.loss, mix=cfg.data.mix)


def input_meta(dataset: Dataset) -> dict[str, Any]:
    """What checkpoints keep of the training set for export: ``class_names`` and, for sets
    normalised by their per-pixel mean (CIFAR-10, digits), ``mean_image``: [H, W, 3] nested
    lists of floats in 0..255 (checkpoint metadata holds plain values only)."""
    meta: dict[str, Any] = {"class_names": list(dataset.class_names)}
    mean_image = getattr(dataset, "mean_image", None)
    if mean_image is not None:
        meta["mean_image"] = np.asarray(mean_image, dtype=np.float32).tolist()  # exact floats
    return meta


def model_signature(cfg: ClsExperiment) -> str:
    """Name and layout of the network, e.g. ``resnet50/B/stride-1x1``; resuming must match it."""
    spec = get_spec(cfg.model.name)
    variant = resolve_variant(spec, cfg.model.shortcut, cfg.model.stride_in_1x1)
    stride = "stride-1x1" if variant.stride_in_1x1 else "stride-3x3"
    return f"{spec.name}/{variant.shortcut}/{stride}"


@dataclass
class ClsRunResult:
    """A finished classification run: final test metrics, run folder, weight-store tag."""

    metrics: dict[str, float]
    out_dir: Path
    weights_tag: str | None


def train_classifier(
    cfg: ClsExperiment, out_dir: Path, *, resume: Path | None = None, overwrite: bool = False
) -> ClsRunResult:
    """Train ``cfg`` into ``out_dir`` (config.yaml, metrics.jsonl, last.pt, eval.json).

    Evaluates on the test split during and after training; an ImageNet run (or any run with
    ``register``) adds the final network to the weight store, tagged with the run folder's name.
    """
    if cfg.data.views.test_time_only:
        raise ValueError(
            "data.views.ten_crop and data.views.test_scales are test-time views that training "
            "does not use: evaluate a run's checkpoint with `resdet eval --ten-crop` or "
            "`--multi-scale` instead"
        )
    device = distributed.init_distributed(cfg.train.device)
    distributed.configure_backends(device, deterministic=cfg.train.deterministic, fixed_shapes=True)
    workers = set_up_threads(device, cfg.data.workers, cfg.train.threads, resume).workers
    seed_everything(cfg.train.seed)
    prepare_run_dir(out_dir, cfg, resume=resume is not None, overwrite=overwrite)
    train_set = build_dataset(cfg.data, "train", train=True)
    test_set = build_dataset(cfg.data, test_split(cfg.data), train=False)
    check_same_classes(cfg.data.dataset, train_set, test_set)
    data_counts = announce_data(
        cfg.data.dataset, {"train": train_set, test_split(cfg.data): test_set}
    )
    model = build_classifier(cfg, train_set.num_classes)
    pin = device.type == "cuda"
    loader = TrainLoader(
        train_set,
        batch_size=per_rank_batch(cfg.data.batch_size),
        seed=cfg.train.seed,
        num_workers=workers,
        rank=distributed.get_rank(),
        world_size=distributed.get_world_size(),
        pin_memory=pin,
        collate_fn=collate_cls,
        repeats=cfg.data.repeated_augment,
    )
    eval_loader = build_eval_loader(
        test_set,
        batch_size=per_rank_batch(cfg.data.batch_size),
        num_workers=workers,
        collate_fn=collate_cls,
        rank=distributed.get_rank(),
        world_size=distributed.get_world_size(),
        pin_memory=pin,
    )
    amp = resolve_amp(cfg.train.amp, device)
    check_save_best(cfg.train, ClassificationEvaluator().metric_names())

    def evaluate(trained: nn.Module) -> dict[str, float]:
        evaluator = ClassificationEvaluator()
        return inference(trained, eval_loader, evaluator, device, amp, cfg.train.channels_last)

    trainer = build_trainer(
        model,
        loader,
        cfg.optim,
        cfg.train,
        out_dir=out_dir,
        device=device,
        evaluate=evaluate,
        checkpoint_meta={
            **checkpoint_meta(cfg, "cls", model_signature(cfg), cfg.data.dataset),
            **input_meta(train_set),
        },
        channels_last=cfg.train.channels_last,
        static_graph=True,  # a classifier uses every parameter, in the same order, every step
        extra_hooks=[cpu_decode_count()] if cfg.data.decode == "gpu" else [],
    )
    if resume is not None:
        trainer.resume(resume)
    else:
        trainer.metrics_log.write({"type": "data", "iter": 0, "splits": data_counts})
    metrics = trainer.fit()
    write_json(
        out_dir / "eval.json", {"split": test_split(cfg.data), **metrics, "data": data_counts}
    )
    tag = None
    if (cfg.register or cfg.data.dataset == "imagenet") and distributed.is_main():
        ema = find_ema(trainer)
        if ema is None:
            tag = register_weights(cfg, model, metrics, out_dir)
        else:  # the store takes the averaged weights, with their own numbers
            averaged = {k[4:]: v for k, v in metrics.items() if k.startswith("ema/")}
            tag = register_weights(cfg, ema.model, averaged, out_dir)
    return ClsRunResult(metrics, out_dir, tag)


def cpu_decode_count() -> CountedImages:
    """The hook logging ``cpu_decoded_images``: this run's images, training and evaluation
    alike, that the device's JPEG decoder refused (the process's count since now)."""
    start = cpu_decodes()
    return CountedImages("cpu_decoded_images", lambda: cpu_decodes() - start)


def register_checkpoint(
    checkpoint: Path, *, tag: str | None = None, weights: WeightChoice = "auto", force: bool = False
) -> tuple[str, str]:
    """Add a classification checkpoint's network (``last.pt``, ``best.pt``) to the weight store.

    ``weights`` as `checkpoint_weights` (the EMA weights when kept, by default); ``tag``
    defaults to the run folder's name. A ``best.pt`` records its best metric (``train.save_best``)
    when it describes the weights taken. Returns the tag and which weights (``ema``/``raw``).
    """
    cfg, state = config_from_checkpoint(checkpoint, ClsExperiment, "cls")
    model_state, used = checkpoint_weights(state, weights, checkpoint)
    num_classes = model_state["net.fc.weight"].shape[0]
    model = build_classifier(replace(cfg, model=replace(cfg.model, weights=None)), num_classes)
    model.load_state_dict(model_state)
    metrics: dict[str, float] = {}
    best = state.get("hooks", {}).get(BestCheckpoint.__name__, {})
    metric = cfg.train.save_best
    at_best = metric is not None and best.get("best_at") == state["iteration"]
    if at_best and metric.startswith("ema/") == (used == "ema"):
        metrics[metric.removeprefix("ema/")] = best["best"]
    run = checkpoint.resolve().parent
    return register_weights(cfg, model, metrics, run, tag=tag, force=force), used


def register_weights(
    cfg: ClsExperiment,
    model: Classifier,
    metrics: dict[str, float],
    out_dir: Path,
    *,
    tag: str | None = None,
    force: bool = True,
) -> str:
    """Add the trained network to the weight store, tagged ``tag`` or the run folder's name."""
    from resdet.models.weights import add_weights

    spec = get_spec(cfg.model.name)
    tag = tag or out_dir.resolve().name
    net = model.net
    entry = add_weights(
        spec.name,
        net.state_dict(),
        tag=tag,
        variant=resolve_variant(spec, cfg.model.shortcut, cfg.model.stride_in_1x1),
        num_classes=net.fc.out_features,
        dataset=cfg.data.dataset,
        metrics=metrics,
        source=f"resdet train-cls, run {out_dir.resolve()}",
        force=force,
    )
    return entry.tag


def evaluate_checkpoint(
    checkpoint: Path,
    *,
    data_root: str | None = None,
    ten_crop: bool = False,
    multi_scale: bool = False,
    device: str = "auto",
) -> dict[str, float]:
    """Top-1/top-5 error of a classification checkpoint on its data set's test split.

    The task, network and data set come from the checkpoint (``data_root`` moves the data).
    Keys: ``top1_err``, ``top5_err`` (centre/single view) and, with ``ten_crop``,
    ``top1_err_10crop``, ``top5_err_10crop`` (the paper's 10-crop testing), with
    ``multi_scale`` ``top1_err_multiscale``, ``top5_err_multiscale`` (its fully-convolutional
    testing at shorter sides ``PAPER_TEST_SCALES``); both for ImageNet and folder sets only.
    """
    cfg, state = config_from_checkpoint(checkpoint, ClsExperiment, "cls")
    data = cfg.data if data_root is None else replace(cfg.data, root=data_root)
    target = distributed.resolve_device(device)
    workers = set_up_threads(target, data.workers, cfg.train.threads).workers
    split = test_split(data)
    # Every view's data set first: the catalog refuses --ten-crop / --multi-scale for
    # single-view sets (CIFAR-10, digits) before any evaluation has run.
    views: list[tuple[str, Dataset, type[nn.Module] | None, int]] = [
        ("", build_dataset(data, split, train=False), None, data.batch_size)
    ]
    announce_data(data.dataset, {split: views[0][1]})
    if ten_crop:
        crops = build_dataset(data, split, train=False, ten_crop=True)
        views.append(("_10crop", crops, TenCrop, max(1, data.batch_size // 10)))
    if multi_scale:
        # Whole images of different shapes: one per batch.
        scales = build_dataset(data, split, train=False, test_scales=PAPER_TEST_SCALES)
        views.append(("_multiscale", scales, MultiScale, 1))
    # The checkpoint holds every parameter: no store weights to load first.
    model = build_classifier(
        replace(cfg, model=replace(cfg.model, weights=None)), views[0][1].num_classes
    )
    model.load_state_dict(state["model"])
    channels_last = cfg.train.channels_last
    model.to(target, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    amp = resolve_amp(cfg.train.amp, target)
    metrics: dict[str, float] = {}
    for suffix, dataset, wrapper, batch_size in views:
        loader = build_eval_loader(
            dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate_cls
        )
        viewed = model if wrapper is None else wrapper(model)
        result = inference(viewed, loader, ClassificationEvaluator(), target, amp, channels_last)
        metrics.update({f"{key}{suffix}": value for key, value in result.items()})
    return metrics
