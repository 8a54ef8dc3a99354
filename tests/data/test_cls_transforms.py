"""Tests of resdet.data.cls_transforms against hand-computed slices and torchvision."""

import cv2
import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from resdet.data import cls_transforms as T


def hwc_to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def unit_normalised(image: np.ndarray, shift: np.ndarray | float = 0.0) -> torch.Tensor:
    """The reference normalisation: ``(x / 255 + shift - mean) / std`` in float64, CHW."""
    unit = image.astype(np.float64) / 255 + shift
    out = (unit - np.array(T.IMAGENET_MEAN)) / np.array(T.IMAGENET_STD)
    return torch.from_numpy(out.transpose(2, 0, 1).astype(np.float32))


def scale_crop_flip(image, rng, scale, crop):
    """The paper's training view as the image folders compute it."""
    return T.resized_window(image, T.draw_train_window(*image.shape[:2], rng, scale, crop), crop)


def center_view(image, size, crop):
    return T.resized_window(image, T.center_window(*image.shape[:2], size, crop), crop)


def test_parse_key_index_seed_and_range():
    index, rng = T.parse_key((3, 7), 10)
    assert index == 3
    assert rng.random() == np.random.default_rng(7).random()
    assert T.parse_key(-1, 10)[0] == 9
    assert T.parse_key([2, 5], 10)[0] == 2
    with pytest.raises(IndexError, match="index 10 is out of range"):
        T.parse_key(10, 10)
    with pytest.raises(TypeError, match=r"\(index, seed\)"):
        T.parse_key((1, 2, 3), 10)


def test_pad_crop_flip_equals_a_slice_of_the_zero_padded_image():
    image = np.random.default_rng(0).integers(1, 256, size=(32, 32, 3)).astype(np.float32)
    padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
    flips = set()
    for seed in range(40):
        out = T.pad_crop_flip(image, np.random.default_rng(seed), pad=4, flip=True)
        # The same draws, in the documented order: offset (y, x), then the coin.
        rng = np.random.default_rng(seed)
        y, x = rng.integers(0, 9, size=2)
        expected = padded[y : y + 32, x : x + 32]
        flipped = rng.random() < 0.5
        flips.add(flipped)
        np.testing.assert_array_equal(out, expected[:, ::-1] if flipped else expected)
    assert flips == {True, False}


def test_pad_crop_without_flip_never_mirrors():
    image = np.arange(8 * 8 * 1, dtype=np.float32).reshape(8, 8, 1) + 1
    for seed in range(20):
        out = T.pad_crop_flip(image, np.random.default_rng(seed), pad=2, flip=False)
        # Values grow left to right in every row of the source; only a mirror would reverse them.
        rows = [r[r > 0] for r in out[..., 0]]
        assert all(np.all(np.diff(r) > 0) for r in rows if r.size)


def test_ten_crop_matches_hand_slices_and_torchvision():
    image = np.random.default_rng(1).integers(0, 256, size=(37, 50, 3)).astype(np.uint8)
    views = T.ten_crop(image, 20)
    assert views.shape == (10, 3, 20, 20) and views.flags.c_contiguous

    def hwc(i: int) -> np.ndarray:
        return views[i].transpose(1, 2, 0)

    np.testing.assert_array_equal(hwc(0), image[0:20, 0:20])
    # Centre offsets as torchvision's center_crop computes them: round(17 / 2) = 8 (Python
    # rounds halves to even) and round(30 / 2) = 15.
    np.testing.assert_array_equal(hwc(4), image[8:28, 15:35])
    # View 5 is the top-left crop of the mirror, i.e. the mirrored top-right crop.
    np.testing.assert_array_equal(hwc(5), image[0:20, 30:50][:, ::-1])
    reference = TF.ten_crop(hwc_to_tensor(image), [20, 20])
    for ours, theirs in zip(views, reference, strict=True):
        np.testing.assert_array_equal(ours, theirs.numpy())


