"""The typed option groups of the data sets, as configs and builders pass them whole.

Plain frozen dataclasses without heavy imports, so that the catalog and the configs can name
them without loading OpenCV or albumentations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# Where an image-folder set's JPEGs are decoded: in the DataLoader workers ("cpu") or, from the
# bytes the workers read, on the training device ("gpu": nvjpeg on CUDA), data.device_input.
DecodeDevice = Literal["cpu", "gpu"]


@dataclass(frozen=True)
class ClsViews:
    """How an image-folder set (ImageNet, ``folder:PATH``) turns an image into network input.

    Training (the paper's section 3.4): the shorter side resized to a random integer in
    ``train_scale`` (inclusive), a random ``crop`` x ``crop`` crop, a flip, PCA lighting with
    std ``lighting_std`` (0 disables it). Testing: the shorter side resized to ``test_size``,
    then the centre crop, or the 10 crops with ``ten_crop``, or with ``test_scales`` whole
    images at each of those shorter sides (fully-convolutional multi-scale testing).
    """

    train_scale: tuple[int, int] = (256, 480)  # pixels, shorter side
    crop: int = 224  # pixels, square side (of training views; of test views too unless test_crop)
    test_size: int = 256  # pixels, shorter side before the centre or ten crops
    lighting_std: float = 0.1
    ten_crop: bool = False
    test_scales: tuple[int, ...] = ()  # pixels, shorter sides
    # "scale": the paper's views above; "random_resized": torchvision's RandomResizedCrop (a
    # region of area fraction in area_range and aspect ratio 3/4..4/3, resized to crop x crop)
    train_crop: Literal["scale", "random_resized"] = "scale"
    area_range: tuple[float, float] = (0.08, 1.0)  # random_resized: fraction of the image area
    test_crop: int = 0  # pixels, square side of test views; 0: crop (train/test resolution)

    def __post_init__(self) -> None:
        if self.ten_crop and self.test_scales:
            raise ValueError("choose ten_crop or test_scales (multi-scale testing), not both")
        if (
            self.train_crop == "scale"
            and not self.crop <= self.train_scale[0] <= self.train_scale[1]
        ):
            raise ValueError(
                f"need crop <= train_scale[0] <= train_scale[1], got {self.crop}, "
                f"{self.train_scale}"
            )
        if self.eval_crop > self.test_size:
            raise ValueError(
                f"test crop {self.eval_crop} must not exceed test_size {self.test_size}"
            )
        if not 0 < self.area_range[0] <= self.area_range[1] <= 1:
            raise ValueError(f"area_range must satisfy 0 < low <= high <= 1, got {self.area_range}")

    @property
    def eval_crop(self) -> int:
        """The square side of test views: ``test_crop``, else the training ``crop``."""
        return self.test_crop or self.crop

    @property
    def test_time_only(self) -> bool:
        """Whether these are test-time views that a training set cannot use."""
        return self.ten_crop or bool(self.test_scales)


DEFAULT_VIEWS = ClsViews()


@dataclass(frozen=True)
class ClsAugment:
    """Per-sample augmentation of the modern recipes beyond the views (config ``data.augment``),
    torchvision.transforms.v2's on uint8 images in the workers, seeded by the sample's seed.

    ``policy``: ``trivialaugment`` (TrivialAugmentWide) or ``randaugment`` (RandAugment with
    ``num_ops`` operations of ``magnitude`` out of 31 bins); ``random_erasing``: the chance of
    RandomErasing (its default area 0.02-0.33 and aspect 0.3-3.3), erased to the mean colour,
    which normalisation maps to 0 as torchvision's value 0 after ``Normalize``.
    """

    policy: Literal["none", "trivialaugment", "randaugment"] = "none"
    num_ops: int = 2
    magnitude: int = 9
    random_erasing: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.random_erasing <= 1:
            raise ValueError(f"random_erasing is a probability, got {self.random_erasing}")
        if not 0 <= self.magnitude < 31 or self.num_ops < 1:
            raise ValueError(
                f"randaugment needs num_ops >= 1 and magnitude in 0..30, got {self.num_ops}, "
                f"{self.magnitude}"
            )

    @property
    def active(self) -> bool:
        return self.policy != "none" or self.random_erasing > 0


DEFAULT_AUGMENT = ClsAugment()


@dataclass(frozen=True)
class DetSizes:
    """The image sizes of a detection run and whether images without objects train.

    Training resizes the shorter side to ``min_size`` (several: one drawn per image, multi-scale
    training) with the longer side capped at ``max_size``; evaluation takes the last
    ``min_size``, as torchvision's and detectron2's transforms do. ``keep_empty`` keeps training
    images without objects as negatives.
    """

    min_size: tuple[int, ...] = (800,)  # pixels
    max_size: int = 1333  # pixels
    keep_empty: bool = True

    def __post_init__(self) -> None:
        if not self.min_size or min(self.min_size) <= 0 or self.max_size <= 0:
            raise ValueError(
                f"min_size={self.min_size!r} and max_size={self.max_size!r} must be positive "
                "pixel sizes"
            )

    def for_split(self, train: bool) -> tuple[int, ...]:
        """The shorter sides a training (all) or evaluation (the last) split resizes to."""
        return self.min_size if train else self.min_size[-1:]


DEFAULT_SIZES = DetSizes()
