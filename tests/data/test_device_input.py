"""Tests of resdet.data.device_input: the batch's last step, on the training device."""

import numpy as np
import torch
from torch.utils.data import default_collate

from resdet.data import cls_transforms as T
from resdet.data.device_input import RawImages, to_model_input
from resdet.data.loader import prepare_batch


def raw_samples(count: int, shape=(3, 6, 5)) -> list[RawImages]:
    rng = np.random.default_rng(0)
    return [
        RawImages(
            torch.from_numpy(rng.integers(0, 256, size=shape).astype(np.uint8)),
            torch.from_numpy(rng.normal(0, 0.02, size=3).astype(np.float32)),
        )
        for _ in range(count)
    ]


def test_normalised_on_the_device_as_on_the_cpu():
    samples = raw_samples(4)
    batch = default_collate(samples)
    assert isinstance(batch, RawImages) and batch.pixels.shape == (4, 3, 6, 5)
    out = batch.to_model_input()
    for image, sample in zip(out, samples, strict=True):
        hwc = sample.pixels.permute(1, 2, 0).numpy()
        expected = T.normalized_chw(hwc, sample.shift.numpy())
        torch.testing.assert_close(image, expected, rtol=1e-5, atol=1e-5)


def test_views_share_their_image_offset_and_channels_last_is_kept():
    samples = raw_samples(2, shape=(10, 3, 4, 4))  # ten crops per image
    views = default_collate(samples).to_model_input()
    assert views.shape == (2, 10, 3, 4, 4) and views.dtype == torch.float32
    first = RawImages(samples[1].pixels[3][None], samples[1].shift[None]).to_model_input()
    torch.testing.assert_close(views[1, 3], first[0])
    flat = default_collate(raw_samples(2)).to_model_input(channels_last=True)
    assert flat.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(flat, default_collate(raw_samples(2)).to_model_input())


def test_prepare_batch_keeps_the_raw_type_through_the_move():
    labels = torch.tensor([1, 0])
    images, targets = prepare_batch((default_collate(raw_samples(2)), labels), torch.device("cpu"))
    assert images.dtype == torch.float32 and images.shape == (2, 3, 6, 5)
    assert torch.equal(targets, labels)
    detection = [
        torch.full((3, 2, 2), 255, dtype=torch.uint8),
        torch.zeros(3, 4, 1, dtype=torch.uint8),
    ]
    floats = to_model_input(detection)
    assert [f.dtype for f in floats] == [torch.float32] * 2 and floats[0].max() == 1.0
    ready = torch.rand(2, 3, 4, 4)
    assert to_model_input(ready) is ready
