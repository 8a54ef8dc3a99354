"""Builders shared by classification and detection runs: optimizer, schedule, trainer, run folder."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import torch
from torch import nn

from resdet.config import from_dict, to_dict
from resdet.data.loader import TrainLoader
from resdet.data.summary import data_summary, summary_line
from resdet.engine import distributed
from resdet.engine.checkpoint import load_checkpoint
from resdet.engine.ema import ModelEMA
from resdet.engine.evaluate import AmpMode
from resdet.engine.hooks import BestCheckpoint, CountedImages, Hook
from resdet.engine.optim import build_optimizer
from resdet.engine.schedule import (
    CosineSchedule,
    PlateauSchedule,
    Schedule,
    StepSchedule,
    Warmup,
)
from resdet.engine.tensorboard import TensorBoard
from resdet.engine.threads import ThreadPlan, apply_thread_plan, usable_cores
from resdet.engine.trainer import Trainer
from resdet.experiments.configs import OptimConfig, TrainConfig

C = TypeVar("C")
# Messages for the person running resdet; the CLI shows this logger's INFO records.
logger = logging.getLogger("resdet")


def resolve_amp(amp: str, device: torch.device) -> AmpMode:
    """The trainer's precision for a config's ``amp``.

    ``auto`` is bf16 on CUDA and on CPUs that compute bf16 natively (AMX or AVX512-BF16, where
    it is about 1.2-2x faster than fp32 for ResNets), fp32 elsewhere.
    """
    if amp == "auto":
        native = device.type == "cuda" or torch.ops.mkldnn._is_mkldnn_bf16_supported()
        return "bf16" if native else "off"
    return "off" if amp == "fp32" else amp  # type: ignore[return-value]


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch so that model initialisation is reproducible."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_schedule(cfg: OptimConfig, max_iters: int) -> Schedule:
    """The learning-rate schedule of ``cfg`` over a run of ``max_iters`` iterations."""
    warmup = (
        Warmup(cfg.warmup, cfg.warmup_factor, cfg.warmup_iters, cfg.warmup_until_train_err or None)
        if cfg.warmup != "none"
        else None
    )
    if cfg.schedule == "step":
        late = [s for s in cfg.steps if s >= max_iters]
        if late:
            # Not an error: a short debugging run of a long recipe is common, but say it.
            warnings.warn(
                f"lr steps {late} are at or past the run's {max_iters} iterations", stacklevel=2
            )
        return StepSchedule(cfg.lr, cfg.steps, gamma=cfg.gamma, warmup=warmup)
    if cfg.schedule == "cosine":
        return CosineSchedule(cfg.lr, max_iters, warmup=warmup)
    return PlateauSchedule(
        cfg.lr,
        metric=cfg.plateau_metric,
        patience=cfg.plateau_patience,
        gamma=cfg.gamma,
        warmup=warmup,
    )


def per_rank_batch(batch_size: int) -> int:
    """A run's batch size divided among the torchrun processes (it must divide evenly)."""
    world = distributed.get_world_size()
    if batch_size % world:
        raise ValueError(
            f"batch size {batch_size} does not divide among {world} processes; "
            f"use a multiple of {world}"
        )
    return batch_size // world


