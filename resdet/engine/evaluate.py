"""The inference loop that feeds any evaluator (classification, COCO, VOC)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal, Protocol

import torch
from torch import nn

from resdet.data.loader import prepare_batch

AmpMode = Literal["off", "bf16", "fp16"]
AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, amp: AmpMode) -> torch.autocast:
    """``torch.autocast`` for ``amp`` (``"off"``: a disabled one) on ``device``'s type."""
    dtype = AMP_DTYPES[amp]
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


class Evaluator(Protocol):
    """What ``inference`` needs from an evaluator (docs/design.md#evaluators)."""

    def reset(self) -> None:
        """Forget previously processed batches."""

    def process(self, targets: Any, outputs: Any) -> None:
        """Take one batch's targets and the model's predictions for it."""

    def compute(self) -> dict[str, float]:
        """Gather across ranks and return the metrics."""


def inference(
    model: nn.Module,
    loader: Iterable[tuple[Any, Any]],
    evaluator: Evaluator,
    device: torch.device,
    amp: AmpMode = "off",
    channels_last: bool = False,
) -> dict[str, float]:
    """Run ``model`` in eval mode over ``loader`` and return ``evaluator.compute()``.

    ``loader`` yields ``(images, targets)``: a Tensor [B,3,H,W] (or a ten-crop [B,10,3,H,W],
    which the model handles) or a list of [3,H,W] detection images, with targets of the same
    batch. Images and targets are moved to ``device`` (4-D image batches to channels-last when
    ``channels_last``); ``evaluator.process(targets, outputs)`` receives the predictions on
    ``device``: logits [B, C] or torchvision's list of ``{boxes [N,4] xyxy pixels, labels,
    scores[, masks]}``. Runs under ``torch.inference_mode`` and autocast (``amp``); the model's
    train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    evaluator.reset()
    try:
        with torch.inference_mode(), autocast(device, amp):
            for batch in loader:
                images, targets = prepare_batch(batch, device, channels_last=channels_last)
                evaluator.process(targets, model(images))
    finally:
        model.train(was_training)
    return evaluator.compute()
