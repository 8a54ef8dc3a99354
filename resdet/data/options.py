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
    crop: int = 224  # pixels, square side
    test_size: int = 256  # pixels, shorter side before the centre or ten crops
    lighting_std: float = 0.1
    ten_crop: bool = False
    test_scales: tuple[int, ...] = ()  # pixels, shorter sides

    def __post_init__(self) -> None:
        if self.ten_crop and self.test_scales:
            raise ValueError("choose ten_crop or test_scales (multi-scale testing), not both")
        if not self.crop <= self.train_scale[0] <= self.train_scale[1]:
            raise ValueError(
                f"need crop <= train_scale[0] <= train_scale[1], got {self.crop}, "
                f"{self.train_scale}"
            )
        if self.crop > self.test_size:
            raise ValueError(f"crop {self.crop} must not exceed test_size {self.test_size}")

    @property
    def test_time_only(self) -> bool:
        """Whether these are test-time views that a training set cannot use."""
        return self.ten_crop or bool(self.test_scales)


DEFAULT_VIEWS = ClsViews()


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
