"""Class-subfolder image sets: ImageNet and users' folders."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from resdet.data.augment import SampleAugment
from resdet.data.cls_transforms import (
    IMAGENET_MEAN,
    Region,
    center_window,
    draw_random_resized_region,
    draw_train_window,
    lighting_shift,
    normalized_chw,
    parse_key,
    resize_short_side,
    resized_region,
    source_region,
    ten_crop,
    to_chw_tensor,
)
from resdet.data.device_input import EncodedImage, RawImages
from resdet.data.images import SkipCounter, decode_rgb, first_readable, unreadable_error
from resdet.data.options import DEFAULT_VIEWS, ClsAugment, ClsViews, DecodeDevice

# torchvision's IMG_EXTENSIONS: what torchvision.datasets.ImageFolder accepts.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
IMAGENET_CLASSES = 1000
IMAGENET_LAYOUT = (
    "ImageNet is expected as ROOT/train/<wnid>/*.JPEG and ROOT/val/<wnid>/*.JPEG (1000 class "
    "folders each; the 50,000 val images re-arranged into class folders, e.g. with the standard "
    "valprep.sh script)"
)


def scan_class_folders(root: Path) -> tuple[list[str], list[str], list[int]]:
    """(class names, image paths relative to ``root``, labels) of ``root/<class>/**/<image>``.

    Classes are the sorted subfolder names (label = position, as in torchvision's ImageFolder);
    images are the files with an ``IMAGE_EXTENSIONS`` suffix (any case), sorted per class.
    """
    if not root.is_dir():
        raise FileNotFoundError(
            f"image folder {root} does not exist; expected {root}/<class>/<image> files"
        )
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    if not classes:
        raise FileNotFoundError(
            f"image folder {root} has no class subfolders; put each class's images in "
            f"{root}/<class name>/"
        )
    paths: list[str] = []
    labels: list[int] = []
    empty = []
    for label, name in enumerate(classes):
        found = []
        for folder, _, files in os.walk(root / name, followlinks=True):
            # relpath once per folder, not per file: ImageNet has 1.28M files in 1000 folders.
            prefix = os.path.relpath(folder, root)
            found += [
                os.path.join(prefix, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS)
            ]
        found.sort()
        if not found:
            empty.append(name)
        paths += found
        labels += [label] * len(found)
    if empty:
        shown = ", ".join(empty[:5]) + (" ..." if len(empty) > 5 else "")
        raise FileNotFoundError(
            f"{len(empty)} class folder(s) in {root} hold no images ({shown}); accepted "
            f"extensions: {' '.join(IMAGE_EXTENSIONS)}; remove the empty folders"
        )
    return classes, paths, labels


class ImageFolderDataset(Dataset):
    """Images in ``root/<class>/...`` as ``(image, label int)`` samples.

    ``train=True`` is the paper's ImageNet augmentation (section 3.4), ``train=False`` its test
    views, both as ``views`` (``data.options.ClsViews``) sets them. The image is
    ``device_input.RawImages``: uint8 ``[3, crop, crop]`` (ten crops: ``[10, 3, crop, crop]``,
    ``cls_transforms.ten_crop``) and the lighting offset, normalised once the batch is on the
    trainer's device; multi-scale views come as a list of normalised float32 whole images, one
    per shorter side (``evaluation.classification.MultiScale``).

    Normalisation is per channel with ImageNet's mean/std (``cls_transforms.IMAGENET_MEAN/STD``)
    rather than the paper's per-pixel mean image: under scale augmentation a pixel position has no
    fixed meaning, and torchvision's weights expect this normalisation.

    Images are decoded with OpenCV (``resdet.data.images.decode_rgb``). A file that cannot be
    read or decoded (missing, unreadable, truncated, not an image) is reported with a warning
    naming it, counted in ``skipped`` and replaced by the next index that decodes (with that
    image's own label and the same seed), so one bad file never stops a long run; with
    ``strict`` it is an error instead. ``skipped`` counts across all the processes that load from
    this object (the main one and its DataLoader workers), and training logs it to
    metrics.jsonl as ``skipped_images``.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        train: bool,
        views: ClsViews = DEFAULT_VIEWS,
        decode: DecodeDevice = "cpu",
        strict: bool = False,
    ) -> None:
        if train and views.test_time_only:
            raise ValueError(
                "ten_crop and test_scales are test-time views; use them with train=False"
            )
        if decode not in ("cpu", "gpu"):
            raise ValueError(f"decode must be 'cpu' or 'gpu', got {decode!r}")
        self.root = Path(root)
        self.class_names, paths, labels = scan_class_folders(self.root)
        self.num_classes = len(self.class_names)
        # One fixed-width bytes array instead of a list of str: DataLoader workers touching
        # millions of Python objects would copy the parent's pages (copy-on-write) per worker.
        self.paths = np.array([os.fsencode(p) for p in paths])
        self.labels = np.array(labels, dtype=np.int64)
        self.train = train
        self.views = views
        # Ten crops and whole multi-scale images are decoded in the workers whatever is asked.
        self.decode = "cpu" if views.test_time_only else decode
        self.strict = strict
        self._skips = SkipCounter()
        self.augment: SampleAugment | None = None  # use_augment

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def skipped(self) -> int:
        """Unreadable images replaced so far, by every process loading from this dataset."""
        return self._skips.total

    def path(self, index: int) -> Path:
        """The file of sample ``index``."""
        return self.root / os.fsdecode(self.paths[index])

    def read_rgb(self, index: int) -> np.ndarray | None:
        """Sample ``index`` decoded to uint8 RGB ``[H, W, 3]``; None (and a warning) if it fails."""
        path = self.path(index)
        image = decode_rgb(path)
        return image if image is not None else self._unreadable(path)

    def _unreadable(self, path: Path) -> None:
        """Count and report a file that cannot be used (an error with ``strict``)."""
        if self.strict:
            raise unreadable_error(path, "data.strict is set")
        self._skips.skip(path, "using the next image instead")

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        """``key`` is an index or ``(index, seed)``.

        Returns (image, label); the image as ``transform`` describes.
        """
        index, rng = parse_key(key, len(self))
        if self.decode == "gpu":
            used, (data, shape) = first_readable(index, len(self), self.read_encoded, self.root)
            return self.encoded_view(used, data, shape, rng), int(self.labels[used])
        used, image = first_readable(index, len(self), self.read_rgb, self.root)
        return self.transform(image, rng), int(self.labels[used])

    def read_encoded(self, index: int) -> tuple[np.ndarray, tuple[int, int]] | None:
        """Sample ``index``'s file bytes and ``(H, W)`` from its header, without decoding; None
        (and a warning) if it is missing, not an image, or cut short.

        A JPEG is whole when its end-of-image marker (FF D9) closes it. Files without one in
        their last bytes (data appended after the image, or cut short), and files in other
        formats (which the device decoder leaves to the CPU anyway), are decoded here once to
        tell, so that both decode settings train on the same files."""
        path = self.path(index)
        try:
            data = np.fromfile(path, dtype=np.uint8)
            with Image.open(io.BytesIO(data)) as header:  # lazy: reads the header only
                (width, height), kind = header.size, header.format
        except (OSError, ValueError, Image.DecompressionBombError):
            data = None
        if data is not None and (kind != "JPEG" or b"\xff\xd9" not in data[-32:].tobytes()):
            data = data if decode_rgb(path) is not None else None
        return (data, (height, width)) if data is not None else self._unreadable(path)

    def use_augment(self, cfg: ClsAugment) -> None:
        """Add ``cfg``'s transforms to the training augmentation (a no-op when off)."""
        if self.train and cfg.active and self.decode == "gpu":
            raise ValueError(
                "data.augment transforms decoded images in the workers, which data.decode=gpu "
                "leaves undecoded: use data.decode=cpu with it"
            )
        if self.train and cfg.active:
            # erased to ImageNet's mean colour, which the device normalisation maps to about 0
            self.augment = SampleAugment(cfg, [round(255 * m) for m in IMAGENET_MEAN])

    @property
    def crop(self) -> int:
        """The side of this split's square views."""
        return self.views.crop if self.train else self.views.eval_crop

    def _view(self, h: int, w: int, rng: np.random.Generator) -> tuple[Region, bool]:
        """The training view's draws, or the centre view, of an ``h x w`` image: the source
        region it covers and whether it is mirrored."""
        views, crop = self.views, self.crop
        if self.train and views.train_crop == "random_resized":
            region = draw_random_resized_region(h, w, rng, views.area_range)
            return region, bool(rng.random() < 0.5)
        if self.train:
            window = draw_train_window(h, w, rng, views.train_scale, crop)
        else:
            window = center_window(h, w, views.test_size, crop)
        return source_region(h, w, window, crop), window.flip

    def _lighting(self, rng: np.random.Generator) -> torch.Tensor:
        """The view's PCA lighting offset, drawn after its window (zeros at test time)."""
        if self.train and self.views.lighting_std > 0:
            return torch.from_numpy(lighting_shift(rng, self.views.lighting_std))
        return torch.zeros(3)

    def encoded_view(
        self, index: int, data: np.ndarray, shape: tuple[int, int], rng: np.random.Generator
    ) -> EncodedImage:
        """The training or centre view of file bytes ``data`` (an ``shape`` image) as an
        ``EncodedImage``, with the random draws of ``transform``, in the same order."""
        (h, w), crop = shape, self.crop
        (y0, y1, x0, x1), flip = self._view(h, w, rng)
        return EncodedImage(
            data=torch.from_numpy(data),
            region=torch.tensor((y0, y1, x0, x1)),
            crop=crop,
            antialias=y1 - y0 > crop or x1 - x0 > crop,  # shrinking along some axis
            flip=flip,
            shift=self._lighting(rng),
            path=str(self.path(index)),
        )

    def transform(
        self, image: np.ndarray, rng: np.random.Generator
    ) -> RawImages | list[torch.Tensor]:
        """uint8 RGB ``[H, W, 3]`` -> the sample's image: ``RawImages`` of one ``[3, crop, crop]``
        view (``[10, 3, crop, crop]`` with ten_crop) left for the trainer's device to normalise,
        or with test_scales a list of normalised float32 whole images ``[3, H_s, W_s]``, one per
        shorter side s."""
        views = self.views
        if views.test_scales:
            return [normalized_chw(resize_short_side(image, size)) for size in views.test_scales]
        if views.ten_crop:
            crops = ten_crop(resize_short_side(image, views.test_size), views.eval_crop)
            return RawImages(torch.from_numpy(crops), torch.zeros(3))
        region, flip = self._view(*image.shape[:2], rng)
        view = to_chw_tensor(resized_region(image, region, self.crop, flip))
        shift = self._lighting(rng)
        if self.augment is not None:  # torchvision's order: policy after the crop, erasing last
            view = self.augment.erase(self.augment.policy(view, rng), rng)
        return RawImages(view, shift)


def _split_folder(root: Path, split: str, layout: str) -> Path:
    """``root/split``, checked to hold class subfolders rather than loose images."""
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist. {layout}")
    folder = root / split
    if not folder.is_dir():
        found = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
        raise FileNotFoundError(f"{folder} does not exist (subfolders: {found}). {layout}")
    with os.scandir(folder) as entries:
        loose = any(e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS) for e in entries)
    if loose:
        raise ValueError(f"{folder} holds images directly instead of class subfolders. {layout}")
    return folder


