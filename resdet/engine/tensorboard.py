"""TensorBoard curves of a run (``train.tensorboard``): event files in ``RUN/tb/``, rank 0 only.

What metrics.jsonl records, as scalars against the iteration: ``train/<entry>`` for every
number of a train record (losses, lr, img/s, ...) and ``eval/<metric>`` for every evaluation.
Needs the ``tensorboard`` package (``pip install "resdet[tensorboard]"``); ``resdet plot``
stays the tool for the paper's figures.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resdet.engine import distributed
from resdet.engine.hooks import Hook

if TYPE_CHECKING:
    from resdet.engine.trainer import Trainer

NOT_SCALARS = ("type", "iter", "epoch")


class TensorBoard(Hook):
    """Writes the run's records as TensorBoard scalars under ``log_dir``.

    A resumed run purges the events after its checkpoint's iteration, as metrics.jsonl drops
    its records, so the curves continue as if the run had never stopped.
    """

    def __init__(self, log_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            raise ImportError(
                f"train.tensorboard needs the tensorboard package ({error}): "
                'pip install "resdet[tensorboard]"'
            ) from error
        self._writer_class = SummaryWriter
        self.log_dir = Path(log_dir)
        self.writer: Any = None

    def before_train(self, trainer: Trainer) -> None:
        if distributed.is_main() and self.writer is None:
            self.writer = self._writer_class(str(self.log_dir), purge_step=trainer.iteration + 1)

    def on_train_record(self, trainer: Trainer, record: dict[str, Any]) -> None:
        self._scalars("train", record, trainer.iteration)

    def after_eval(self, trainer: Trainer, metrics: Mapping[str, float]) -> None:
        self._scalars("eval", metrics, trainer.iteration)

    def after_train(self, trainer: Trainer) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _scalars(self, group: str, values: Mapping[str, Any], step: int) -> None:
        if self.writer is None:
            return
        for key, value in values.items():
            if key not in NOT_SCALARS and isinstance(value, int | float):
                self.writer.add_scalar(f"{group}/{key}", value, step)
        self.writer.flush()