@pytest.mark.parametrize("shape", [(37, 50), (50, 37), (64, 64)])
def test_center_window_matches_torchvision_center_crop(shape):
    image = np.random.default_rng(2).integers(0, 256, size=(*shape, 3)).astype(np.uint8)
    ours = center_view(image, min(shape), 21)  # at the image's own size: a plain crop
    theirs = TF.center_crop(hwc_to_tensor(image), [21, 21]).numpy().transpose(1, 2, 0)
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("shape", [(375, 500), (500, 375), (100, 150), (256, 300)])
def test_resize_short_side_has_torchvisions_output_size(shape):
    image = np.zeros((*shape, 3), dtype=np.uint8)
    out = T.resize_short_side(image, 256)
    expected = TF.resize(hwc_to_tensor(image), [256]).shape[1:]
    assert out.shape == (*expected, 3)


def test_resize_keeps_a_constant_image_constant():
    image = np.full((60, 90, 3), (10, 120, 250), dtype=np.uint8)
    for size in (30, 120):  # area shrink and bilinear enlarge
        out = T.resize_short_side(image, size)
        assert (out == np.array([10, 120, 250], dtype=np.uint8)).all()


def test_training_scale_is_drawn_from_the_whole_inclusive_range():
    # A 32-px ramp at shorter side 32 comes back as it is (or mirrored); at 33 it is resampled.
    ramp = np.tile((np.arange(32, dtype=np.uint8) * 8)[None, :, None], (32, 1, 3))
    kept = [
        any(
            np.array_equal(view, same)
            for same in (ramp, ramp[:, ::-1])
            for view in [scale_crop_flip(ramp, np.random.default_rng(s), (32, 33), 32)]
        )
        for s in range(40)
    ]
    assert any(kept) and not all(kept)


def test_lighting_shift_is_the_pca_offset_of_fb_resnet_torch():
    shift = T.lighting_shift(np.random.default_rng(3), alphastd=0.1)
    alpha = np.random.default_rng(3).normal(0.0, 0.1, size=3)
    # fb.resnet.torch transforms.lua Lighting: rgb[i] = sum_j eigvec[i][j] * alpha[j] * eigval[j]
    rgb = [
        sum(T.IMAGENET_EIGVEC[i, j] * alpha[j] * T.IMAGENET_EIGVAL[j] for j in range(3))
        for i in range(3)
    ]
    np.testing.assert_allclose(shift, rgb, atol=1e-6)


def test_normalisation_and_mean_image_units():
    image = np.full((2, 2, 3), 255, dtype=np.uint8)
    out = T.normalized_chw(image)
    np.testing.assert_allclose(
        out[:, 0, 0], (1 - np.array(T.IMAGENET_MEAN)) / np.array(T.IMAGENET_STD), rtol=1e-6
    )
    mean = np.full((2, 2, 3), 100.0, dtype=np.float32)
    np.testing.assert_allclose(T.subtract_mean_image(image, mean), 155.0 / 255.0, rtol=1e-6)


def test_to_chw_tensor_copies_to_a_contiguous_layout():
    image = np.arange(5 * 6 * 3, dtype=np.float32).reshape(5, 6, 3)
    chw = T.to_chw_tensor(image[:, ::-1])
    assert chw.shape == (3, 5, 6) and chw.is_contiguous() and chw[2, 0, 0] == image[0, 5, 2]


def _resized_crop_flip(
    image: np.ndarray, rng: np.random.Generator, scale: tuple[int, int], crop: int
) -> tuple[np.ndarray, np.ndarray]:
    """The paper's view the direct way: resize the whole image, then crop and flip it."""
    resized = T.resize_short_side(image, int(rng.integers(scale[0], scale[1] + 1)))
    h, w = resized.shape[:2]
    top, left = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
    view = resized[top : top + crop, left : left + crop]
    return resized, view[:, ::-1] if rng.random() < 0.5 else view


