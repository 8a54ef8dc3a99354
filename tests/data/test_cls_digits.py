"""Tests of resdet.data.digits (scikit-learn's bundled 8x8 digits; nothing is downloaded)."""

import sys

import cv2
import numpy as np
import pytest
import torch

from resdet.data import build_cls_dataset
from resdet.data.digits import Digits, load_digits_32


@pytest.fixture(scope="module")
def train():
    return Digits("train", augment=False)


@pytest.fixture(scope="module")
def test():
    return Digits("test", augment=False)


def test_split_sizes_and_stratification(train, test):
    # scikit-learn's load_digits has 1,797 images; TEST_SIZE = 360 leaves 1,437.
    assert (len(train), len(test)) == (1437, 360)
    assert train.class_names == [str(d) for d in range(10)] and train.num_classes == 10
    # Stratified: each class holds 360/1797 of its images in test, up to rounding.
    all_counts = np.bincount(np.concatenate([train.labels, test.labels]), minlength=10)
    test_counts = np.bincount(test.labels, minlength=10)
    assert np.all(np.abs(test_counts - all_counts * 360 / 1797) <= 1)
    assert np.array_equal(Digits("test", augment=False).labels, test.labels)


def test_images_are_scaled_grey_digits():
    images, labels = load_digits_32()
    from sklearn.datasets import load_digits

    bunch = load_digits()
    assert images.shape == (1797, 32, 32, 3) and images.dtype == np.uint8
    assert np.array_equal(labels, bunch.target)
    assert np.array_equal(images[..., 0], images[..., 2])
    # Grey level 16 maps to 255; bilinear enlargement of image 0 equals cv2's own result.
    grey = np.rint(bunch.images[0] * 255 / 16).astype(np.uint8)
    assert np.array_equal(
        images[0, :, :, 1], cv2.resize(grey, (32, 32), interpolation=cv2.INTER_LINEAR)
    )
    assert images.max() == 255


def test_samples_are_mean_subtracted(train):
    image, label = train[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and label == train.labels[0]
    expected = (train.images[0].astype(np.float32) - train.mean_image) / 255
    np.testing.assert_allclose(image.numpy(), expected.transpose(2, 0, 1), atol=1e-6)


def test_augmentation_shifts_but_never_flips():
    augmented = Digits("test", augment=True)
    plain = augmented.images[7].astype(np.float32) - augmented.mean_image
    padded = np.pad(plain, ((4, 4), (4, 4), (0, 0))) / 255
    for seed in range(10):
        out = augmented[(7, seed)][0].numpy().transpose(1, 2, 0)
        # Only the crop offset is drawn (no coin for a flip): reproduce it from the seed.
        y, x = np.random.default_rng(seed).integers(0, 9, size=2)
        np.testing.assert_allclose(out, padded[y : y + 32, x : x + 32], atol=1e-6)


def test_missing_scikit_learn_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r"pip install scikit-learn.*resdet\[digits\]"):
        Digits("train", augment=False)


def test_builder_dispatches_digits():
    dataset = build_cls_dataset("digits", None, "test", train=True)
    assert isinstance(dataset, Digits) and dataset.augment and len(dataset) == 360
    with pytest.raises(ValueError, match="not one of train, test"):
        build_cls_dataset("digits", None, "val", train=False)
