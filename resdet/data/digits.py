"""scikit-learn's 8x8 handwritten digits as a tiny CIFAR-shaped set for CPU smoke runs."""

from __future__ import annotations

import cv2
import numpy as np

from resdet.data.cifar import SmallImageSet

TEST_SIZE = 360  # of 1,797 images, leaving 1,437 for training
SPLIT_SEED = 0


def load_digits_32() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as (images uint8 ``[N, 32, 32, 3]``, labels int64 ``[N]`` in 0..9).

    The 0..16 grey levels are scaled to 0..255, the 8x8 images enlarged bilinearly (cv2) to
    32x32 and copied to 3 channels, so CIFAR networks take them unchanged.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError(
            "the digits dataset needs scikit-learn: `pip install scikit-learn` "
            "(or `pip install resdet[digits]`)"
        ) from e
    bunch = load_digits()
    grey = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    large = np.stack([cv2.resize(g, (32, 32), interpolation=cv2.INTER_LINEAR) for g in grey])
    return np.repeat(large[..., None], 3, axis=3), bunch.target.astype(np.int64)


def split_indices(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) indices: a stratified 1,437 / 360 split with a fixed seed.

    Made by ``sklearn.model_selection.train_test_split(test_size=360, stratify=labels,
    random_state=0)``, so each class keeps its share in both parts.
    """
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(
        np.arange(len(labels)), test_size=TEST_SIZE, stratify=labels, random_state=SPLIT_SEED
    )
    return np.sort(train), np.sort(test)


class Digits(SmallImageSet):
    """Digits as ``(image float32 [3, 32, 32], label int)`` samples; ``split`` is train or test.

    Normalisation is CIFAR's: ``(x - mean_image) / 255`` with the per-pixel mean of the training
    split. ``augment`` pads 4 zeros on each side and crops 32x32 at random, but never flips:
    a mirrored digit is not the same digit (a mirrored 3 or 7 is no digit at all), so flipping
    would train on images that no test digit looks like.
    """

    flip = False

    num_classes = 10
    class_names = [str(d) for d in range(10)]

    def __init__(self, split: str = "train", *, augment: bool) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"digits split {split!r} is not one of train, test")
        images, labels = load_digits_32()
        train, test = split_indices(labels)
        self.mean_image = images[train].mean(axis=0, dtype=np.float64).astype(np.float32)
        chosen = train if split == "train" else test
        self.images, self.labels = images[chosen], labels[chosen]
        self.split = split
        self.augment = augment