def build_trainer(
    model: nn.Module,
    loader: TrainLoader,
    optim: OptimConfig,
    train: TrainConfig,
    *,
    out_dir: Path,
    device: torch.device,
    evaluate: Callable[[nn.Module], Mapping[str, float]] | None,
    checkpoint_meta: Mapping[str, Any],
    channels_last: bool,
    find_unused_parameters: bool = False,
    static_graph: bool = False,
    extra_hooks: Sequence[Hook] = (),
) -> Trainer:
    """A ``Trainer`` for ``model`` with SGD and the schedule of ``optim``, settings of ``train``,
    and ``extra_hooks`` before the one counting skipped images."""
    # An iteration is one optimizer step, which consumes grad_accum batches.
    per_epoch = max(1, loader.batches_per_epoch // train.grad_accum)
    max_iters = train.epochs * per_epoch if train.epochs > 0 else train.iters
    optimizer = build_optimizer(
        model,
        optim.name,
        lr=optim.lr,
        momentum=optim.momentum,
        weight_decay=optim.weight_decay,
        nesterov=optim.nesterov,
        betas=optim.betas,
        eps=optim.eps,
        # no_decay_norm: neither norm layers nor biases decay, whatever else is set
        norm_weight_decay=0.0 if optim.no_decay_norm else optim.norm_weight_decay,
        bias_weight_decay=0.0 if optim.no_decay_norm else optim.bias_weight_decay,
    )
    hooks: list[Hook] = list(extra_hooks)
    if train.ema:
        ema = ModelEMA(train.ema)
        hooks.append(ema)
        if evaluate is not None:
            evaluate = with_ema_metrics(evaluate, ema)
    if train.save_best:
        hooks.append(BestCheckpoint(train.save_best))
    if hasattr(loader.dataset, "skipped"):  # image folders and detection sets replace bad images
        hooks.append(CountedImages("skipped_images", lambda: loader.dataset.skipped))
    if train.tensorboard:  # last: it writes the records the other hooks have completed
        hooks.append(TensorBoard(out_dir / "tb"))
    return Trainer(
        model,
        optimizer,
        build_schedule(optim, max_iters),
        loader,
        max_iters=max_iters,
        out_dir=out_dir,
        device=device,
        amp=resolve_amp(train.amp, device),
        channels_last=channels_last,
        grad_accum=train.grad_accum,
        clip_grad_norm=optim.grad_clip or None,
        log_period=train.log_period,
        eval_period=train.eval_period or None,
        checkpoint_period=train.checkpoint_period or None,
        evaluate=evaluate,
        checkpoint_meta=checkpoint_meta,
        find_unused_parameters=find_unused_parameters,
        static_graph=static_graph,
        compile_model=train.compile,
        hooks=hooks,
    )


class PhaseTimes:
    """Wall seconds of a run's phases (data, model, training, evaluation), for eval.json."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Add the time spent in the ``with`` block to phase ``name``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def without(self, outer: str, inner: str) -> dict[str, float]:
        """The phases rounded to 0.1 s, with ``inner``'s time (run inside ``outer``) taken out of
        ``outer``'s."""
        seconds = dict(self.seconds)
        if outer in seconds:
            seconds[outer] -= seconds.get(inner, 0.0)
        return {name: round(value, 1) for name, value in seconds.items()}


def check_save_best(train: TrainConfig, names: Sequence[str]) -> None:
    """Refuse, before training, a ``train.save_best`` that the run's evaluation (reporting
    ``names``, and ``ema/<name>`` with EMA on) will never report."""
    if train.save_best is None:
        return
    available = [*names, *(f"ema/{name}" for name in names)] if train.ema else list(names)
    if train.save_best not in available:
        raise ValueError(
            f"train.save_best={train.save_best!r} is not a metric this run evaluates; choose "
            f"one of {', '.join(available)}"
        )


def with_ema_metrics(
    evaluate: Callable[[nn.Module], Mapping[str, float]], ema: ModelEMA
) -> Callable[[nn.Module], dict[str, float]]:
    """``evaluate`` that also scores the averaged weights, as ``ema/<metric>``.

    The average is evaluated first, so that an evaluator read after training (the detection
    tables) holds the trained model's results, as without EMA.
    """

    def both(model: nn.Module) -> dict[str, float]:
        averaged = {f"ema/{key}": value for key, value in evaluate(ema.model).items()}
        return {**evaluate(model), **averaged}

    return both


WeightChoice = Literal["auto", "ema", "raw"]


def checkpoint_weights(
    state: Mapping[str, Any], choice: WeightChoice, path: Path
) -> tuple[dict[str, torch.Tensor], str]:
    """The model state to take from checkpoint ``state`` (read from ``path``), and which it is.

    ``auto``: the weight average (``train.ema``) when the run kept one, else the trained
    weights; ``ema`` requires the average; ``raw``: the trained weights. Returns the state dict
    and ``"ema"`` or ``"raw"``.
    """
    if choice not in ("auto", "ema", "raw"):
        raise ValueError(f"weights {choice!r}: choose auto, ema or raw")
    averaged = state.get("hooks", {}).get(ModelEMA.__name__, {}).get("weights")
    if choice == "raw" or (choice == "auto" and averaged is None):
        return state["model"], "raw"
    if averaged is None:
        raise ValueError(
            f"{path} holds no averaged weights (its run had train.ema: 0); take the trained "
            "ones with --weights raw (or auto)"
        )
    return averaged, "ema"


def find_ema(trainer: Trainer) -> ModelEMA | None:
    """The trainer's weight average, if the run keeps one (``train.ema``)."""
    return next((hook for hook in trainer.hooks if isinstance(hook, ModelEMA)), None)


def announce_data(name: str, splits: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """Log one summary line per split of data set ``name`` (rank 0) and return the counts,
    ``{split: data_summary(dataset)}``, for metrics.jsonl and eval.json."""
    counts = {split: data_summary(dataset) for split, dataset in splits.items()}
    if distributed.is_main():
        for split, split_counts in counts.items():
            logger.info(summary_line(f"{name} {split}", split_counts))
    return counts


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as indented JSON (rank 0 only)."""
    if distributed.is_main():
        path.write_text(json.dumps(data, indent=2) + "\n")


def checkpoint_meta(config: Any, task: str, model_signature: str, dataset: str) -> dict[str, Any]:
    """What checkpoints record about the run, checked when resuming and read by ``resdet eval``;
    ``torch_threads``, so that a resumed CPU run sums in the same order (bit-exact)."""
    return {
        "config": to_dict(config),
        "task": task,
        "model": model_signature,
        "dataset": dataset,
        "torch_threads": torch.get_num_threads(),
    }


def set_up_threads(
    device: torch.device, workers: int, threads: int, resume: Path | None = None
) -> ThreadPlan:
    """Size and set this process's CPU threads (``engine.threads``) and log the plan (rank 0).

    A CPU run resumed from a checkpoint keeps the checkpoint's torch thread count unless
    ``threads`` (``train.threads``) or ``OMP_NUM_THREADS`` chooses one: another count sums in
    another order and the run would no longer continue bit-exactly.
    """
    explicit = threads or os.environ.get("OMP_NUM_THREADS", "").isdigit()
    if resume is not None and device.type == "cpu" and not explicit:
        saved = load_checkpoint(resume, mmap=True)["meta"].get("torch_threads")
        threads = int(saved) if saved else 0
        if threads > usable_cores():
            warnings.warn(
                f"{resume} was trained with {threads} torch threads, more than the "
                f"{usable_cores()} cores here; resuming with them keeps the run bit-exact but "
                "oversubscribes the cores (set train.threads to choose)",
                stacklevel=2,
            )
    plan = apply_thread_plan(
        device, workers, threads, processes=int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    )
    if distributed.is_main():
        logger.info(plan.describe())
    return plan


def check_same_classes(name: str, train_set: Any, test_set: Any) -> None:
    """Labels are positions in ``class_names``: the evaluation set must list the training set's
    classes in the same order, or every score would compare different classes."""
    train_names, test_names = list(train_set.class_names), list(test_set.class_names)
    if train_names == test_names:
        return
    only_train = [c for c in train_names if c not in test_names]
    only_test = [c for c in test_names if c not in train_names]
    differences = (
        f"only in training: {only_train[:8]}, only in evaluation: {only_test[:8]}"
        if only_train or only_test
        else "the same classes in another order"
    )
    where = " and ".join(
        str(dataset.root) for dataset in (train_set, test_set) if hasattr(dataset, "root")
    )
    raise ValueError(
        f"{name}: the evaluation set's classes differ from the training set's ({differences})"
        f"{f' in {where}' if where else ''}; give both splits the same class folders or "
        "categories"
    )


TASK_NAMES = {"cls": "classification", "det": "detection"}


def config_from_checkpoint(path: Path, cls: type[C], task: str) -> tuple[C, dict[str, Any]]:
    """The experiment config saved in checkpoint ``path`` and the whole checkpoint state.

    A checkpoint of another task is refused, naming both.
    """
    state = load_checkpoint(path)
    found = state["meta"].get("task")
    if found != task:
        raise ValueError(
            f"{path} is a {TASK_NAMES.get(found, repr(found))} checkpoint, not a "
            f"{TASK_NAMES[task]} one"
        )
    return from_dict(cls, state["meta"]["config"], where=f"{path} config"), state
