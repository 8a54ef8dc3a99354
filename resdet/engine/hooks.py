"""Extension points of the training loop, in the shape of detectron2's ``HookBase``.

``Trainer.fit`` calls, for every hook in order: ``before_train`` once; ``before_step`` and
``after_step`` around each optimizer step; ``on_train_record`` with each train record before
it is written (a hook may add entries); ``after_eval`` with each evaluation's metrics; and
``after_train`` once at the end. ``state_dict``/``load_state_dict`` travel in checkpoints, so a
resumed run continues each hook where it stopped. Every rank calls every hook at the same
points, so a hook may use collectives.

The trainer installs ``ScheduleFeedback``, then the caller's hooks, then
``PeriodicCheckpoint`` and (with an ``evaluate`` function) ``Evaluation``: whatever the
caller's hooks update after a step is what the checkpoint keeps and the evaluation sees.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from torch import nn

from resdet.engine import distributed
from resdet.engine.schedule import Schedule

if TYPE_CHECKING:
    from resdet.engine.trainer import Trainer


class Hook:
    """Base class: every method does nothing; override the ones a feature needs."""

    @property
    def name(self) -> str:
        """The key of this hook's state in checkpoints, unique among a trainer's hooks."""
        return type(self).__name__

    def before_train(self, trainer: Trainer) -> None:
        """Once, before the first step of this ``fit`` (after a resume, too)."""

    def before_step(self, trainer: Trainer) -> None:
        """Before optimizer step ``trainer.iteration`` (0-based)."""

    def after_step(self, trainer: Trainer) -> None:
        """After a step; ``trainer.iteration`` counts the completed steps."""

    def on_train_record(self, trainer: Trainer, record: dict[str, Any]) -> None:
        """A train record (means over the log period) before it is written; may add entries."""

    def after_eval(self, trainer: Trainer, metrics: Mapping[str, float]) -> None:
        """An evaluation's metrics, the same on every rank."""

    def after_train(self, trainer: Trainer) -> None:
        """Once, after the last step (not after an interruption or an error)."""

    def state_dict(self) -> dict[str, Any]:
        """Plain data saved in checkpoints; empty for a hook without state."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``state_dict()``; checkpoints without this hook's state give ``{}``."""


def due(iteration: int, period: int | None, final: bool) -> bool:
    """Whether a periodic action runs after ``iteration`` steps: every ``period`` and at the end."""
    return final or (period is not None and iteration % period == 0)


def check_period(name: str, period: int | None) -> None:
    """A period is ``None`` (only at the end) or at least 1 iteration."""
    if period is not None and period < 1:
        raise ValueError(f"{name} must be >= 1 (or None: only at the end), got {period}")


class ScheduleFeedback(Hook):
    """Feeds the schedule what it reacts to: train records (the paper's warm-up that ends once
    the training error is below 80%) and evaluation metrics (divide by 10 on a plateau)."""

    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule

    def on_train_record(self, trainer: Trainer, record: dict[str, Any]) -> None:
        self.schedule.observe_train(trainer.iteration, record)

    def after_eval(self, trainer: Trainer, metrics: Mapping[str, float]) -> None:
        self.schedule.step(metrics)


class PeriodicCheckpoint(Hook):
    """Saves ``last.pt`` every ``period`` steps (``None``: never in between) and at the end."""

    def __init__(self, period: int | None) -> None:
        check_period("checkpoint_period", period)
        self.period = period

    def after_step(self, trainer: Trainer) -> None:
        if due(trainer.iteration, self.period, trainer.at_end):
            trainer.save_checkpoint()


