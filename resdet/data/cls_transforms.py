"""Classification transforms on numpy HWC images (uint8 or float32, RGB), shared by the datasets.

Every random transform takes an explicit ``np.random.Generator`` so that a sample's augmentation
depends only on its seed (docs/design.md#samples-seeds-and-resuming). Images stay
``[H, W, C]`` numpy arrays until ``to_chw_tensor`` turns them into the ``[C, H, W]`` float32
tensors the models take.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import cv2
import numpy as np
import torch

from resdet.data.samplers import split_key

# Per-channel RGB mean and std of ImageNet training images in [0, 1] units, as used by
# fb.resnet.torch (datasets/imagenet.lua, "computed from random subset of ImageNet training
# images") and torchvision, whose weights expect exactly this normalisation.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# AlexNet-style PCA lighting: eigenvalues and eigenvectors (columns, RGB rows) of the covariance of
# ImageNet RGB pixels in [0, 1] units, copied from fb.resnet.torch datasets/imagenet.lua (`pca`).
IMAGENET_EIGVAL = np.array([0.2175, 0.0188, 0.0045], dtype=np.float32)
IMAGENET_EIGVEC = np.array(
    [
        [-0.5675, 0.7192, 0.4009],
        [-0.5808, -0.0045, -0.8140],
        [-0.5836, -0.6948, 0.4203],
    ],
    dtype=np.float32,
)


def parse_key(key: int | tuple[int, int], length: int) -> tuple[int, np.random.Generator]:
    """A dataset key as an index in ``[0, length)`` and the sample's generator.

    With a seed (``(index, seed)`` keys) the generator is ``np.random.default_rng(seed)``;
    without one it is seeded from fresh OS entropy, so DataLoader workers never repeat each
    other's augmentation.
    """
    index, seed = split_key(key, length)
    return index, np.random.default_rng(seed)


def pad_crop_flip(image: np.ndarray, rng: np.random.Generator, pad: int, flip: bool) -> np.ndarray:
    """Zero-pad ``pad`` pixels on each side, take a random crop of the original size, maybe flip.

    The CIFAR augmentation of the paper (section 4.2). ``image`` is ``[H, W, C]`` of any dtype;
    the result has the same shape and dtype. The crop offset is drawn first, then (only when
    ``flip``) a fair coin decides a horizontal flip.
    """
    h, w = image.shape[:2]
    dy, dx = (int(v) - pad for v in rng.integers(0, 2 * pad + 1, size=2))
    out = np.zeros_like(image)
    # Copy only the overlap of the shifted image and the output instead of building the padded
    # array: this is the whole cost of the CIFAR pipeline.
    out[max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)] = image[
        max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)
    ]
    if flip and rng.random() < 0.5:
        out = out[:, ::-1]
    return out


def resize_short_side(image: np.ndarray, size: int) -> np.ndarray:
    """Resize ``[H, W, C]`` so that its shorter side is ``size`` pixels, keeping the aspect ratio.

    The longer side becomes ``int(size * long / short)`` as in torchvision's ``Resize(size)``.
    Shrinking is antialiased (``shrink``); enlarging is bilinear (``cv2.INTER_LINEAR``).
    """
    h, w = image.shape[:2]
    if min(h, w) == size:
        return image
    new_h, new_w = short_side_shape(h, w, size)
    if size < min(h, w):
        return shrink(image, new_h, new_w)
    return cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)


def shrink(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 ``[H, W, C]`` (any row stride) resized down to ``[height, width, C]``, antialiased.

    The antialiased bilinear (triangle) filter of PIL and torchvision's ``antialias=True``, whose
    support widens with the shrink factor so that no source pixel is skipped (plain bilinear
    aliases). torch's uint8 kernel for channels-last images, which an HWC array is, runs it
    2.7x faster than ``cv2.INTER_AREA`` (measured at 300 -> 224 pixels, one thread).
    """
    pixels = torch.from_numpy(image).permute(2, 0, 1)[None]  # a channels-last [1, C, H, W] view
    out = torch.nn.functional.interpolate(
        pixels, size=(height, width), mode="bilinear", antialias=True, align_corners=False
    )
    return out[0].permute(1, 2, 0).numpy()  # the channels-last result is HWC-contiguous


