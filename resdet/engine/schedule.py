"""Learning-rate schedules indexed by iteration (optimizer steps), with optional warm-up.

A schedule gives ``lr_at(iteration)`` for 0-based iteration ``i`` (the i-th optimizer step),
receives evaluation metrics through ``step(metrics)`` and the logged training metrics through
``observe_train``; the trainer writes ``lr_at(i)`` into every parameter group before step ``i``. Warm-up multiplies the main schedule's value, as detectron2's
``WarmupParamScheduler`` does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch


@dataclass(frozen=True)
class Warmup:
    """Scale the learning rate during the first ``iters`` iterations.

    ``linear``: from ``factor`` at iteration 0 rising linearly to 1 at ``iters`` (Goyal et al.).
    ``constant``: ``factor`` until ``iters``, then 1.
    ``until_train_err``: the warm-up also ends at the first training log whose mean training
    error (``top1_err``) is below this value, ``iters`` then being the longest it may last. The
    paper's ResNet-110 on CIFAR-10: lr 0.01 = 0.1 x 0.1 "until the training error is below 80%
    (about 400 iterations)", then 0.1 (section 4.2).
    """

    kind: Literal["linear", "constant"]
    factor: float
    iters: int
    until_train_err: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("linear", "constant"):
            raise ValueError(f"warm-up kind must be 'linear' or 'constant', got {self.kind!r}")
        if self.iters < 0 or not 0.0 <= self.factor <= 1.0:
            raise ValueError(
                f"warm-up needs iters >= 0 and 0 <= factor <= 1, got iters={self.iters}, "
                f"factor={self.factor}"
            )

    def scale(self, iteration: int, ended_at: int | None = None) -> float:
        """The multiplier at ``iteration``; ``ended_at`` is where ``until_train_err`` ended it."""
        if iteration >= self.iters or (ended_at is not None and iteration >= ended_at):
            return 1.0
        if self.kind == "constant":
            return self.factor
        alpha = iteration / self.iters
        return self.factor * (1.0 - alpha) + alpha


class Schedule:
    """Base class: ``base_lr`` times the subclass's ``_main(iteration)`` times the warm-up."""

    def __init__(self, base_lr: float, warmup: Warmup | None = None) -> None:
        if base_lr <= 0:
            raise ValueError(f"base learning rate must be positive, got {base_lr}")
        self.base_lr = base_lr
        self.warmup = warmup
        self.warmup_ended_at: int | None = None  # set by observe_train (until_train_err)

    def _main(self, iteration: int) -> float:
        """The schedule's factor at ``iteration`` before warm-up (1.0 = ``base_lr``)."""
        raise NotImplementedError(f"{type(self).__name__} must define _main")

    def lr_at(self, iteration: int) -> float:
        """Learning rate for 0-based optimizer step ``iteration``."""
        scale = self.warmup.scale(iteration, self.warmup_ended_at) if self.warmup else 1.0
        return self.base_lr * self._main(iteration) * scale

    def apply(self, optimizer: torch.optim.Optimizer, iteration: int) -> float:
        """Write ``lr_at(iteration)`` into every parameter group of ``optimizer``; returns it."""
        lr = self.lr_at(iteration)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def step(self, metrics: Mapping[str, float]) -> None:
        """Receive the metrics of an evaluation; only metric-driven schedules use them."""

    def observe_train(self, iteration: int, metrics: Mapping[str, float]) -> None:
        """Receive a training log (means over the log period, after ``iteration`` steps): ends
        an ``until_train_err`` warm-up once ``top1_err`` is below its threshold."""
        threshold = self.warmup.until_train_err if self.warmup else None
        if threshold is None or self.warmup_ended_at is not None:
            return
        if "top1_err" not in metrics:
            raise KeyError(
                f"the warm-up ends on the training error, but the logged training metrics are "
                f"{sorted(metrics)}: drop warmup_until_train_err or train a classifier"
            )
        if metrics["top1_err"] < threshold:
            self.warmup_ended_at = iteration

    def state_dict(self) -> dict[str, Any]:
        """State that changes during training, saved in checkpoints."""
        return {"warmup_ended_at": self.warmup_ended_at}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``state_dict()`` (checkpoints from before the key existed have none)."""
        self.warmup_ended_at = state.get("warmup_ended_at")


class StepSchedule(Schedule):
    """Multiply by ``gamma`` at each milestone: ``base_lr * gamma ** (milestones passed)``.

    Milestones are iterations; the paper's CIFAR-10 recipe is milestones (32000, 48000) with
    gamma 0.1 and 64k iterations (section 4.2). Step ``m`` itself already uses the lower rate.
    """

    def __init__(
        self,
        base_lr: float,
        milestones: Sequence[int],
        *,
        gamma: float = 0.1,
        warmup: Warmup | None = None,
    ) -> None:
        super().__init__(base_lr, warmup)
        if list(milestones) != sorted(milestones):
            raise ValueError(f"milestones must be increasing, got {list(milestones)}")
        self.milestones = list(milestones)
        self.gamma = gamma

    def _main(self, iteration: int) -> float:
        passed = sum(1 for milestone in self.milestones if iteration >= milestone)
        return self.gamma**passed


class CosineSchedule(Schedule):
    """Half-cosine from ``base_lr`` at iteration 0 to ``final_lr`` at ``max_iters``.

    ``lr = final + (base - final) * (1 + cos(pi * i / max_iters)) / 2``, held at ``final_lr``
    after ``max_iters``.
    """

    def __init__(
        self,
        base_lr: float,
        max_iters: int,
        *,
        final_lr: float = 0.0,
        warmup: Warmup | None = None,
    ) -> None:
        super().__init__(base_lr, warmup)
        if max_iters <= 0:
            raise ValueError(f"cosine schedule needs max_iters > 0, got {max_iters}")
        self.max_iters = max_iters
        self.final_lr = final_lr

    def _main(self, iteration: int) -> float:
        progress = min(iteration, self.max_iters) / self.max_iters
        final = self.final_lr / self.base_lr
        return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


class PlateauSchedule(Schedule):
    """Divide by 10 (``gamma``) when an evaluation metric stops improving (the paper, section 3.4).

    After each evaluation, ``metric`` improves when it beats the best value so far by more than
    ``min_delta`` (lower is better in ``mode="min"``, e.g. ``top1_err``; higher in ``"max"``, e.g.
    ``AP``). As in ``torch.optim.lr_scheduler.ReduceLROnPlateau``, the rate is reduced once the
    number of evaluations in a row without improvement exceeds ``patience``, and that count then
    restarts. The best value, the count and the number of reductions are saved in checkpoints.
    """

    def __init__(
        self,
        base_lr: float,
        *,
        metric: str,
        mode: Literal["min", "max"] = "min",
        patience: int = 0,
        min_delta: float = 0.0,
        gamma: float = 0.1,
        warmup: Warmup | None = None,
    ) -> None:
        super().__init__(base_lr, warmup)
        if mode not in ("min", "max"):
            raise ValueError(f"plateau mode must be 'min' or 'max', got {mode!r}")
        self.metric = metric
        self.mode = mode
        self.patience = patience
        self.min_delta = min_delta
        self.gamma = gamma
        self.best: float | None = None
        self.bad_evals = 0
        self.reductions = 0

    def _main(self, iteration: int) -> float:
        return self.gamma**self.reductions

    def step(self, metrics: Mapping[str, float]) -> None:
        """Count an evaluation; reduce the rate after more than ``patience`` without improvement."""
        if self.metric not in metrics:
            raise KeyError(
                f"plateau schedule watches {self.metric!r}, but the evaluation returned "
                f"{sorted(metrics)}: set the schedule's metric to one of these"
            )
        value = float(metrics[self.metric])
        sign = 1.0 if self.mode == "min" else -1.0
        if self.best is None or sign * (self.best - value) > self.min_delta:
            self.best = value
            self.bad_evals = 0
            return
        self.bad_evals += 1
        if self.bad_evals > self.patience:
            self.reductions += 1
            self.bad_evals = 0

    def state_dict(self) -> dict[str, Any]:
        """The plateau tracking state, saved in checkpoints so that a resumed run keeps it."""
        return {
            **super().state_dict(),
            "best": self.best,
            "bad_evals": self.bad_evals,
            "reductions": self.reductions,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what ``state_dict`` saved."""
        super().load_state_dict(state)
        self.best = state["best"]
        self.bad_evals = int(state["bad_evals"])
        self.reductions = int(state["reductions"])
