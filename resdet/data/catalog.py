"""The dataset registries: every name that ``train-cls``, ``train-det`` and configs accept.

Each name maps to a ``DatasetEntry``: a builder, a one-line summary and where the data is read
from. ``NAME:PATH`` entries (``folder``, ``coco-format``) take the data's path after the colon.
``resdet datasets`` lists both registries. A project adds its own set the same way::

    from resdet.data.catalog import DET_DATASETS, DatasetEntry
    DET_DATASETS.register("parts", DatasetEntry(build_parts, "machine parts, COCO format"))

Classification builders are called as ``build(path, root, split, train=..., strict=...,
**options)`` with the ``options`` their entry names (see ``build_cls_dataset``), detection
builders with one ``DetRequest``. Builders import their modules when called, so listing stays cheap.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from resdet.data.options import (
    DEFAULT_AUGMENT,
    DEFAULT_SIZES,
    DEFAULT_VIEWS,
    ClsAugment,
    ClsViews,
    DecodeDevice,
    DetSizes,
)
from resdet.registry import Registry

__all__ = [
    "CLS_DATASETS",
    "CLS_OPTIONS",
    "DET_DATASETS",
    "DatasetEntry",
    "DetRequest",
    "build_cls_dataset",
    "build_det_dataset",
    "prepare_det_dataset",
    "find_dataset",
    "spelling",
]


@dataclass(frozen=True)
class DatasetEntry:
    """One registered data set: how to build it and what ``resdet datasets`` says of it."""

    build: Callable[..., Dataset]
    summary: str
    default_root: str | None = None  # read from here when no root is given
    takes_path: bool = False  # spelled NAME:PATH
    # Options beyond the common ones that the builder uses: CLS_OPTIONS names for
    # classification sets, "val_annotations" for detection sets.
    options: frozenset[str] = field(default_factory=frozenset)
    # Generated sets: prepare(root) writes the set into root unless it is already there, so
    # that one process of a multi-process run can make it while the others wait.
    prepare: Callable[[str | Path], object] | None = None


@dataclass(frozen=True)
class DetRequest:
    """What a detection builder is asked for (``build_det_dataset``'s arguments)."""

    name: str  # as the user spelled it, for messages
    path: str | None  # the PATH of NAME:PATH
    root: str | Path | None
    train: bool
    with_masks: bool
    sizes: DetSizes
    val_annotations: str | None
    strict: bool = False  # every annotation or image problem is an error, not a counted drop

    @property
    def dataset_options(self) -> dict[str, Any]:
        """What every detection set class takes: ``min_size`` (those of this split),
        ``max_size``, ``keep_empty`` and ``strict``, as keyword arguments."""
        return {
            "min_size": self.sizes.for_split(self.train),
            "max_size": self.sizes.max_size,
            # Evaluation keeps every image: detections on an empty one are false positives.
            "keep_empty": self.sizes.keep_empty or not self.train,
            "strict": self.strict,
        }


CLS_DATASETS: Registry[DatasetEntry] = Registry("classification dataset", "resdet datasets")
DET_DATASETS: Registry[DatasetEntry] = Registry("detection dataset", "resdet datasets")


def spelling(registry: Registry[DatasetEntry], name: str) -> str:
    """How a registered name is written: ``name``, or ``name:PATH`` for sets at a path."""
    return f"{name}:PATH" if registry.get(name).takes_path else name


def find_dataset(registry: Registry[DatasetEntry], spec: str) -> tuple[DatasetEntry, str | None]:
    """The entry of ``spec`` (``NAME`` or ``NAME:PATH``) and its path part (None without one)."""
    name, colon, path = spec.partition(":")
    entry = registry.get(name)
    if entry.takes_path and not path:
        raise ValueError(f"{registry.kind} {name!r} is spelled {name}:PATH, got {spec!r}")
    if colon and not entry.takes_path:
        raise ValueError(f"{registry.kind} {name!r} takes no path, got {spec!r}; use {name}")
    return entry, path or None


def build_cls_dataset(
    name: str,
    root: str | Path | None,
    split: str,
    *,
    train: bool,
    views: ClsViews = DEFAULT_VIEWS,
    val_size: int = 0,
    download: bool = False,
    decode: DecodeDevice = "cpu",
    strict: bool = False,
    augment: ClsAugment = DEFAULT_AUGMENT,
) -> Dataset:
    """A classification dataset by registered name (``cifar10``, ``imagenet``, ``digits``,
    ``folder:PATH``, ...).

    ``root`` is the dataset folder (None: the entry's default, e.g. ``datasets/cifar10``); sets
    that read no folder (``digits``, ``folder:PATH``) refuse one.
    ``split`` is cifar10's train/val/test, imagenet's train/val, digits' train/test or any
    subfolder of PATH (``PATH/<split>/<class>/*``). ``train`` switches augmentation on.
    ``views`` (sizes, crops, ten-crop and multi-scale testing) and ``decode`` (``"gpu"``: the
    JPEGs are decoded on the training device, ``ImageFolderDataset``) apply to imagenet and
    folder sets, ``val_size`` and ``download`` to cifar10 (an entry's ``options`` say which); one
    that a set does not use is an error unless it has its default value (``CLS_OPTIONS``).
    ``strict`` makes an unreadable image an error rather than a counted skip, and ``augment``
    adds the modern recipes' per-sample transforms to training (every set takes both). Every dataset has ``num_classes`` and ``class_names`` and yields ``(image, label)``
    samples (docs/design.md#samples-seeds-and-resuming).
    """
    entry, path = find_dataset(CLS_DATASETS, name)
    options = {"views": views, "val_size": val_size, "download": download, "decode": decode}
    for option, value in options.items():
        if option not in entry.options and value != CLS_OPTIONS[option]:
            users = [
                spelling(CLS_DATASETS, n)
                for n in CLS_DATASETS
                if option in CLS_DATASETS.get(n).options
            ]
            raise ValueError(
                f"{name} does not take {_changed(option, value)}, which applies to "
                f"{', '.join(users)}; drop it or keep its default"
            )
    used = {option: options[option] for option in entry.options}
    dataset = entry.build(path, _root(name, entry, root), split, train=train, strict=strict, **used)
    if augment.active and train:
        dataset.use_augment(augment)
    return dataset


def _changed(option: str, value: Any) -> str:
    """``option=value``; for ``views``, only the fields that differ from their defaults."""
    if option != "views":
        return f"{option}={value!r}"
    default = CLS_OPTIONS["views"]
    return ", ".join(
        f"views.{f.name}={getattr(value, f.name)!r}"
        for f in fields(value)
        if getattr(value, f.name) != getattr(default, f.name)
    )


# build_cls_dataset's options and their defaults, read from its signature (one source).
CLS_OPTIONS: dict[str, Any] = {
    name: parameter.default
    for name, parameter in inspect.signature(build_cls_dataset).parameters.items()
    if parameter.kind is parameter.KEYWORD_ONLY and name not in ("train", "strict", "augment")
}


def build_det_dataset(
    name: str,
    root: str | Path | None,
    *,
    train: bool,
    sizes: DetSizes = DEFAULT_SIZES,
    with_masks: bool = False,
    val_annotations: str | None = None,
    strict: bool = False,
) -> Dataset:
    """The training (``train``) or evaluation split of the registered detection set ``name``.

    ``root`` as for ``build_cls_dataset``; images are resized as ``sizes`` says (evaluation at
    its last ``min_size``); ``with_masks`` adds instance masks;
    ``val_annotations`` is the evaluation JSON of a ``coco-format:PATH`` set; ``strict`` turns
    every dropped or clipped box and skipped image into an error.
    """
    entry, path = find_dataset(DET_DATASETS, name)
    if val_annotations is not None and "val_annotations" not in entry.options:
        raise ValueError(
            f"{name} has its own evaluation split; data.val_annotations={val_annotations!r} "
            "applies to coco-format:PATH only: drop it"
        )
    request = DetRequest(
        name, path, _root(name, entry, root), train, with_masks, sizes, val_annotations, strict
    )
    return entry.build(request)


def prepare_det_dataset(name: str, root: str | Path | None, *, write: bool = True) -> None:
    """Write the detection set ``name`` into ``root`` if it is generated and missing there.

    The name and root are checked whatever ``write`` says, so that in a multi-process run every
    process raises a bad spelling, not only the one (``write``) that makes the set.
    """
    entry, _ = find_dataset(DET_DATASETS, name)
    folder = _root(name, entry, root)
    if write and entry.prepare is not None:
        entry.prepare(folder)


def _root(name: str, entry: DatasetEntry, root: str | Path | None) -> str | Path | None:
    """The folder to read ``name`` from; a root for a set that has none is refused."""
    if root is not None and entry.default_root is None:
        raise ValueError(
            f"{name} does not read a data folder (given {root}); drop --data-dir / data.root"
            + (" and put the path in the name" if entry.takes_path else "")
        )
    return root or entry.default_root


def _cifar10(
    path: None, root: str, split: str, *, train: bool, strict: bool, val_size: int, download: bool
) -> Dataset:
    from resdet.data.cifar import Cifar10

    # strict has nothing to add: a batch is read whole or refused.
    return Cifar10(root, split, augment=train, val_size=val_size, download=download)


def _digits(path: None, root: None, split: str, *, train: bool, strict: bool) -> Dataset:
    from resdet.data.digits import Digits

    return Digits(split, augment=train)


def _imagenet(
    path: None,
    root: str,
    split: str,
    *,
    train: bool,
    strict: bool,
    views: ClsViews,
    decode: DecodeDevice,
) -> Dataset:
    from resdet.data.folder import build_imagenet

    return build_imagenet(root, split, train=train, strict=strict, views=views, decode=decode)


def _image_folder(
    path: str,
    root: None,
    split: str,
    *,
    train: bool,
    strict: bool,
    views: ClsViews,
    decode: DecodeDevice,
) -> Dataset:
    from resdet.data.folder import build_image_folder

    return build_image_folder(path, split, train=train, strict=strict, views=views, decode=decode)


CLS_DATASETS.register(
    "cifar10",
    DatasetEntry(
        _cifar10,
        "CIFAR-10 python batches (paper section 4.2); train/val/test",
        "datasets/cifar10",
        options=frozenset({"val_size", "download"}),
    ),
)
CLS_DATASETS.register(
    "imagenet",
    DatasetEntry(
        _imagenet,
        "ImageNet 2012 in class folders (paper section 3.4); train/val",
        "datasets/imagenet",
        options=frozenset({"views", "decode"}),
    ),
)
CLS_DATASETS.register(
    "digits",
    DatasetEntry(_digits, "scikit-learn's 1,797 digits at 32x32, embedded; train/test"),
)
CLS_DATASETS.register(
    "folder",
    DatasetEntry(
        _image_folder,
        "PATH/<split>/<class>/<image>, ImageNet's recipe",
        takes_path=True,
        options=frozenset({"views", "decode"}),
    ),
)


def _ensure_shapes(root: str | Path) -> Path:
    from resdet.data.shapes import ensure_shapes

    return ensure_shapes(root)


def _shapes(r: DetRequest) -> Dataset:
    from resdet.data.shapes import build_shapes

    split = "train" if r.train else "val"
    return build_shapes(
        split,
        train=r.train,
        root=r.root,
        with_masks=r.with_masks,
        **r.dataset_options,
    )


def _coco(r: DetRequest) -> Dataset:
    from resdet.data.coco import build_coco

    split = "train" if r.train else "val"
    return build_coco(
        r.root,
        split,
        train=r.train,
        with_masks=r.with_masks,
        **r.dataset_options,
    )


def _coco_format(r: DetRequest) -> Dataset:
    from resdet.data.coco import build_coco_format

    if not r.train and r.val_annotations is None:
        warnings.warn(
            f"coco-format:{r.path}: no data.val_annotations given, evaluating on the training file",
            stacklevel=3,
        )
    annotations = r.path if r.train or r.val_annotations is None else r.val_annotations
    return build_coco_format(
        annotations,
        train=r.train,
        with_masks=r.with_masks,
        **r.dataset_options,
    )


def _voc(
    train_parts: tuple[tuple[str, str], ...], test_part: tuple[str, str]
) -> Callable[[DetRequest], Dataset]:
    """The builder of one VOC training combination and its test split."""

    def build(r: DetRequest) -> Dataset:
        from resdet.data.voc import VocConcat, build_voc

        if r.with_masks:
            raise ValueError(
                f"{r.name}: PASCAL VOC detection has no instance masks; drop --task segm "
                "(model.masks)"
            )
        if not r.train:
            return build_voc(r.root, *test_part, train=False, **r.dataset_options)
        sets = [
            build_voc(r.root, year, split, train=True, **r.dataset_options)
            for year, split in train_parts
        ]
        return sets[0] if len(sets) == 1 else VocConcat(sets)

    return build


# name: (training parts as (year, split)), (test year, test split)
VOC_SETS = {
    "voc0712": ((("2007", "trainval"), ("2012", "trainval")), ("2007", "test")),
    "voc2007": ((("2007", "trainval"),), ("2007", "test")),
    "voc2012": ((("2012", "train"),), ("2012", "val")),
}

DET_DATASETS.register(
    "shapes",
    DatasetEntry(
        _shapes,
        "resdet's generated shapes (1,000 + 100 images, boxes and masks); made on first use",
        "datasets/shapes",
        prepare=_ensure_shapes,
    ),
)
DET_DATASETS.register(
    "coco",
    DatasetEntry(_coco, "MS COCO 2017 train/val, boxes and masks", "datasets/coco"),
)
DET_DATASETS.register(
    "coco-format",
    DatasetEntry(
        _coco_format,
        "any COCO-format instances JSON at PATH (images beside it)",
        takes_path=True,
        options=frozenset({"val_annotations"}),
    ),
)
for _name, (_train, _test) in VOC_SETS.items():
    _parts = " + ".join(f"{year} {split}" for year, split in _train)
    DET_DATASETS.register(
        _name,
        DatasetEntry(
            _voc(_train, _test),
            f"PASCAL VOC: train on {_parts}, test on {' '.join(_test)}",
            "datasets/voc/VOCdevkit",
        ),
    )
