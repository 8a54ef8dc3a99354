"""A tiny dataset, model and evaluator that follow docs/design.md, for the engine tests."""

from __future__ import annotations

import os
import signal

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset


class ToyImages(Dataset):
    """``size`` noise images [3,8,8]; channel 0 is shifted by +0.5 for label 1, -0.5 for label 0.

    With an ``(index, seed)`` key the sample gets noise and a flip drawn from
    ``np.random.default_rng(seed)``, as real datasets augment (docs/design.md).
    """

    def __init__(self, size: int = 64, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.labels = rng.integers(0, 2, size).astype(np.int64)
        self.images = rng.standard_normal((size, 3, 8, 8)).astype(np.float32)
        self.images[:, 0] += (self.labels[:, None, None] - 0.5).astype(np.float32)
        self.loaded: list[int] = []

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        self.loaded.append(index)
        image = self.images[index]
        if seed is not None:
            rng = np.random.default_rng(seed)
            image = image + 0.1 * rng.standard_normal(image.shape).astype(np.float32)
            if rng.random() < 0.5:
                image = image[:, :, ::-1]
        return torch.from_numpy(np.ascontiguousarray(image)), int(self.labels[index])


class ToyNet(nn.Module):
    """conv-BN-ReLU-pool-dropout-linear classifier following the model contract.

    ``nan_at``, ``interrupt_at`` and ``sigterm_at`` (1-based training forward calls) make that
    call return a NaN loss, raise ``KeyboardInterrupt`` after drawing its dropout mask, or send
    SIGTERM to this process.
    """

    def __init__(
        self,
        nan_at: int | None = None,
        interrupt_at: int | None = None,
        sigterm_at: int | None = None,
        extra_losses: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(8, 2)
        self.nan_at = nan_at
        self.interrupt_at = interrupt_at
        self.sigterm_at = sigterm_at
        self.extra_losses = extra_losses or {}
        self.calls = 0

    def forward(
        self, images: torch.Tensor, targets: torch.Tensor | None = None
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        features = torch.relu(self.bn(self.conv(images))).mean(dim=(2, 3))
        logits = self.fc(self.dropout(features))
        if not self.training:
            return logits
        self.calls += 1
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        if self.calls == self.sigterm_at:
            os.kill(os.getpid(), signal.SIGTERM)
        loss = nn.functional.cross_entropy(logits.float(), targets)
        if self.calls == self.nan_at:
            loss = loss * float("nan")
        outputs = {
            "loss_cls": loss,
            "top1_err": (logits.argmax(1) != targets).float().mean().detach(),
        }
        for name, value in self.extra_losses.items():
            outputs[name] = torch.tensor(value)
        return outputs


class ToyAccuracy:
    """Evaluator (docs/design.md) giving the top-1 error of logits [B, 2]."""

    def reset(self) -> None:
        self.wrong = 0
        self.total = 0

    def process(self, targets: torch.Tensor, outputs: torch.Tensor) -> None:
        self.wrong += int((outputs.argmax(1) != targets).sum())
        self.total += len(targets)

    def compute(self) -> dict[str, float]:
        return {"top1_err": self.wrong / self.total}
