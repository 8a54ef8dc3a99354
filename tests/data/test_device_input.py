"""Tests of resdet.data.device_input: the batch's last step, on the training device."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from resdet.data import cls_transforms as T
from resdet.data.device_input import (
    EncodedImage,
    RawImages,
    collate_cls,
    cpu_decodes,
    to_model_input,
)
from resdet.data.folder import ImageFolderDataset
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
    floats = to_model_input(detection, torch.device("cpu"))
    assert [f.dtype for f in floats] == [torch.float32] * 2 and floats[0].max() == 1.0
    ready = torch.rand(2, 3, 4, 4)
    assert to_model_input(ready, torch.device("cpu")) is ready


def write_jpegs(root: Path, shapes) -> None:
    rng = np.random.default_rng(5)
    for i, (h, w) in enumerate(shapes):
        noise = rng.integers(0, 256, size=(h, w, 3)).astype(np.uint8)
        (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / f"c{i % 2}" / f"{i}.jpg"), cv2.blur(noise, (9, 9)))


SHAPES = [(300, 400), (400, 300), (200, 260), (256, 320)]


def batch_input(dataset, keys) -> torch.Tensor:
    batch = collate_cls([dataset[key] for key in keys])
    return prepare_batch(batch, torch.device("cpu"))[0]


@pytest.mark.parametrize("train", [True, False])
def test_decoding_on_the_device_gives_the_workers_views(tmp_path, train):
    """data.decode=gpu run with device="cpu": the same views as decoding in the workers, from
    the same draws, up to the decoders' rounding."""
    write_jpegs(tmp_path, SHAPES)
    on_cpu = ImageFolderDataset(tmp_path, train=train)
    on_device = ImageFolderDataset(tmp_path, train=train, decode="gpu")
    keys = [(i, 10 + i) for i in range(len(SHAPES))] if train else list(range(len(SHAPES)))
    sample, label = on_device[keys[1]]
    assert isinstance(sample, EncodedImage) and label == on_cpu[keys[1]][1]
    expected, got = batch_input(on_cpu, keys), batch_input(on_device, keys)
    assert got.shape == expected.shape == (len(SHAPES), 3, 224, 224)
    # The two decoders' IDCT and the uint8 rounding: at most two grey levels, under half a grey
    # level on average (in normalised units).
    grey = 1 / 255 / min(T.IMAGENET_STD)
    assert (got - expected).abs().max() < 2.01 * grey
    assert (got - expected).abs().mean() < 0.5 * grey
    channels_last = prepare_batch(
        collate_cls([on_device[k] for k in keys]), torch.device("cpu"), channels_last=True
    )[0]
    assert channels_last.is_contiguous(memory_format=torch.channels_last)


def test_files_the_decoder_refuses_are_decoded_on_the_cpu_and_counted(tmp_path):
    write_jpegs(tmp_path, SHAPES[:2])
    png = tmp_path / "c0" / "z.png"  # not a JPEG: decode_jpeg refuses it
    cv2.imwrite(str(png), np.full((240, 250, 3), 128, np.uint8))
    dataset = ImageFolderDataset(tmp_path, train=False, decode="gpu")
    before = cpu_decodes()
    with pytest.warns(UserWarning, match=f"JPEG decoder refused {png}.*decoded on the CPU"):
        images = batch_input(dataset, range(len(dataset)))
    assert cpu_decodes() == before + 1 and images.shape == (3, 3, 224, 224)
    index = [dataset.path(i) for i in range(3)].index(png)
    torch.testing.assert_close(
        images[index], batch_input(ImageFolderDataset(tmp_path, train=False), [index])[0]
    )


def test_truncated_files_are_skipped_in_the_worker_and_corrupt_ones_named(tmp_path):
    write_jpegs(tmp_path, SHAPES[:3])
    dataset = ImageFolderDataset(tmp_path, train=True, decode="gpu")
    cut = dataset.path(0)
    cut.write_bytes(cut.read_bytes()[:-400])
    with pytest.warns(UserWarning, match=f"unreadable or truncated image {cut}"):
        _, label = dataset[(0, 1)]
    assert dataset.skipped == 1 and label == dataset.labels[1]
    broken = dataset.path(2)  # a whole header and end marker, but no image data
    data = broken.read_bytes()
    broken.write_bytes(data[: data.find(b"\xff\xda")] + b"\xff\xd9")
    with (
        pytest.warns(UserWarning),
        pytest.raises(ValueError, match=f"cannot decode image file {broken}.*data.decode=cpu"),
    ):
        batch_input(dataset, [(2, 0)])


def test_a_jpeg_with_data_after_its_end_marker_is_kept_on_both_paths(tmp_path):
    write_jpegs(tmp_path, SHAPES[:2])
    dataset = ImageFolderDataset(tmp_path, train=False, decode="gpu")
    trailer = dataset.path(0)  # as phones append motion-photo or metadata blocks
    trailer.write_bytes(trailer.read_bytes() + bytes(range(256)) * 8)
    image, _ = dataset[0]
    assert isinstance(image, EncodedImage) and dataset.skipped == 0
    assert batch_input(dataset, [0]).shape == (1, 3, 224, 224)
