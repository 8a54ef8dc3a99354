"""Decoding image files, and counting the ones that cannot be decoded.

Both the classification folders and the detection sets read images this way, so a truncated or
corrupt file is handled alike everywhere: never used half-decoded, reported by name, counted.
"""

from __future__ import annotations

import multiprocessing
import warnings
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from torch.utils.data import get_worker_info

_SLOTS = 257  # the main process and up to 256 DataLoader workers


def decode_rgb(path: Path) -> np.ndarray | None:
    """``path`` decoded to uint8 RGB ``[H, W, 3]``, or None when it is missing or undecodable.

    ``cv2.imdecode`` of the file's bytes, not ``cv2.imread``: measured with OpenCV 5.0, imread
    fills the missing part of a truncated JPEG with grey and returns it, imdecode rejects it.
    EXIF orientation is ignored, as PIL (and so torchvision and the COCO/VOC annotations) does.
    OpenCV >= 4.11 decodes to RGB directly (a tenth faster than decoding BGR and converting).
    """
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError:
        return None
    if _IMREAD_RGB is not None:
        return cv2.imdecode(data, _IMREAD_RGB | cv2.IMREAD_IGNORE_ORIENTATION)
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


_IMREAD_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)


class SkipCounter:
    """How many unreadable images were skipped, by every process that loads from one data set.

    One counter per process (slot 0: the process that made the data set, 1 + k: DataLoader
    worker k) in shared memory, so that skips in workers reach the training process. No two
    processes write the same slot, so no lock is needed (a lock would tie the data set to one
    multiprocessing start method).
    """

    def __init__(self) -> None:
        self._slots = multiprocessing.RawArray("q", _SLOTS)

    @property
    def total(self) -> int:
        """Images skipped so far, all processes together."""
        return sum(self._slots)

    def skip(self, path: Path, instead: str) -> None:
        """Count one skipped image and warn, naming it and what is done ``instead``."""
        worker = get_worker_info()
        self._slots[0 if worker is None else 1 + worker.id % (_SLOTS - 1)] += 1
        warnings.warn(
            f"skipping unreadable or truncated image {path}; {instead} (replace or delete the "
            "file, or pass --strict to stop at the first one)",
            stacklevel=3,
        )


def first_readable(
    index: int, count: int, read: Callable[[int], np.ndarray | None], where: object
) -> tuple[int, np.ndarray]:
    """``(i, image)`` for the first of ``index, index + 1, ...`` (wrapping at ``count``) that
    ``read`` decodes; ``read`` returns None for a file it skipped. RuntimeError naming ``where``
    when none decodes."""
    for step in range(count):
        candidate = (index + step) % count
        image = read(candidate)
        if image is not None:
            return candidate, image
    raise RuntimeError(f"no image of {where} could be decoded")


def unreadable_error(path: Path, why: str) -> ValueError | FileNotFoundError:
    """The error for an image that cannot be decoded where skipping it is not allowed."""
    if not Path(path).is_file():
        return FileNotFoundError(f"image file {path} does not exist ({why}); check the data root")
    return ValueError(
        f"cannot decode image file {path}: it is truncated or not an image ({why}); replace it"
    )
