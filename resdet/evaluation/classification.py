"""Classification evaluation: top-k error across ranks, the paper's 10-crop and its
fully-convolutional multi-scale testing."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn


class ClassificationEvaluator:
    """Top-k error (fractions) over everything processed, summed over ranks in compute()."""

    def __init__(self, topk: Sequence[int] = (1, 5)) -> None:
        if not topk or min(topk) < 1:
            raise ValueError(f"topk must hold positive ranks such as (1, 5), got {tuple(topk)}")
        self.topk = tuple(topk)
        self._correct = torch.zeros(len(self.topk), dtype=torch.int64)
        self._count = 0

    def reset(self) -> None:
        """Forget everything processed so far."""
        self._correct.zero_()
        self._count = 0

    @torch.no_grad()
    def process(self, targets: torch.Tensor, outputs: torch.Tensor) -> None:
        """Add one batch: ``targets`` [B] int64 class indices, ``outputs`` [B, C] scores
        (logits, probabilities or log-probabilities: only their order matters)."""
        if outputs.ndim != 2 or targets.shape != outputs.shape[:1]:
            raise ValueError(
                f"expected targets [B] and outputs [B, C], got {tuple(targets.shape)} and "
                f"{tuple(outputs.shape)}"
            )
        # With C <= k classes the label is always among the top k, so k is capped at C.
        ranked = outputs.topk(min(max(self.topk), outputs.shape[1]), dim=1).indices
        hits = ranked == targets.to(ranked.device)[:, None]
        for i, k in enumerate(self.topk):
            self._correct[i] += int(hits[:, :k].any(dim=1).sum())
        self._count += len(targets)

    def metric_names(self) -> list[str]:
        """The keys ``compute`` returns."""
        return [f"top{k}_err" for k in self.topk]

    def compute(self) -> dict[str, float]:
        """``{"top1_err": e1, "top5_err": e5}`` (one key per k, fractions) over all ranks."""
        counts = torch.cat([self._correct, torch.tensor([self._count])])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # NCCL reduces only CUDA tensors.
            device = "cuda" if dist.get_backend() == "nccl" else "cpu"
            counts = counts.to(device)
            dist.all_reduce(counts)
            counts = counts.cpu()
        total = int(counts[-1])
        if total == 0:
            raise RuntimeError(
                "ClassificationEvaluator.compute() before any process(): nothing to evaluate"
            )
        return {f"top{k}_err": 1.0 - int(counts[i]) / total for i, k in enumerate(self.topk)}


# Paper section 3.4: "the fully-convolutional form ... average the scores at multiple scales
# (images are resized such that the shorter side is in {224, 256, 384, 480, 640})".
PAPER_TEST_SCALES = (224, 256, 384, 480, 640)


class MultiScale(nn.Module):
    """Averages a classifier applied fully-convolutionally to whole images at several scales.

    ``forward(views)`` takes a list of [B, 3, H_s, W_s] batches, one per scale (the same
    images resized; the network's global average pooling takes any size), and returns the log
    of the mean of their softmax probabilities, [B, C], like ``TenCrop``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        if not isinstance(views, (list, tuple)) or not views:
            raise ValueError(
                "MultiScale takes a non-empty list of [B, 3, H, W] batches, one per scale"
            )
        probabilities = [self.model(view).float().softmax(dim=1) for view in views]
        return torch.stack(probabilities).mean(dim=0).log()


class TenCrop(nn.Module):
    """Averages a classifier over the paper's 10 crops (4 corners + centre and their flips).

    ``forward(images)`` takes [B, 10, 3, H, W] and returns the log of the mean of the crops'
    softmax probabilities, [B, C]: log-probabilities behave like logits (their softmax is the
    averaged probability and their order gives top-k). Plain [B, 3, H, W] batches are passed
    to the model unchanged (its logits).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim == 4:
            return self.model(images)
        if images.ndim != 5:
            raise ValueError(
                "TenCrop takes [B, crops, 3, H, W] or [B, 3, H, W] images, "
                f"got {tuple(images.shape)}"
            )
        batch, crops = images.shape[:2]
        logits = self.model(images.flatten(0, 1))
        probabilities = logits.float().softmax(dim=1).view(batch, crops, -1).mean(dim=1)
        return probabilities.log()
