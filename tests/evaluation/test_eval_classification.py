"""Top-k error and 10-crop averaging on hand-made scores."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from resdet.evaluation import PAPER_TEST_SCALES, ClassificationEvaluator, MultiScale, TenCrop


def test_topk_errors_by_hand() -> None:
    # Six classes; the rank of the true class in each row is 1, 2, 6 and 5.
    outputs = torch.tensor(
        [
            [9.0, 1, 2, 3, 4, 5],  # label 0: top-1
            [1.0, 9, 8, 3, 4, 5],  # label 2: second
            [6.0, 5, 4, 3, 2, 1],  # label 5: last (6th)
            [1.0, 2, 3, 4, 5, 6],  # label 1: 5th
        ]
    )
    targets = torch.tensor([0, 2, 5, 1])
    evaluator = ClassificationEvaluator(topk=(1, 5))
    evaluator.process(targets[:2], outputs[:2])
    evaluator.process(targets[2:], outputs[2:])
    # top-1 right on row 0 only: 3/4 wrong; top-5 misses only row 2: 1/4 wrong.
    assert evaluator.compute() == {"top1_err": 0.75, "top5_err": 0.25}
    evaluator.reset()
    evaluator.process(targets[:1], outputs[:1])
    assert evaluator.compute() == {"top1_err": 0.0, "top5_err": 0.0}


def test_fewer_classes_than_k_is_never_a_top_k_miss() -> None:
    evaluator = ClassificationEvaluator(topk=(1, 5))
    evaluator.process(torch.tensor([2, 0]), torch.tensor([[3.0, 2, 1], [0.0, 1, 2]]))
    assert evaluator.compute() == {"top1_err": 1.0, "top5_err": 0.0}


def test_compute_before_process_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="nothing to evaluate"):
        ClassificationEvaluator().compute()


class _CropLogits(nn.Module):
    """Logits [N, 3] that depend only on each crop's first pixel value."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        v = images[:, 0, 0, 0]
        return torch.stack([v, -v, v * v], dim=1)


def test_ten_crop_averages_softmax_probabilities() -> None:
    images = torch.randn(2, 10, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    model = TenCrop(_CropLogits())
    expected = _CropLogits()(images.flatten(0, 1)).softmax(dim=1).view(2, 10, 3).mean(dim=1)
    torch.testing.assert_close(model(images).exp(), expected)
    plain = images[:, 0]
    torch.testing.assert_close(model(plain), _CropLogits()(plain))


class _PooledLogits(nn.Module):
    """Logits [N, 3] from the global mean of each image: any input size, as a ResNet."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        v = images.mean(dim=(1, 2, 3))
        return torch.stack([v, -v, v * v], dim=1)


def test_multi_scale_averages_softmax_probabilities_over_scales() -> None:
    assert PAPER_TEST_SCALES == (224, 256, 384, 480, 640)  # paper section 3.4
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(2, 3, s, s + 3, generator=g) for s in (4, 6, 9)]
    expected = torch.stack([_PooledLogits()(v).softmax(dim=1) for v in views]).mean(dim=0)
    torch.testing.assert_close(MultiScale(_PooledLogits())(views).exp(), expected)
    with pytest.raises(ValueError, match="list of \\[B, 3, H, W\\] batches"):
        MultiScale(_PooledLogits())(views[0])
