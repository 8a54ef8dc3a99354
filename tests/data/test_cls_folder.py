"""Tests of resdet.data.folder on tiny ImageNet-layout trees of real image files."""

import warnings
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from resdet.data import build_cls_dataset
from resdet.data.cls_transforms import IMAGENET_MEAN, IMAGENET_STD, resize_short_side, shrink
from resdet.data.device_input import RawImages
from resdet.data.folder import ImageFolderDataset, build_imagenet
from resdet.data.options import ClsViews

WNIDS = ["n01440764", "n01443537", "n01484850"]  # the first three ImageNet classes, sorted


def write_rgb(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def make_tree(root: Path, per_class: int = 2, shape=(40, 52)) -> Path:
    """root/{train,val}/<wnid>/<wnid>_<k>.JPEG with random smooth images of ``shape`` (H, W)."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for wnid in WNIDS:
            for k in range(per_class):
                noise = rng.integers(0, 256, size=(*shape, 3)).astype(np.uint8)
                write_rgb(root / split / wnid / f"{wnid}_{k}.JPEG", cv2.blur(noise, (5, 5)))
    return root


@pytest.fixture
def tree(tmp_path):
    return make_tree(tmp_path / "imagenet")


SMALL = ClsViews(train_scale=(32, 40), crop=24, test_size=32)


def small(root: Path, *, train: bool, **views) -> ImageFolderDataset:
    return ImageFolderDataset(root, train=train, views=replace(SMALL, **views))


def model_input(image: RawImages) -> torch.Tensor:
    """A sample's image as the trainer's device makes it (a batch of one, normalised)."""
    assert image.pixels.dtype == torch.uint8 and image.shift.shape == (3,)
    return RawImages(image.pixels[None], image.shift[None]).to_model_input()[0]


def test_labels_follow_sorted_class_folders(tree):
    dataset = small(tree / "train", train=False)
    assert dataset.class_names == WNIDS and dataset.num_classes == 3 and len(dataset) == 6
    assert dataset.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert dataset.path(2) == tree / "train" / WNIDS[1] / f"{WNIDS[1]}_0.JPEG"
    assert [dataset[i][1] for i in range(6)] == [0, 0, 1, 1, 2, 2]


def test_known_pixel_round_trips_through_decoding_and_centre_crop(tmp_path):
    # PNG is lossless, so the decoded pixel is exact; 30x40 at test_size 30 is not resized.
    image = np.zeros((30, 40, 3), dtype=np.uint8)
    image[10, 12] = (200, 100, 50)  # RGB
    write_rgb(tmp_path / "cls" / "a.png", image)
    dataset = ImageFolderDataset(tmp_path, train=False, views=ClsViews((20, 30), 20, 30))
    raw, label = dataset[0]
    out = model_input(raw)
    assert out.shape == (3, 20, 20) and out.dtype == torch.float32 and label == 0
    # Centre crop offsets round(10 / 2) = 5 and round(20 / 2) = 10 (torchvision's rule).
    expected = (np.array([200, 100, 50]) / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(out[:, 10 - 5, 12 - 10].numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(
        out[:, 0, 0].numpy(), -np.array(IMAGENET_MEAN) / IMAGENET_STD, rtol=1e-5
    )


def test_jpeg_pixels_decode_as_rgb(tmp_path):
    # A flat colour survives JPEG compression to within a couple of grey levels.
    write_rgb(tmp_path / "cls" / "a.jpg", np.full((32, 32, 3), (230, 20, 40), dtype=np.uint8))
    dataset = ImageFolderDataset(tmp_path, train=False, views=ClsViews((32, 32), 32, 32))
    rgb = dataset.read_rgb(0)
    assert np.abs(rgb.astype(int) - (230, 20, 40)).max() <= 3


def test_train_augmentation_is_seeded_with_the_right_shape(tree):
    dataset = small(tree / "train", train=True)
    raw, label = dataset[(3, 42)]
    a = model_input(raw)
    assert a.shape == (3, 24, 24) and a.dtype == torch.float32 and label == 1
    assert torch.equal(a, model_input(dataset[(3, 42)][0]))
    assert any(not torch.equal(a, model_input(dataset[(3, s)][0])) for s in range(5))
    # Normalised [0, 1] pixels plus lighting noise of a few hundredths stay within about
    # (0 - 0.485) / 0.229 - 1 and (1 - 0.406) / 0.225 + 1.
    assert a.min() > -3.2 and a.max() < 3.7


def test_ten_crop_views_are_hand_computable(tree):
    dataset = small(tree / "val", train=False, ten_crop=True)
    raw, label = dataset[4]
    views = model_input(raw)
    assert views.shape == (10, 3, 24, 24) and label == 2
    # 40x52 -> short side 32: 32x41 (int(32 * 52 / 40) = 41, torchvision's size rule).
    resized = shrink(dataset.read_rgb(4), 32, 41)
    unit = (resized / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(views[0].numpy(), unit[:24, :24].transpose(2, 0, 1), atol=1e-5)
    np.testing.assert_allclose(
        views[5].numpy(), unit[:24, -24:][:, ::-1].transpose(2, 0, 1), atol=1e-5
    )
    # The centre view resizes only its window (within half a source pixel).
    centre = model_input(small(tree / "val", train=False)[4][0])
    assert (views[4] - centre).abs().mean() < 3 / 255 / min(IMAGENET_STD)


def test_truncated_jpeg_is_skipped_with_a_warning_and_counted(tree):
    bad = tree / "train" / WNIDS[0] / f"{WNIDS[0]}_1.JPEG"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    dataset = small(tree / "train", train=True)
    with pytest.warns(UserWarning, match=f"truncated image .*{bad.name}"):
        image, label = dataset[(1, 7)]
    # The next index (2, the first image of class 1) stands in, with its own label.
    assert dataset.skipped == 1 and label == 1
    assert torch.equal(image.pixels, dataset[(2, 7)][0].pixels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert [dataset[i][1] for i in range(6)] == [0, 1, 1, 1, 2, 2]
    assert dataset.skipped == 2
    # A file deleted after the scan is skipped too; the last index wraps around to index 0.
    dataset.path(5).unlink()
    with pytest.warns(UserWarning, match=f"unreadable .*{WNIDS[2]}_1.JPEG"):
        assert dataset[5][1] == 0
    assert dataset.skipped == 3


def test_skips_in_dataloader_workers_are_counted_in_the_main_process(tree):
    bad = tree / "train" / WNIDS[1] / f"{WNIDS[1]}_0.JPEG"
    bad.write_bytes(b"not a JPEG")
    dataset = small(tree / "train", train=False)
    loader = DataLoader(dataset, batch_size=3, num_workers=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the workers' warnings go to their own stderr
        labels = torch.cat([batch_labels for _, batch_labels in loader]).tolist()
    assert labels == [0, 0, 1, 1, 2, 2]  # index 2 was replaced by index 3, of the same class
    assert dataset.skipped == 1


def test_multi_scale_views_are_whole_images_at_each_shorter_side(tree):
    dataset = small(tree / "val", train=False, test_scales=(24, 40))
    views, label = dataset[0]
    image = cv2.imread(str(dataset.path(0)))
    assert label == 0 and [min(v.shape[1:]) for v in views] == [24, 40]
    # whole images (the aspect ratio kept), not crops
    assert [v.shape[1:] for v in views] == [resize_short_side(image, s).shape[:2] for s in (24, 40)]
    with pytest.raises(ValueError, match="test-time views; use them with train=False"):
        small(tree / "train", train=True, test_scales=(24,))
    with pytest.raises(ValueError, match="choose ten_crop or test_scales"):
        ClsViews(ten_crop=True, test_scales=(24,))


def test_build_imagenet_checks_the_layout(tree, tmp_path):
    with pytest.warns(UserWarning, match="has 3 class folders, ImageNet has 1000"):
        dataset = build_imagenet(tree, "val", views=SMALL)
    assert not dataset.train and len(dataset) == 6
    with pytest.raises(
        FileNotFoundError, match=r"does not exist. ImageNet is expected as ROOT/train/<wnid>"
    ):
        build_imagenet(tmp_path / "missing", "train")
    flat = tmp_path / "flat"
    write_rgb(flat / "train" / WNIDS[0] / "a.JPEG", np.zeros((8, 8, 3), np.uint8))
    write_rgb(flat / "val" / "ILSVRC2012_val_00000001.JPEG", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(
        ValueError, match="holds images directly instead of class subfolders.*valprep"
    ):
        build_imagenet(flat, "val")
    with pytest.raises(ValueError, match="not one of train, val"):
        build_imagenet(tree, "test")


def test_folder_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no class subfolders"):
        ImageFolderDataset(tmp_path, train=False)
    (tmp_path / "cats").mkdir()
    (tmp_path / "cats" / "notes.txt").write_text("no images here")
    with pytest.raises(
        FileNotFoundError, match=r"1 class folder\(s\) in .* hold no images \(cats\)"
    ):
        ImageFolderDataset(tmp_path, train=False)
    with pytest.raises(ValueError, match="test-time views; use them with train=False"):
        ImageFolderDataset(tmp_path, train=True, views=ClsViews(ten_crop=True))


def test_builder_dispatches_folder_and_imagenet(tree):
    dataset = build_cls_dataset(f"folder:{tree}", None, "train", train=True, views=SMALL)
    assert isinstance(dataset, ImageFolderDataset) and dataset.train and len(dataset) == 6
    with pytest.raises(FileNotFoundError, match=r"expected .*/test/<class>/<image> files"):
        build_cls_dataset(f"folder:{tree}", None, "test", train=False, views=SMALL)
    with pytest.warns(UserWarning, match="3 class folders"):
        crops = replace(SMALL, ten_crop=True)
        views = build_cls_dataset("imagenet", tree, "val", train=False, views=crops)
    assert views[0][0].pixels.shape == (10, 3, 24, 24)
    with pytest.raises(
        ValueError, match=r"imagenet does not take download=True, which applies to cifar10"
    ):
        build_cls_dataset("imagenet", tree, "val", train=False, download=True)


def test_unknown_name_suggests_the_close_one():
    with pytest.raises(KeyError, match=r"'cifar'; did you mean cifar10\?.*`resdet datasets`"):
        build_cls_dataset("cifar", None, "train", train=True)
