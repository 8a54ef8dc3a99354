"""The per-sample augmentation policies of the modern recipes (``data.augment``), reproducibly.

torchvision.transforms.v2's TrivialAugmentWide, RandAugment and RandomErasing, as torchvision's
classification reference uses them, on uint8 images. They draw from torch's global generator;
here each sample seeds it from its own generator and puts its state back, so a sample's
augmentation depends only on its seed and nothing else's draws change (exact resume, any
number of workers).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchvision.transforms import v2

from resdet.data.options import ClsAugment


class SampleAugment:
    """``policy(image, rng)`` and ``erase(image, rng)`` of one ``ClsAugment``.

    ``erase_value``: what RandomErasing writes, one value per channel in the image's units
    (the mean colour for uint8 images that are normalised later, 0 for normalised ones).
    Each call draws one seed from ``rng`` only when its transform is on, so that with
    augmentation off the sample's other draws are what they always were.
    """

    def __init__(self, cfg: ClsAugment, erase_value: Sequence[float] | float) -> None:
        self.cfg = cfg
        self._policy: v2.Transform | None = None
        if cfg.policy == "trivialaugment":
            self._policy = v2.TrivialAugmentWide()
        elif cfg.policy == "randaugment":
            self._policy = v2.RandAugment(num_ops=cfg.num_ops, magnitude=cfg.magnitude)
        self._erasing = None
        if cfg.random_erasing > 0:
            value = erase_value if np.isscalar(erase_value) else list(erase_value)
            self._erasing = v2.RandomErasing(p=cfg.random_erasing, value=value)

    def policy(self, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """uint8 ``[3, H, W]`` -> the same after TrivialAugmentWide or RandAugment (if on)."""
        return image if self._policy is None else _seeded(self._policy, image, rng)

    def erase(self, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """``[3, H, W]`` (any dtype) -> the same with a random rectangle erased (if drawn)."""
        return image if self._erasing is None else _seeded(self._erasing, image, rng)


def _seeded(transform: v2.Transform, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """``transform(image)`` with torch's CPU generator seeded from ``rng``, then put back.

    The generator's own ``manual_seed`` and state calls take microseconds, where
    ``torch.manual_seed`` (every device's generators) and ``fork_rng`` took 0.13 ms a sample.
    """
    generator = torch.default_generator
    state = generator.get_state()
    generator.manual_seed(int(rng.integers(2**63)))
    try:
        return transform(image)
    finally:
        generator.set_state(state)
