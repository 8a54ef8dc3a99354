"""The last step of the input pipeline, run on the batch once it is on the training device.

DataLoader workers hand over uint8 pixels: a quarter of the bytes of float32 through shared
memory, pinning and the host-to-device copy, and no per-pixel float work on the CPU cores that
feed the GPU. The conversion to the model's float input happens here, in the trainer's process,
on the whole batch at once (on a GPU it costs microseconds).
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch.utils.data import default_collate
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

from resdet.data.cls_transforms import IMAGENET_MEAN, IMAGENET_STD


class RawImages(NamedTuple):
    """uint8 RGB images still to be normalised, with a per-image RGB offset.

    A sample holds ``pixels`` uint8 ``[3, H, W]`` (or ``[V, 3, H, W]`` for V test views such as
    the ten crops) and ``shift`` float32 ``[3]``, an offset in [0, 1] units added to every pixel
    before normalisation (AlexNet's PCA lighting noise; zeros without it). Default collation
    stacks both, giving ``[B, ...]`` and ``[B, 3]``. ``to_model_input`` turns a batch into
    ``(pixels / 255 + shift - mean) / std`` with ImageNet's per-channel mean and std, the
    numbers ``cls_transforms.normalized_chw`` computes on the CPU.
    """

    pixels: torch.Tensor
    shift: torch.Tensor

    def to_model_input(self, channels_last: bool = False) -> torch.Tensor:
        """The normalised float32 batch, on the device the tensors are on.

        With ``channels_last`` (4-D batches only) the uint8 pixels are re-laid out first, where
        the copy moves a quarter of the bytes, and the float result keeps that layout.
        """
        pixels, shift = self.pixels, self.shift
        if channels_last and pixels.dim() == 4:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        mean, std = _imagenet_statistics(pixels.device)
        scale = (1.0 / (255.0 * std)).view(3, 1, 1)
        offset = (shift.to(pixels.device, torch.float32) - mean) / std
        # [B, 3] -> [B, 1, ..., 3, 1, 1], so that it broadcasts over any views between.
        offset = offset.view(shift.shape[0], *([1] * (pixels.dim() - 4)), 3, 1, 1)
        out = pixels.to(torch.float32)  # keeps the memory layout
        return out.mul_(scale).add_(offset)


@functools.cache
def _imagenet_statistics(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet's RGB mean and std on ``device``, copied there once rather than every batch."""
    return (
        torch.tensor(IMAGENET_MEAN, device=device),
        torch.tensor(IMAGENET_STD, device=device),
    )


def to_model_input(images: object, device: torch.device, channels_last: bool = False) -> object:
    """A batch's images, moved to ``device`` already, as the model takes them on it.

    ``RawImages`` are normalised (``RawImages.to_model_input``), an ``EncodedBatch`` decoded and
    made into its views there (``EncodedBatch.to_model_input``); a list of uint8 ``[3, H, W]``
    detection images becomes float32 in [0, 1] (the detectors normalise themselves); float
    tensors are ready already (4-D ones get the channels-last layout when asked).
    """
    if isinstance(images, RawImages):
        return images.to_model_input(channels_last)
    if isinstance(images, EncodedBatch):
        return images.to_model_input(device, channels_last)
    if isinstance(images, list) and images and images[0].dtype == torch.uint8:
        return [image.to(torch.float32).div_(255) for image in images]
    if channels_last and isinstance(images, torch.Tensor) and images.dim() == 4:
        return images.contiguous(memory_format=torch.channels_last)
    return images


class EncodedImage(NamedTuple):
    """A training or centre view left entirely to the device: the file's bytes and the view's
    geometry, drawn in the worker from the sample's seed as the CPU path draws it.

    ``region`` (int64 ``[4]``: y0, y1, x0, x1) is the file's pixels that the view covers
    (``cls_transforms.source_region``), resized to ``crop x crop`` (antialiased when
    ``antialias``, i.e. shrinking) and mirrored when ``flip``; ``shift`` is the lighting offset.
    """

    data: torch.Tensor
    region: torch.Tensor
    crop: int
    antialias: bool
    flip: bool
    shift: torch.Tensor
    path: str


class EncodedBatch:
    """A batch of ``EncodedImage``: decoded, cropped, resized, flipped and normalised on the
    device by ``to_model_input``.

    Not a tuple, so ``loader.to_device`` leaves it whole: the decoders read the bytes from host
    memory, whatever the device.
    """

    def __init__(self, images: Sequence[EncodedImage]) -> None:
        self.data = [image.data for image in images]
        self.regions = [tuple(int(v) for v in image.region) for image in images]
        self.crop = images[0].crop
        self.antialias = [image.antialias for image in images]
        self.flips = [image.flip for image in images]
        self.shift = torch.stack([image.shift for image in images])
        self.paths = [image.path for image in images]

    def __len__(self) -> int:
        return len(self.data)

    def to_model_input(self, device: torch.device, channels_last: bool = False) -> torch.Tensor:
        """Decode on ``device`` (nvjpeg on CUDA; libjpeg-turbo with ``device="cpu"``) and make
        the normalised float32 ``[B, 3, crop, crop]`` batch there."""
        views = []
        for image, (y0, y1, x0, x1), antialias, flip in zip(
            self.decode(device), self.regions, self.antialias, self.flips, strict=True
        ):
            view = image[None, :, y0:y1, x0:x1].to(torch.float32)
            if view.shape[-2:] != (self.crop, self.crop):
                view = F.interpolate(
                    view,
                    (self.crop, self.crop),
                    mode="bilinear",
                    antialias=antialias,
                    align_corners=False,
                )
            views.append(view.flip(-1) if flip else view)
        pixels = torch.cat(views)  # float32 in 0..255 units: no rounding back to uint8
        return RawImages(pixels, self.shift.to(device)).to_model_input(channels_last)

    def decode(self, device: torch.device) -> list[torch.Tensor]:
        """The batch's images, uint8 RGB ``[3, H, W]`` on ``device``: one batched decode, or
        image by image if it fails, files the device decoder refuses decoded on the CPU."""
        with torchvision_io():
            try:
                return decode_jpeg(self.data, mode=ImageReadMode.RGB, device=device)
            except torch.OutOfMemoryError:
                raise  # the device's fault, not a file's
            except RuntimeError:
                return [self._decode_one(i, device) for i in range(len(self))]

    def _decode_one(self, i: int, device: torch.device) -> torch.Tensor:
        try:
            return decode_jpeg(self.data[i], mode=ImageReadMode.RGB, device=device)
        except torch.OutOfMemoryError:
            raise
        except RuntimeError as refused:
            why = refused
        _CPU_DECODES[0] += 1
        warnings.warn(
            f"the {device.type} JPEG decoder refused {self.paths[i]} ({why}); decoded on the CPU",
            stacklevel=2,
        )
        try:
            return decode_image(self.data[i], mode=ImageReadMode.RGB).to(device)
        except RuntimeError as error:
            raise ValueError(
                f"cannot decode image file {self.paths[i]} ({error}): it is corrupt; replace or "
                "delete it, or train with data.decode=cpu, which skips unreadable files"
            ) from error


@contextlib.contextmanager
def torchvision_io() -> Iterator[None]:
    """A context in which torchvision 0.29's deprecation of its image decoders stays quiet.

    They remain the decoders with a batched nvjpeg path that torch and torchvision ship;
    TorchCodec, which supersedes them, is not a dependency of resdet.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision")
        yield


_CPU_DECODES = [0]  # in the trainer's process, the only one that decodes EncodedBatch images


def cpu_decodes() -> int:
    """How many images of ``EncodedBatch`` batches the device decoder refused, so far."""
    return _CPU_DECODES[0]


def collate_cls(batch: Sequence[tuple[Any, Any]]) -> tuple[Any, torch.Tensor]:
    """Classification collation: torch's default, except that ``EncodedImage`` samples (files
    of different lengths) become one ``EncodedBatch``."""
    if isinstance(batch[0][0], EncodedImage):
        return EncodedBatch([image for image, _ in batch]), torch.tensor([y for _, y in batch])
    return default_collate(batch)
