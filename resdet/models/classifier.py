"""The classification model contract around a registry network, with the modern recipes'
training options: label smoothing, binary cross-entropy, mixup and cutmix."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2


@dataclass(frozen=True)
class ClsLoss:
    """The training loss (config ``loss``).

    ``ce``: softmax cross-entropy, torchvision's with ``label_smoothing``. ``bce``: one binary
    cross-entropy per class (mean over batch and classes), as "ResNet strikes back" trains and
    timm's ``BinaryCrossEntropy`` computes: targets smoothed to ``1 - s + s/K`` and ``s/K``,
    then with ``bce_target_thresh`` > 0 set to 1 where above it and 0 elsewhere.
    """

    kind: Literal["ce", "bce"] = "ce"
    label_smoothing: float = 0.0
    bce_target_thresh: float = 0.0  # 0: soft targets

    def __post_init__(self) -> None:
        if self.kind not in ("ce", "bce"):
            raise ValueError(f"loss.kind must be ce or bce, got {self.kind!r}")
        if not 0 <= self.label_smoothing < 1 or not 0 <= self.bce_target_thresh < 1:
            raise ValueError(
                f"label_smoothing and bce_target_thresh are in [0, 1), got "
                f"{self.label_smoothing}, {self.bce_target_thresh}"
            )


@dataclass(frozen=True)
class BatchMix:
    """Mixup and cutmix of training batches (config ``data.mix``), torchvision.transforms.v2's.

    With probability ``prob`` a batch is mixed: by cutmix with probability ``switch_prob`` when
    both alphas are set, else by the one that is. Labels become the mixed one-hot targets.
    """

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    switch_prob: float = 0.5
    prob: float = 1.0

    def __post_init__(self) -> None:
        if min(self.mixup_alpha, self.cutmix_alpha) < 0:
            raise ValueError("mixup_alpha and cutmix_alpha are >= 0 (0: off)")
        if not (0 <= self.switch_prob <= 1 and 0 <= self.prob <= 1):
            raise ValueError("switch_prob and prob are probabilities")

    @property
    def active(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)


def classification_loss(logits: torch.Tensor, targets: torch.Tensor, loss: ClsLoss) -> torch.Tensor:
    """``loss`` of logits [B, K] against labels [B] (int64) or soft targets [B, K]."""
    if loss.kind == "ce":
        return F.cross_entropy(logits, targets, label_smoothing=loss.label_smoothing)
    num_classes = logits.shape[1]
    dense = targets if targets.is_floating_point() else F.one_hot(targets, num_classes)
    dense = dense.to(logits.dtype)
    if loss.label_smoothing:
        dense = dense * (1 - loss.label_smoothing) + loss.label_smoothing / num_classes
    if loss.bce_target_thresh:
        dense = (dense > loss.bce_target_thresh).to(logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, dense)


class Classifier(nn.Module):
    """Softmax classifier over any registry network (``net`` maps [B,3,H,W] to logits [B,C]).

    Training mode: ``forward(images, labels)`` mixes the batch (``mix``) and returns
    ``{"loss_cls": loss (``loss``), "top1_err": fraction of top-1 predictions that miss the
    largest share of each (mixed) target (detached, logged only)}``. Mixing draws from torch's
    generator, which checkpoints keep, so resumed runs mix alike.
    Eval mode: ``forward(images)`` returns logits [B, C].
    """

    def __init__(
        self, net: nn.Module, *, loss: ClsLoss = ClsLoss(), mix: BatchMix = BatchMix()
    ) -> None:
        super().__init__()
        self.net = net
        self.loss = loss
        self.mix = mix
        self._mixers: dict[str, v2.Transform] = {}
        if mix.active:
            classes = net.fc.out_features
            if mix.mixup_alpha:
                self._mixers["mixup"] = v2.MixUp(alpha=mix.mixup_alpha, num_classes=classes)
            if mix.cutmix_alpha:
                self._mixers["cutmix"] = v2.CutMix(alpha=mix.cutmix_alpha, num_classes=classes)

    def forward(
        self, images: torch.Tensor, targets: torch.Tensor | None = None
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        if not self.training:
            return self.net(images)
        if targets is None:
            raise ValueError("Classifier in training mode needs targets (labels [B])")
        if self._mixers:
            images, targets = self._mixed(images, targets)
        logits = self.net(images)
        loss = classification_loss(logits, targets, self.loss)
        labels = targets.argmax(1) if targets.is_floating_point() else targets
        top1_err = (logits.detach().argmax(1) != labels).float().mean()
        return {"loss_cls": loss, "top1_err": top1_err}

    def _mixed(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch and its targets [B, K], mixed as ``mix`` draws (or one-hot unmixed)."""
        draws = torch.rand(2).tolist()
        if draws[0] >= self.mix.prob:
            return images, F.one_hot(labels, self.net.fc.out_features).float()
        if len(self._mixers) == 2:
            kind = "cutmix" if draws[1] < self.mix.switch_prob else "mixup"
        else:
            (kind,) = self._mixers
        return self._mixers[kind](images, labels)
