"""An exponential moving average of the weights, kept beside the trained model (``train.ema``).

As torchvision's classification references (``--model-ema``), timm and mmdetection's
``EMAHook`` do: after every optimizer step ``ema = d * ema + (1 - d) * weights`` for every
floating-point parameter and buffer (BN statistics included), integer buffers copied. The decay
warms up as TensorFlow's ``ExponentialMovingAverage(num_updates=...)``:
``d = min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so that the early average is not
dominated by the random initialisation.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from resdet.engine import distributed
from resdet.engine.hooks import Hook

if TYPE_CHECKING:
    from resdet.engine.trainer import Trainer


def ema_decay(decay: float, updates: int) -> float:
    """The decay of update number ``updates + 1``, warmed up."""
    return min(decay, (1 + updates) / (10 + updates))


class ModelEMA(Hook):
    """Keeps ``model``, an averaged copy of the trainer's model, in eval mode on its device.

    Its state (the averaged tensors and the update count) travels in checkpoints, so a resumed
    run continues the same average. ``model`` exists from ``before_train`` on.
    """

    def __init__(self, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"train.ema is a decay in (0, 1), e.g. 0.9998, got {decay}")
        self.decay = decay
        self.updates = 0
        self.model: nn.Module | None = None
        self._pending: Mapping[str, Any] | None = None

    def before_train(self, trainer: Trainer) -> None:
        if self.model is None:
            self.model = copy.deepcopy(trainer.model).eval().requires_grad_(False)
        if self._pending is not None:
            self.model.load_state_dict(self._pending["weights"])
            self.updates = int(self._pending["updates"])
            self._pending = None
        # The optimizer and BN update these tensors in place, so the pairs are found once.
        averaged, trained = self.model.state_dict(), trainer.model.state_dict()
        floating = [name for name, value in trained.items() if value.dtype.is_floating_point]
        integer = [name for name in trained if name not in floating]
        self._floating = ([averaged[n] for n in floating], [trained[n] for n in floating])
        self._integer = [(averaged[n], trained[n]) for n in integer]

    @torch.no_grad()
    def after_step(self, trainer: Trainer) -> None:
        d = ema_decay(self.decay, self.updates)
        torch._foreach_lerp_(*self._floating, 1 - d)  # d * ema + (1 - d) * weights, one launch
        for average, value in self._integer:
            average.copy_(value)
        self.updates += 1
        if distributed.is_distributed():
            self._share_buffers()

    def _share_buffers(self) -> None:
        """Rank 0's averaged buffers on every rank: each rank's BN statistics follow its own
        batches, so their averages would drift apart (DDP broadcasts rank 0's buffers to the
        model the same way). Parameters are equal on every rank already."""
        assert self.model is not None
        buffers = [b for b in self.model.buffers() if b.dtype.is_floating_point]
        if buffers:
            flat = torch.cat([b.flatten() for b in buffers])
            torch.distributed.broadcast(flat, src=0)
            for buffer, shared in zip(
                buffers, flat.split([b.numel() for b in buffers]), strict=True
            ):
                buffer.copy_(shared.view_as(buffer))

    def state_dict(self) -> dict[str, Any]:
        if self.model is None:  # saved before training started: nothing averaged yet
            return dict(self._pending or {})
        return {"weights": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            self._pending = state
