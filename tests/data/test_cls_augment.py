"""The modern recipes' per-sample transforms: torchvision's, seeded by the sample."""

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from resdet.data.augment import SampleAugment
from resdet.data.cls_transforms import draw_random_resized_region, resized_region
from resdet.data.options import ClsAugment


def test_policies_are_torchvisions_under_the_samples_seed():
    image = torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8)
    augment = SampleAugment(ClsAugment(policy="trivialaugment"), 0.0)
    got = augment.policy(image, np.random.default_rng(7))
    seed = int(np.random.default_rng(7).integers(2**63))
    torch.manual_seed(seed)
    assert torch.equal(got, v2.TrivialAugmentWide()(image))
    again = augment.policy(image, np.random.default_rng(7))
    assert torch.equal(got, again)  # the sample's seed alone decides
    outputs = {augment.policy(image, np.random.default_rng(s)).sum().item() for s in range(8)}
    assert len(outputs) > 1


def test_random_erasing_writes_the_mean_colour():
    image = torch.full((3, 32, 32), 200, dtype=torch.uint8)
    augment = SampleAugment(ClsAugment(random_erasing=1.0), [124, 116, 104])
    erased = augment.erase(image, np.random.default_rng(0))
    changed = (erased != 200).any(0)
    assert changed.any()
    assert erased[:, changed].unique(dim=1).T.tolist() == [[124, 116, 104]]


def test_randaugment_settings_reach_torchvision():
    augment = SampleAugment(ClsAugment(policy="randaugment", num_ops=3, magnitude=7), 0.0)
    assert (augment._policy.num_ops, augment._policy.magnitude) == (3, 7)
    with pytest.raises(ValueError, match="magnitude in 0..30"):
        ClsAugment(policy="randaugment", magnitude=31)


def test_random_resized_regions_follow_torchvisions_rule():
    rng = np.random.default_rng(0)
    for _ in range(200):
        y0, y1, x0, x1 = draw_random_resized_region(300, 400, rng)
        h, w = y1 - y0, x1 - x0
        assert 0 <= y0 < y1 <= 300 and 0 <= x0 < x1 <= 400
        assert 0.08 * 0.98 <= h * w / 120000 <= 1.0
        assert 3 / 4 * 0.97 <= w / h <= 4 / 3 * 1.03
    # no draw fits: torchvision's fallback, the central region of the nearest allowed ratio
    region = draw_random_resized_region(100, 300, rng, (1.0, 1.0))
    torch.manual_seed(0)
    ref = v2.RandomResizedCrop(10, scale=(1.0, 1.0)).make_params([torch.zeros(3, 100, 300)])
    assert region == (
        ref["top"],
        ref["top"] + ref["height"],
        ref["left"],
        ref["left"] + ref["width"],
    )
    view = resized_region(np.zeros((100, 300, 3), np.uint8), region, 64, True)
    assert view.shape == (64, 64, 3)
