"""The classification model contract around a registry network."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Classifier(nn.Module):
    """Softmax classifier over any registry network (``net`` maps [B,3,H,W] to logits [B,C]).

    Training mode: ``forward(images, labels)`` returns ``{"loss_cls": cross-entropy,
    "top1_err": fraction of wrong top-1 predictions (detached, logged only)}``.
    Eval mode: ``forward(images)`` returns logits [B, C].
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(
        self, images: torch.Tensor, targets: torch.Tensor | None = None
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        logits = self.net(images)
        if not self.training:
            return logits
        if targets is None:
            raise ValueError("Classifier in training mode needs targets (labels [B])")
        loss = F.cross_entropy(logits, targets)
        top1_err = (logits.detach().argmax(1) != targets).float().mean()
        return {"loss_cls": loss, "top1_err": top1_err}