@pytest.mark.parametrize("shape", [(375, 500), (500, 375), (150, 120)])
def test_crop_first_training_view_is_the_crop_of_the_resized_image(shape):
    """The training view resizes only the crop's region, with the same random draws as resizing
    the whole image, cropping and flipping, within half a source pixel (on these smooth noise
    images: under 3 grey levels on average)."""
    noise = np.random.default_rng(0).integers(0, 256, size=(*shape, 3)).astype(np.uint8)
    image = cv2.blur(noise, (9, 9))
    for seed in range(12):
        old_rng, new_rng = np.random.default_rng(seed), np.random.default_rng(seed)
        resized, old = _resized_crop_flip(image, old_rng, (256, 480), 224)
        new = scale_crop_flip(image, new_rng, (256, 480), 224)
        assert new.shape == old.shape == (224, 224, 3) and new.dtype == np.uint8
        assert old_rng.random() == new_rng.random()  # the same draws, in the same order
        difference = np.abs(old.astype(int) - new.astype(int)).mean()
        assert difference < 3.0, (seed, resized.shape, difference)


def test_normalized_chw_is_unit_float_plus_shift_normalised():
    image = np.random.default_rng(3).integers(0, 256, size=(5, 7, 3)).astype(np.uint8)
    shift = np.array([0.01, -0.02, 0.03], dtype=np.float32)
    expected = unit_normalised(image, shift)
    torch.testing.assert_close(T.normalized_chw(image, shift), expected, rtol=1e-5, atol=1e-5)
    plain = unit_normalised(image)
    torch.testing.assert_close(T.normalized_chw(image), plain, rtol=1e-5, atol=1e-5)
    assert T.normalized_chw(image).is_contiguous()


@pytest.mark.parametrize("shape", [(375, 500), (200, 150), (256, 300)])
def test_crop_first_centre_view_is_the_centre_crop_of_the_resized_image(shape):
    noise = np.random.default_rng(1).integers(0, 256, size=(*shape, 3)).astype(np.uint8)
    image = cv2.blur(noise, (9, 9))
    resized = T.resize_short_side(image, 256)
    top, left = round((resized.shape[0] - 224) / 2), round((resized.shape[1] - 224) / 2)
    old = resized[top : top + 224, left : left + 224]
    new = center_view(image, 256, 224)
    assert new.shape == old.shape == (224, 224, 3)
    limit = 0.0 if min(shape) == 256 else 3.0  # within half a source pixel
    assert np.abs(old.astype(int) - new.astype(int)).mean() <= limit


def test_shrink_is_torchvisions_antialiased_bilinear_resize():
    image = np.random.default_rng(4).integers(0, 256, size=(61, 83, 3)).astype(np.uint8)
    region = image[5:50, 7:70]  # a strided view, as resized_window passes
    expected = TF.resize(hwc_to_tensor(region), [30, 41], antialias=True)
    assert torch.equal(hwc_to_tensor(T.shrink(region, 30, 41)), expected)


def test_a_folder_training_sample_is_the_old_float_pipeline_within_interpolation(tmp_path):
    """uint8 through the worker, normalisation and lighting on the device: the same numbers as
    resizing the whole decoded image, cropping, flipping, adding lighting and normalising on the
    CPU in float (as resdet did before), up to interpolation rounding."""
    from resdet.data.device_input import RawImages
    from resdet.data.folder import ImageFolderDataset

    noise = np.random.default_rng(2).integers(0, 256, size=(300, 400, 3)).astype(np.uint8)
    rgb = cv2.blur(noise, (9, 9))
    (tmp_path / "c").mkdir()
    cv2.imwrite(str(tmp_path / "c" / "a.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    dataset = ImageFolderDataset(tmp_path, train=True)
    for seed in range(6):
        raw, _ = dataset[(0, seed)]
        batch = RawImages(raw.pixels[None], raw.shift[None])
        new = batch.to_model_input()[0]
        rng = np.random.default_rng(seed)
        _, view = _resized_crop_flip(rgb, rng, (256, 480), 224)
        old = unit_normalised(view, T.lighting_shift(rng))
        assert new.shape == old.shape == (3, 224, 224)
        # 3 grey levels of mean difference, in normalised units.
        assert (new - old).abs().mean() < 3 / 255 / min(T.IMAGENET_STD), seed
