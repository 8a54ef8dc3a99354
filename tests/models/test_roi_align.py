"""The gather RoIAlign gives torchvision's roi_align / MultiScaleRoIAlign numbers and gradients."""

from collections import OrderedDict

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import roi_align as tv_roi_align

from resdet.models.roi_align import GatherMultiScaleRoIAlign, roi_align


def _rois(count: int, images: int, extent: float, seed: int) -> torch.Tensor:
    """[count, 5] RoIs, some reaching past the image, some tiny, some degenerate."""
    g = torch.Generator().manual_seed(seed)
    corner = torch.rand(count, 2, generator=g) * (extent * 1.2) - 0.1 * extent
    size = torch.rand(count, 2, generator=g) * extent * 0.7
    size[: count // 8] *= 0.01  # smaller than one feature pixel
    size[count // 8 : count // 8 + 2] = 0.0  # zero width and height
    boxes = torch.cat([corner, corner + size], 1)
    ids = torch.randint(0, images, (count, 1), generator=g).float()
    return torch.cat([ids, boxes], 1)


def _features(shape: tuple[int, ...], channels_last: bool, seed: int) -> torch.Tensor:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x.requires_grad_()


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [0, 1, 2, 3])
@pytest.mark.parametrize("channels_last", [False, True])
def test_roi_align_equals_torchvision(aligned: bool, sampling_ratio: int, channels_last: bool):
    features = _features((3, 8, 19, 26), channels_last, seed=0)
    rois = _rois(64, images=3, extent=26 / 0.25, seed=sampling_ratio)
    args = ((7, 5), 0.25, sampling_ratio, aligned)

    expected = tv_roi_align(features, rois, *args)
    upstream = torch.randn_like(expected)
    (expected_grad,) = torch.autograd.grad(expected, features, upstream)
    pooled = roi_align(features, rois, *args)
    (grad,) = torch.autograd.grad(pooled, features, upstream)

    assert pooled.shape == expected.shape == (64, 8, 7, 5)
    torch.testing.assert_close(pooled, expected, rtol=0, atol=2e-6)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-5)
    assert expected.abs().sum() > 0 and (expected == 0).any()  # the edge rules were exercised


def test_no_rois_give_an_empty_result_and_zero_gradient() -> None:
    features = _features((1, 4, 8, 8), channels_last=False, seed=1)
    pooled = roi_align(features, torch.zeros(0, 5), 7, 1.0, 2)
    pooled.sum().backward()
    assert pooled.shape == (0, 4, 7, 7)
    assert features.grad is not None and not features.grad.any()


def test_bf16_autocast_returns_the_features_dtype_like_torchvision() -> None:
    features = torch.randn(1, 4, 8, 8).bfloat16()
    rois = torch.tensor([[0.0, 1.0, 1.5, 6.0, 7.0]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = tv_roi_align(features, rois, 3, 1.0, 2)
        pooled = roi_align(features, rois, 3, 1.0, 2)
    assert pooled.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(pooled, expected)


def test_float64_gradients_pass_gradcheck_and_boxes_get_none():
    features = _features((2, 3, 6, 7), channels_last=False, seed=2).double()
    rois = _rois(6, images=2, extent=7 / 0.5, seed=3).double().requires_grad_()
    args = ((3, 2), 0.5, 0, True)
    torch.autograd.gradcheck(lambda f: roi_align(f, rois.detach(), *args), (features,))
    pooled = roi_align(features, rois, *args)
    assert pooled.dtype == torch.float64 and pooled.is_contiguous()
    torch.testing.assert_close(pooled, tv_roi_align(features, rois, *args), rtol=0, atol=1e-12)
    pooled.sum().backward()
    assert rois.grad is None  # torchvision passes no gradient to the boxes either


def test_boxes_as_a_list_per_image():
    features = _features((2, 4, 10, 10), channels_last=True, seed=4)
    boxes = [torch.tensor([[1.0, 2.0, 30.0, 20.0]]), torch.tensor([[0.0, 0.0, 9.0, 9.0]] * 2)]
    expected = tv_roi_align(features, boxes, 5, 0.25, 2)
    torch.testing.assert_close(roi_align(features, boxes, 5, 0.25, 2), expected)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ([0.0, 1.0, float("nan"), 5.0, 6.0], "non-finite coordinates"),
        ([2.0, 1.0, 1.0, 5.0, 6.0], r"integers in 0..1 \(the feature batch\), got \[2.0\]"),
    ],
)
def test_bad_rois_are_named(bad: list[float], message: str):
    features = torch.randn(2, 4, 8, 8)
    with pytest.raises(ValueError, match=message):
        roi_align(features, torch.tensor([bad]), 3, 1.0, 2)


def _image_boxes(count: int, height: int, width: int, seed: int) -> torch.Tensor:
    """[count, 4] boxes inside the image, 4 to 600 px on a side (log-uniform): all FPN levels."""
    g = torch.Generator().manual_seed(seed)
    size = torch.exp(torch.empty(count, 2).uniform_(1.4, 6.4, generator=g))
    size = torch.minimum(size, torch.tensor([width - 1.0, height - 1.0]))
    corner = torch.rand(count, 2, generator=g) * (torch.tensor([width, height]) - size)
    return torch.cat([corner, corner + size], 1)


@pytest.mark.parametrize(
    ("names", "output_size", "sampling_ratio"),
    [(["0", "1", "2", "3"], 7, 2), (["0", "1", "2", "3"], 14, 1), (["res4"], 14, 0)],
)
def test_multiscale_equals_torchvision(names: list[str], output_size: int, sampling_ratio: int):
    # FPN levels P2..P5 and P6 ("pool", which the poolers skip) of a 480x640 batch; C4's res4.
    strides = {"0": 4, "1": 8, "2": 16, "3": 32, "pool": 64, "res4": 16}
    features = OrderedDict(
        (name, _features((2, 6, -(-480 // s), -(-640 // s)), True, seed=i))
        for i, (name, s) in enumerate(strides.items())
    )
    image_shapes = [(480, 640), (400, 600)]
    boxes = [_image_boxes(60, h, w, seed=i) for i, (h, w) in enumerate(image_shapes)]

    reference = MultiScaleRoIAlign(names, output_size, sampling_ratio)
    pooler = GatherMultiScaleRoIAlign(names, output_size, sampling_ratio)
    expected = reference(features, boxes, image_shapes)
    upstream = torch.randn_like(expected)
    inputs = [features[name] for name in names]
    expected_grads = torch.autograd.grad(expected, inputs, upstream)
    pooled = pooler(features, boxes, image_shapes)
    grads = torch.autograd.grad(pooled, inputs, upstream)

    assert pooler.scales == reference.scales
    torch.testing.assert_close(pooled, expected, rtol=0, atol=2e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = OrderedDict((name, f.detach().bfloat16()) for name, f in features.items())
        expected_bf16 = reference(half, boxes, image_shapes)
        pooled_bf16 = pooler(half, boxes, image_shapes)
    assert pooled_bf16.dtype == expected_bf16.dtype == torch.bfloat16
    torch.testing.assert_close(pooled_bf16, expected_bf16)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        assert expected_grad.any()  # every level received RoIs
        torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-5)