def short_side_shape(h: int, w: int, size: int) -> tuple[int, int]:
    """``(H', W')`` of an ``h x w`` image resized to shorter side ``size`` (``resize_short_side``)."""
    short, long = min(h, w), max(h, w)
    new_long = int(size * long / short)
    return (size, new_long) if h <= w else (new_long, size)


class Window(NamedTuple):
    """A ``crop x crop`` view of an image resized to shorter side ``size``: its top-left corner
    ``(top, left)`` in the resized image's pixels, and whether it is mirrored."""

    size: int
    top: int
    left: int
    flip: bool


def draw_train_window(
    h: int, w: int, rng: np.random.Generator, scale: tuple[int, int], crop: int
) -> Window:
    """The paper's training view (section 3.4) of an ``h x w`` image: the shorter side resized
    to a uniform integer in ``scale`` (inclusive), a uniform random ``crop x crop`` crop and a
    flip with probability 0.5, drawn in that order."""
    size = int(rng.integers(scale[0], scale[1] + 1))
    new_h, new_w = short_side_shape(h, w, size)
    top = int(rng.integers(0, new_h - crop + 1))
    left = int(rng.integers(0, new_w - crop + 1))
    return Window(size, top, left, bool(rng.random() < 0.5))


def center_window(h: int, w: int, size: int, crop: int) -> Window:
    """The central ``crop x crop`` crop of an ``h x w`` image resized to shorter side ``size``
    (offsets ``round((H' - crop) / 2)`` as in torchvision's ``center_crop``)."""
    new_h, new_w = short_side_shape(h, w, size)
    return Window(size, int(round((new_h - crop) / 2.0)), int(round((new_w - crop) / 2.0)), False)


