"""The last step of the input pipeline, run on the batch once it is on the training device.

DataLoader workers hand over uint8 pixels: a quarter of the bytes of float32 through shared
memory, pinning and the host-to-device copy, and no per-pixel float work on the CPU cores that
feed the GPU. The conversion to the model's float input happens here, in the trainer's process,
on the whole batch at once (on a GPU it costs microseconds).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

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
        device = pixels.device
        std = torch.tensor(IMAGENET_STD, device=device)
        scale = (1.0 / (255.0 * std)).view(3, 1, 1)
        offset = (
            shift.to(device, torch.float32) - torch.tensor(IMAGENET_MEAN, device=device)
        ) / std
        # [B, 3] -> [B, 1, ..., 3, 1, 1], so that it broadcasts over any views between.
        offset = offset.view(shift.shape[0], *([1] * (pixels.dim() - 4)), 3, 1, 1)
        out = pixels.to(torch.float32)  # keeps the memory layout
        return out.mul_(scale).add_(offset)


def to_model_input(images: object, channels_last: bool = False) -> object:
    """A batch's images on the device as the model takes them.

    ``RawImages`` are normalised (``RawImages.to_model_input``); a list of uint8 ``[3, H, W]``
    detection images becomes float32 in [0, 1] (the detectors normalise themselves); float
    tensors are ready already (4-D ones get the channels-last layout when asked).
    """
    if isinstance(images, RawImages):
        return images.to_model_input(channels_last)
    if isinstance(images, list) and images and images[0].dtype == torch.uint8:
        return [image.to(torch.float32).div_(255) for image in images]
    if channels_last and isinstance(images, torch.Tensor) and images.dim() == 4:
        return images.contiguous(memory_format=torch.channels_last)
    return images