def build_imagenet(
    root: str | Path,
    split: str,
    *,
    train: bool | None = None,
    views: ClsViews = DEFAULT_VIEWS,
    decode: DecodeDevice = "cpu",
    strict: bool = False,
) -> ImageFolderDataset:
    """The ImageNet ``split`` ("train" or "val") of ``root`` as an ``ImageFolderDataset``.

    ``train`` (augmentation) defaults to ``split == "train"``. Checks the layout of
    ``IMAGENET_LAYOUT`` and names it in errors; a class count other than 1000 (a subset) only
    warns.
    """
    if split not in ("train", "val"):
        raise ValueError(f"ImageNet split {split!r} is not one of train, val")
    folder = _split_folder(Path(root), split, IMAGENET_LAYOUT)
    dataset = ImageFolderDataset(
        folder,
        train=split == "train" if train is None else train,
        views=views,
        decode=decode,
        strict=strict,
    )
    if dataset.num_classes != IMAGENET_CLASSES:
        warnings.warn(
            f"{folder} has {dataset.num_classes} class folders, ImageNet has {IMAGENET_CLASSES}; "
            "continuing with a subset",
            stacklevel=2,
        )
    return dataset


def build_image_folder(
    path: str | Path,
    split: str,
    *,
    train: bool,
    views: ClsViews = DEFAULT_VIEWS,
    decode: DecodeDevice = "cpu",
    strict: bool = False,
) -> ImageFolderDataset:
    """The ``split`` subfolder of a user's ``path/<split>/<class>/<image>`` tree, with
    ImageNet's recipe (arguments as for ``ImageFolderDataset``)."""
    path = Path(path)
    layout = f"expected {path}/{split}/<class>/<image> files"
    return ImageFolderDataset(
        _split_folder(path, split, layout),
        train=train,
        views=views,
        decode=decode,
        strict=strict,
    )
