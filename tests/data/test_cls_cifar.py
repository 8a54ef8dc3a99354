"""Tests of resdet.data.cifar on tiny batches written in the real CIFAR-10 python format."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from resdet.data import build_cls_dataset
from resdet.data.cifar import Cifar10, split_indices
from resdet.data.options import ClsViews

NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PER_BATCH = 10  # 5 batches -> 50 training images, a 1/1000 scale model of the real 50,000


def write_cifar(root: Path, key=bytes, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Write root/cifar-10-batches-py in the CIFAR site's python format; return (train rows, test rows).

    ``key`` is the type of the dict keys: bytes (pickled from Python 3) or str (as Python 2's
    pickles load with encoding="latin1").
    """
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def dump(name: str, entry: dict) -> None:
        with open(folder / name, "wb") as f:
            pickle.dump({key(k, "ascii") if key is bytes else k: v for k, v in entry.items()}, f, 2)

    rows = []
    for i in range(1, 6):
        data = rng.integers(0, 256, size=(PER_BATCH, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=PER_BATCH)]
        rows.append((data, labels))
        dump(f"data_batch_{i}", {"data": data, "labels": labels, "batch_label": f"batch {i}"})
    test = rng.integers(0, 256, size=(6, 3072), dtype=np.uint8)
    dump("test_batch", {"data": test, "labels": [0, 1, 2, 3, 4, 9]})
    dump("batches.meta", {"label_names": NAMES, "num_cases_per_batch": PER_BATCH})
    return np.concatenate([d for d, _ in rows]), np.array(sum((lab for _, lab in rows), []))


@pytest.fixture
def cifar_root(tmp_path):
    data, labels = write_cifar(tmp_path)
    return tmp_path, data, labels


@pytest.mark.parametrize("key", [bytes, str])
def test_pixels_and_labels_round_trip(tmp_path, key):
    data, labels = write_cifar(tmp_path, key=key)
    dataset = Cifar10(tmp_path, "train", augment=False)
    assert len(dataset) == 50 and dataset.class_names == NAMES and dataset.num_classes == 10
    np.testing.assert_array_equal(dataset.labels, labels)
    # Row 13's pixel (y=5, x=7): R at 5*32+7, G 1024 later, B 2048 later (the CIFAR site's format).
    rgb = data[13, [5 * 32 + 7, 1024 + 5 * 32 + 7, 2048 + 5 * 32 + 7]]
    np.testing.assert_array_equal(dataset.images[13, 5, 7], rgb)
    image, label = dataset[13]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and label == labels[13]
    mean = data.reshape(50, 3, 32, 32).mean(axis=0)[:, 5, 7]
    np.testing.assert_allclose(image[:, 5, 7].numpy(), (rgb - mean) / 255, rtol=1e-5, atol=1e-6)


def test_root_may_be_the_batches_folder_itself(cifar_root):
    root, _, _ = cifar_root
    a = Cifar10(root, "test", augment=False)
    b = Cifar10(root / "cifar-10-batches-py", "test", augment=False)
    assert len(a) == 6 and a.labels.tolist() == [0, 1, 2, 3, 4, 9]
    np.testing.assert_array_equal(a.images, b.images)
    # The test set is normalised with the training mean image.
    np.testing.assert_allclose(a.mean_image, Cifar10(root, "train", augment=False).mean_image)


def test_val_split_is_a_deterministic_45_to_5_scale_model(cifar_root):
    root, data, _ = cifar_root
    # val_size 5 of 50 is the paper's 5,000 of 50,000 (section 4.2) at 1/1000 scale.
    train = Cifar10(root, "train", augment=False, val_size=5)
    val = Cifar10(root, "val", augment=False, val_size=5)
    assert (len(train), len(val)) == (45, 5)
    keep, held = split_indices(50, 5)
    assert sorted(np.concatenate([keep, held]).tolist()) == list(range(50))
    np.testing.assert_array_equal(
        val.images, data.reshape(50, 3, 32, 32).transpose(0, 2, 3, 1)[held]
    )
    np.testing.assert_array_equal(split_indices(50, 5)[1], held)
    assert split_indices(50_000, 5_000)[0].size == 45_000


def test_split_errors(cifar_root):
    root, _, _ = cifar_root
    with pytest.raises(ValueError, match="needs val_size > 0"):
        Cifar10(root, "val", augment=False)
    with pytest.raises(ValueError, match=r"val_size=50 must be in \[0, 50\)"):
        Cifar10(root, "train", augment=False, val_size=50)
    with pytest.raises(ValueError, match="not one of train, val, test"):
        Cifar10(root, "valid", augment=False)


def test_augmentation_is_seeded_and_only_moves_pixels(cifar_root):
    root, _, _ = cifar_root
    plain = Cifar10(root, "train", augment=False)
    augmented = Cifar10(root, "train", augment=True)
    a, label = augmented[(4, 123)]
    assert a.shape == (3, 32, 32) and a.dtype == torch.float32 and label == plain[4][1]
    assert torch.equal(a, augmented[(4, 123)][0])
    assert any(not torch.equal(a, augmented[(4, s)][0]) for s in range(5))
    # Padding and cropping move mean-subtracted pixels and add zeros; no value is invented.
    allowed = set(plain[4][0].numpy().ravel().tolist()) | {0.0}
    assert set(a.numpy().ravel().tolist()) <= allowed


def test_dataloader_workers_do_not_change_seeded_samples(cifar_root):
    root, _, _ = cifar_root
    dataset = Cifar10(root, "train", augment=True)
    keys = [(i, 1000 + i) for i in range(8)]
    batches = [
        next(iter(DataLoader(dataset, batch_size=8, sampler=keys, num_workers=w))) for w in (0, 2)
    ]
    assert torch.equal(batches[0][0], batches[1][0])
    assert batches[0][0].shape == (8, 3, 32, 32) and batches[0][1].dtype == torch.int64


def test_missing_folder_error_names_path_layout_and_download(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        Cifar10(tmp_path / "nowhere", "train", augment=False)
    message = str(info.value)
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in message
    assert "data_batch_1" in message and "--download" in message


def test_incomplete_folder_names_the_missing_files(cifar_root):
    root, _, _ = cifar_root
    (root / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(FileNotFoundError, match="lacks test_batch"):
        Cifar10(root, "train", augment=False)


def test_malformed_batch_is_named(cifar_root):
    root, _, _ = cifar_root
    path = root / "cifar-10-batches-py" / "data_batch_3"
    with open(path, "wb") as f:
        pickle.dump({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}, f, 2)
    with pytest.raises(ValueError, match=r"data_batch_3: data is uint8 \(4, 100\)"):
        Cifar10(root, "train", augment=False)
    path.write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="cannot read CIFAR-10 batch .*data_batch_3"):
        Cifar10(root, "train", augment=False)


def test_builder_dispatches_cifar10(cifar_root):
    root, _, _ = cifar_root
    dataset = build_cls_dataset("cifar10", root, "val", train=False, val_size=5)
    assert isinstance(dataset, Cifar10) and len(dataset) == 5 and not dataset.augment
    with pytest.raises(
        ValueError,
        match=r"cifar10 does not take views.ten_crop=True, which applies to imagenet",
    ):
        views = ClsViews(ten_crop=True)
        build_cls_dataset("cifar10", root, "test", train=False, views=views)