def source_region(h: int, w: int, window: Window, crop: int) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)``: the whole pixels of the ``h x w`` source that ``window`` covers.

    Resizing a whole photo to shorter side 256..480 only to keep a 224 x 224 crop of it was most
    of the pipeline's time, so views resize this region alone. Its edges are rounded to whole
    source pixels, so the view may sit up to half a source pixel from the resize-then-crop one
    (and its scale differ by half a pixel in ``crop``): a few grey levels on photos, nothing to
    an augmentation.
    """
    new_h, new_w = short_side_shape(h, w, window.size)
    sy, sx = h / new_h, w / new_w  # source pixels per output pixel
    y0, x0 = round(window.top * sy), round(window.left * sx)
    return y0, min(h, y0 + round(crop * sy)), x0, min(w, x0 + round(crop * sx))


Region = tuple[int, int, int, int]  # y0, y1, x0, x1: source pixels, ends exclusive


def draw_random_resized_region(
    h: int,
    w: int,
    rng: np.random.Generator,
    area_range: tuple[float, float] = (0.08, 1.0),
    ratio_range: tuple[float, float] = (3 / 4, 4 / 3),
) -> Region:
    """torchvision's ``RandomResizedCrop.get_params`` with ``rng``: up to 10 draws of an area
    fraction (uniform in ``area_range``) and an aspect ratio (log-uniform in ``ratio_range``,
    width / height) until the rounded region fits, else the largest central region whose
    aspect ratio is within range."""
    area = h * w
    log_low, log_high = math.log(ratio_range[0]), math.log(ratio_range[1])
    for _ in range(10):
        target = area * rng.uniform(*area_range)
        ratio = math.exp(rng.uniform(log_low, log_high))
        cw, ch = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            return top, top + ch, left, left + cw
    if w / h < ratio_range[0]:
        cw, ch = w, round(w / ratio_range[0])
    elif w / h > ratio_range[1]:
        cw, ch = round(h * ratio_range[1]), h
    else:
        cw, ch = w, h
    top, left = (h - ch) // 2, (w - cw) // 2
    return top, top + ch, left, left + cw


def resized_region(image: np.ndarray, region: Region, crop: int, flip: bool) -> np.ndarray:
    """``region`` of uint8 ``image`` [H, W, C] resized to ``[crop, crop, C]``, mirrored if
    ``flip``: bilinear, antialiased where it shrinks (torchvision's ``RandomResizedCrop`` on
    tensors)."""
    y0, y1, x0, x1 = region
    view = image[y0:y1, x0:x1]
    if view.shape[0] <= crop and view.shape[1] <= crop and view.shape[:2] != (crop, crop):
        view = cv2.resize(view, (crop, crop), interpolation=cv2.INTER_LINEAR)  # enlarging only
    elif view.shape[:2] != (crop, crop):
        view = shrink(view, crop, crop)  # antialiasing acts on the shrinking axes only
    return view[:, ::-1] if flip else view


def resized_window(image: np.ndarray, window: Window, crop: int) -> np.ndarray:
    """``window`` of ``image`` as ``[crop, crop, C]``: its ``source_region`` resized
    (``resized_region``), mirrored if ``window.flip``."""
    region = source_region(*image.shape[:2], window, crop)
    return resized_region(image, region, crop, window.flip)


def ten_crop(image: np.ndarray, size: int) -> np.ndarray:
    """The 10-crop test views (paper section 3.4) of ``[H, W, C]`` as one ``[10, C, size, size]``.

    In torchvision's ``TenCrop`` order: top-left, top-right, bottom-left, bottom-right and centre
    crops of ``image``, then the same five crops of its left-right mirror (so view 5 is the
    mirror of view 1, not of view 0).
    """
    # Transposing and mirroring the whole image once makes every crop a block of contiguous rows:
    # stacking strided HWC views costs twice as much.
    chw = np.ascontiguousarray(image.transpose(2, 0, 1))
    h, w = chw.shape[1:]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return np.stack(
        [
            view
            for img in (chw, np.ascontiguousarray(chw[:, :, ::-1]))
            for view in (
                img[:, :size, :size],
                img[:, :size, w - size :],
                img[:, h - size :, :size],
                img[:, h - size :, w - size :],
                img[:, top : top + size, left : left + size],
            )
        ]
    )


def lighting_shift(rng: np.random.Generator, alphastd: float = 0.1) -> np.ndarray:
    """AlexNet PCA lighting noise: the RGB offset [3] (float32, [0, 1] units) added to every
    pixel, ``eigvec @ (alpha * eigval)`` with ``alpha ~ N(0, alphastd^2)`` per component,
    exactly as fb.resnet.torch's ``Lighting(0.1, pca.eigval, pca.eigvec)``."""
    alpha = rng.normal(0.0, alphastd, size=3).astype(np.float32)
    return IMAGENET_EIGVEC @ (alpha * IMAGENET_EIGVAL)


def normalized_chw(image: np.ndarray, shift: np.ndarray | None = None) -> torch.Tensor:
    """uint8 RGB ``[H, W, 3]`` -> normalised float32 ``[3, H, W]``, plus an RGB ``shift``.

    ``(x / 255 + shift - mean) / std`` with ImageNet's per-channel mean and std, in two passes
    over the pixels: ``x * 1 / (255 std) + (shift - mean) / std``, on the channels-first copy.
    """
    std = np.asarray(IMAGENET_STD, dtype=np.float32)
    offset = -np.asarray(IMAGENET_MEAN, dtype=np.float32)
    if shift is not None:
        offset = offset + shift
    out = np.ascontiguousarray(image.transpose(2, 0, 1)).astype(np.float32)
    out *= (1.0 / (255.0 * std))[:, None, None]
    out += (offset / std)[:, None, None]
    return torch.from_numpy(out)


def subtract_mean_image(image: np.ndarray, mean_image: np.ndarray) -> np.ndarray:
    """Per-pixel mean subtraction (paper section 4.2): ``(x - mean_image) / 255``, float32.

    ``image`` is uint8 ``[H, W, C]``; ``mean_image`` is the float32 ``[H, W, C]`` mean of the
    training images in 0..255 units. Dividing by 255 only sets the unit: inputs lie in [-1, 1].
    """
    return (image.astype(np.float32) - mean_image) * np.float32(1.0 / 255.0)


def to_chw_tensor(image: np.ndarray) -> torch.Tensor:
    """``[H, W, C]`` numpy (any dtype, any strides) -> contiguous ``[C, H, W]`` tensor."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