class Evaluation(Hook):
    """Runs ``evaluate(model)`` every ``period`` steps (``None``: only at the end) on every rank.

    Placed after ``PeriodicCheckpoint``: when both are due, the trained state is saved first (an
    evaluation can fail: out of memory, a bad annotation file) and saved again with the results.
    """

    def __init__(
        self, evaluate: Callable[[nn.Module], Mapping[str, float]], period: int | None
    ) -> None:
        check_period("eval_period", period)
        self.evaluate = evaluate
        self.period = period

    def after_step(self, trainer: Trainer) -> None:
        if due(trainer.iteration, self.period, trainer.at_end):
            self._run(trainer)

    def after_train(self, trainer: Trainer) -> None:
        if trainer.evaluated_at != trainer.iteration:
            # Resumed from the checkpoint written just before a final evaluation that did not
            # finish: evaluate now.
            self._run(trainer)

    def _run(self, trainer: Trainer) -> None:
        saved_first = trainer.saved_at == trainer.iteration
        trainer.check_finite()
        metrics = {key: float(value) for key, value in self.evaluate(trainer.model).items()}
        trainer.train_model.train()
        trainer.record_eval(metrics)
        if saved_first or trainer.at_end:
            trainer.save_checkpoint()  # this iteration's checkpoint, now with the results


class CountedImages(Hook):
    """Adds ``key`` to train records: the run's total of an image count, summed over ranks.

    ``count`` returns this rank's count in this process so far: the unreadable images that
    the image-folder and detection sets replaced (their ``skipped``, counted across their
    loading workers; key ``skipped_images``), or the images that the device's JPEG decoder
    refused (``data.device_input.cpu_decodes``; key ``cpu_decoded_images``). A resumed run
    adds the total of the last train record before its checkpoint.
    """

    def __init__(self, key: str, count: Callable[[], int]) -> None:
        self.key = key
        self.count = count
        self.before_resume = 0
        self.total = 0

    @property
    def name(self) -> str:
        return self.key

    def on_train_record(self, trainer: Trainer, record: dict[str, Any]) -> None:
        counted = distributed.all_reduce_sum({self.key: float(self.count())})
        self.total = self.before_resume + round(counted[self.key])
        record[self.key] = self.total

    def state_dict(self) -> dict[str, Any]:
        return {"total": self.total}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.before_resume = self.total = int(state.get("total", 0))


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of ``metric`` is better: error rates (``top1_err``) and losses
    are, average precision and recall (``bbox/AP``, ``segm/AP50``, ``voc/mAP``, ``bbox/AR100``)
    are not. ValueError for a name that is neither."""
    leaf = metric.rsplit("/", 1)[-1]
    if leaf.endswith("err") or "loss" in leaf:
        return True
    if leaf.startswith(("AP", "AR", "mAP")):
        return False
    raise ValueError(
        f"train.save_best={metric!r}: cannot tell whether higher or lower is better; use an "
        "error (top1_err, top5_err) or an AP/AR metric (bbox/AP, segm/AP50, voc/mAP, ...)"
    )


class BestCheckpoint(Hook):
    """Writes ``best.pt`` at each evaluation that improves ``metric`` (detectron2's
    ``BestCheckpointer``, mmdetection's ``save_best``) and records ``{"type": "best", "iter",
    "metric", "value"}`` in metrics.jsonl. ``best.pt`` is a checkpoint like ``last.pt``: it
    evaluates, predicts and resumes the same way."""

    def __init__(self, metric: str) -> None:
        self.metric = metric
        self.lower = lower_is_better(metric)
        self.best: float | None = None
        self.best_at: int | None = None

    def after_eval(self, trainer: Trainer, metrics: Mapping[str, float]) -> None:
        if self.metric not in metrics:
            raise ValueError(
                f"train.save_best={self.metric!r} is not a metric of this run's evaluation, "
                f"which reports {sorted(metrics)}"
            )
        value = metrics[self.metric]
        if math.isnan(value):
            return
        if self.best is not None and (value >= self.best if self.lower else value <= self.best):
            return
        self.best, self.best_at = value, trainer.iteration
        trainer.save_checkpoint(trainer.out_dir / "best.pt")
        trainer.metrics_log.write(
            {"type": "best", "iter": trainer.iteration, "metric": self.metric, "value": value}
        )

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_at": self.best_at}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best, self.best_at = state.get("best"), state.get("best_at")
