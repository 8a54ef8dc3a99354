"""CIFAR-10 from the "python version" batches, with the paper's augmentation (section 4.2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from resdet.data.augment import SampleAugment
from resdet.data.cls_transforms import pad_crop_flip, parse_key, subtract_mean_image, to_chw_tensor
from resdet.data.options import ClsAugment
from resdet.data.safe_pickle import load_data_pickle

BATCHES_DIR = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
# Seed of the permutation that picks the validation images (see Cifar10).
SPLIT_SEED = 0


def find_batches_dir(root: str | Path) -> Path:
    """The batches folder: ``root`` itself if it holds them, else ``root/cifar-10-batches-py``."""
    root = Path(root)
    return root if (root / META_FILE).is_file() else root / BATCHES_DIR


def download_cifar10(root: str | Path) -> Path:
    """Fetch and unpack CIFAR-10 into ``root/cifar-10-batches-py`` with torchvision (online).

    Does nothing when the batches are already there. Returns the batches folder.
    """
    folder = find_batches_dir(root)
    if not (folder / META_FILE).is_file():
        from torchvision.datasets import CIFAR10
        from torchvision.datasets.utils import download_and_extract_archive

        # Only torchvision's download and checksum: its CIFAR10 class would then read the
        # batches with an unrestricted pickle.load, and this module reads them itself.
        download_and_extract_archive(
            CIFAR10.url, str(root), filename=CIFAR10.filename, md5=CIFAR10.tgz_md5
        )
    return find_batches_dir(root)


def _layout_help(folder: Path) -> str:
    return (
        f"expected {folder}/ with {', '.join(TRAIN_FILES)}, {TEST_FILE} and {META_FILE} (the "
        "CIFAR-10 'python version', https://www.cs.toronto.edu/~kriz/cifar.html); pass the folder "
        "that contains cifar-10-batches-py, or fetch it with `--download` (download=True)"
    )


def _load_pickle(path: Path) -> dict:
    # Python 2 pickled the batches; latin1 restores its byte strings and numpy arrays. The
    # restricted unpickler refuses any file that names code (a crafted batch would run it).
    entry = load_data_pickle(path, "CIFAR-10 batch", encoding="latin1")
    if not isinstance(entry, dict):
        raise ValueError(
            f"CIFAR-10 batch {path} holds a {type(entry).__name__}, expected a dict; re-download it"
        )
    # Python 2 str keys load as str, keys written from Python 3 as bytes: accept both.
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> (images uint8 ``[N, 32, 32, 3]`` RGB, labels int64 ``[N]``)."""
    entry = _load_pickle(path)
    if "data" not in entry or "labels" not in entry:
        raise ValueError(
            f"CIFAR-10 batch {path} has keys {sorted(entry)}, expected data and labels"
        )
    data = np.asarray(entry["data"])
    labels = np.asarray(entry["labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(
            f"CIFAR-10 batch {path}: data is {data.dtype} {data.shape}, expected uint8 N x 3072"
        )
    if len(labels) != len(data) or labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
        raise ValueError(f"CIFAR-10 batch {path}: labels must be {len(data)} ints in 0..9")
    # Each row is the R plane, then G, then B, each 32x32 row-major.
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels


def split_indices(num_train: int, val_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training images kept for training and held out for validation.

    Validation is the last ``val_size`` entries of
    ``np.random.default_rng(0).permutation(num_train)``; both index arrays are sorted, so images
    keep their file order.
    """
    if not 0 <= val_size < num_train:
        raise ValueError(
            f"val_size={val_size} must be in [0, {num_train}); 5000 gives the paper's 45k/5k split"
        )
    order = np.random.default_rng(SPLIT_SEED).permutation(num_train)
    cut = num_train - val_size
    return np.sort(order[:cut]), np.sort(order[cut:])


class SmallImageSet(Dataset):
    """32x32 uint8 images held in memory, fed as in the paper's CIFAR-10 experiments.

    Subclasses set ``images`` uint8 [N, 32, 32, 3], ``labels`` [N], ``mean_image`` float32
    [32, 32, 3] (per-pixel training mean) and ``augment``; ``flip`` says whether augmentation
    may mirror. Samples are ``(float32 [3, 32, 32], label)``: mean subtracted, /255, and with
    ``augment`` padded by 4 and randomly cropped (and flipped).
    """

    flip = True
    images: np.ndarray
    labels: np.ndarray
    mean_image: np.ndarray
    augment: bool
    # data.augment's transforms, training only: the policy on the uint8 image before the
    # paper's crop (whose padding stays the mean), erasing on the normalised one (to 0, the mean)
    extra: SampleAugment | None = None

    def use_augment(self, cfg: ClsAugment) -> None:
        """Add ``cfg``'s transforms to the training augmentation (a no-op when off)."""
        if cfg.active and self.augment:
            self.extra = SampleAugment(cfg, 0.0)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        """``key``: index or ``(index, seed)`` (docs/design.md#samples-seeds-and-resuming)."""
        index, rng = parse_key(key, len(self))
        pixels = self.images[index]
        if self.extra is not None:
            chw = self.extra.policy(torch.from_numpy(pixels).permute(2, 0, 1), rng)
            pixels = chw.permute(1, 2, 0).numpy()
        image = subtract_mean_image(pixels, self.mean_image)
        if self.augment:
            image = pad_crop_flip(image, rng, pad=4, flip=self.flip)
        sample = to_chw_tensor(image)
        if self.extra is not None:
            sample = self.extra.erase(sample, rng)
        return sample, int(self.labels[index])


class Cifar10(SmallImageSet):
    """CIFAR-10 images as ``(image float32 [3, 32, 32], label int)`` samples.

    ``split`` is ``"train"``, ``"val"`` or ``"test"``. With ``val_size > 0`` the 50,000 training
    images are split (see ``split_indices``) into ``50,000 - val_size`` for ``"train"`` and
    ``val_size`` for ``"val"``; ``val_size=5000`` is the paper's 45k/5k split used to choose the
    schedule. ``"test"`` is the 10,000 test images.

    Normalisation is the paper's per-pixel mean subtraction: ``(x - mean_image) / 255`` where
    ``mean_image`` (float32 ``[32, 32, 3]``, 0..255) is the mean of all 50,000 training images,
    whatever ``val_size`` is, so test inputs never depend on how training was split.
    With ``augment`` the mean-subtracted image is padded with 4 zeros (i.e. the mean colour) on
    each side, cropped back to 32x32 at random and flipped left-right with probability 0.5.

    ``root`` is the folder containing ``cifar-10-batches-py`` or that folder itself;
    ``download=True`` fetches it there with torchvision first.
    """

    num_classes = 10

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        augment: bool,
        val_size: int = 0,
        download: bool = False,
    ) -> None:
        if split not in ("train", "val", "test"):
            raise ValueError(f"CIFAR-10 split {split!r} is not one of train, val, test")
        if split == "val" and val_size == 0:
            raise ValueError(
                "CIFAR-10 split 'val' needs val_size > 0 (5000 gives the paper's 45k/5k split)"
            )
        folder = download_cifar10(root) if download else find_batches_dir(root)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"CIFAR-10 folder {folder} does not exist: {_layout_help(folder)}"
            )
        missing = [n for n in (*TRAIN_FILES, TEST_FILE, META_FILE) if not (folder / n).is_file()]
        if missing:
            raise FileNotFoundError(
                f"CIFAR-10 folder {folder} lacks {', '.join(missing)}: {_layout_help(folder)}"
            )

        parts = [read_batch(folder / name) for name in TRAIN_FILES]
        train_images = np.concatenate([images for images, _ in parts])
        train_labels = np.concatenate([labels for _, labels in parts])
        self.mean_image = train_images.mean(axis=0, dtype=np.float64).astype(np.float32)
        if split == "test":
            self.images, self.labels = read_batch(folder / TEST_FILE)
        else:
            keep, held_out = split_indices(len(train_images), val_size)
            chosen = keep if split == "train" else held_out
            self.images, self.labels = train_images[chosen], train_labels[chosen]
        names = _load_pickle(folder / META_FILE).get("label_names")
        if names is None or len(names) != 10:
            raise ValueError(f"{folder / META_FILE} must hold 10 label_names, got {names!r}")
        self.class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        self.split = split
        self.augment = augment
