"""The dataset registries: names, NAME:PATH spelling, options, registering a new set."""

import pytest
from torch.utils.data import Dataset

from resdet.data import build_cls_dataset, build_det_dataset
from resdet.data.catalog import (
    CLS_DATASETS,
    DET_DATASETS,
    DatasetEntry,
    DetRequest,
    find_dataset,
    spelling,
)
from resdet.data.coco import CocoDetection
from resdet.data.options import ClsViews, DetSizes
from resdet.data.synthetic import write_tiny_coco
from resdet.data.voc import VocConcat


def test_the_documented_names_are_registered():
    assert [spelling(CLS_DATASETS, n) for n in CLS_DATASETS] == [
        "cifar10",
        "imagenet",
        "digits",
        "folder:PATH",
    ]
    assert [spelling(DET_DATASETS, n) for n in DET_DATASETS] == [
        "shapes",
        "coco",
        "coco-format:PATH",
        "voc0712",
        "voc2007",
        "voc2012",
    ]


def test_path_spelling_is_checked():
    entry, path = find_dataset(DET_DATASETS, "coco-format:/data/parts.json")
    assert path == "/data/parts.json" and entry.takes_path
    assert find_dataset(DET_DATASETS, "coco") == (DET_DATASETS.get("coco"), None)
    with pytest.raises(ValueError, match=r"'folder' is spelled folder:PATH"):
        find_dataset(CLS_DATASETS, "folder")
    with pytest.raises(ValueError, match=r"'cifar10' takes no path, got 'cifar10:/x'"):
        find_dataset(CLS_DATASETS, "cifar10:/x")


def test_unknown_or_unused_options_are_refused():
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'crop'"):
        build_cls_dataset("digits", None, "test", train=False, crop=24)
    with pytest.raises(
        ValueError,
        match=r"digits does not take views.crop=32, views.test_size=300, which applies to "
        r"imagenet, folder:PATH; drop it or keep its default",
    ):
        views = ClsViews(crop=32, test_size=300)
        build_cls_dataset("digits", None, "test", train=False, views=views)
    with pytest.raises(ValueError, match=r"digits does not read a data folder \(given /data\)"):
        build_cls_dataset("digits", "/data", "test", train=False)
    with pytest.raises(ValueError, match="drop --data-dir / data.root and put the path in"):
        build_det_dataset("coco-format:/x.json", "/data", train=False)
    with pytest.raises(ValueError, match=r"coco has its own evaluation split; data.val_annot"):
        build_det_dataset("coco", None, train=False, val_annotations="/data/val.json")
    # an option at its default value is no request, whichever set it goes to
    same = ClsViews(crop=224)
    assert len(build_cls_dataset("digits", None, "test", train=False, views=same)) == 360


def test_builders_read_the_default_root_or_the_given_one(tmp_path, monkeypatch):
    write_tiny_coco(tmp_path / "datasets" / "coco", n_images=2)
    monkeypatch.chdir(tmp_path)  # the default root is relative: datasets/coco
    dataset = build_det_dataset("coco", None, train=False, sizes=DetSizes((120,), 160))
    assert isinstance(dataset, CocoDetection) and len(dataset) == 2
    moved = tmp_path / "elsewhere"
    (tmp_path / "datasets" / "coco").rename(moved)
    dataset = build_det_dataset(
        "coco", moved, train=True, sizes=DetSizes((100, 120)), with_masks=True
    )
    assert dataset.with_masks and len(dataset) == 2
    with pytest.raises(ValueError, match="voc0712: PASCAL VOC detection has no instance masks"):
        build_det_dataset("voc0712", None, train=True, with_masks=True)


def test_a_registered_set_trains_by_name(tmp_path):
    requests: list[DetRequest] = []

    class Parts(Dataset):
        def __len__(self) -> int:
            return 3

    def build(request: DetRequest) -> Dataset:
        requests.append(request)
        return Parts()

    DET_DATASETS.register("parts-test", DatasetEntry(build, "machine parts", takes_path=True))
    try:
        dataset = build_det_dataset(
            "parts-test:/data/parts", None, train=True, sizes=DetSizes(max_size=512)
        )
        with pytest.raises(KeyError, match="already registered"):
            DET_DATASETS.register("parts-test", DatasetEntry(build, "again"))
    finally:
        DET_DATASETS.unregister("parts-test")
    assert isinstance(dataset, Parts)
    assert requests[0].path == "/data/parts" and requests[0].train
    assert requests[0].dataset_options == {
        "min_size": (800,),
        "max_size": 512,
        "keep_empty": True,
        "strict": False,
    }


def test_voc0712_trains_on_both_years(tmp_path):
    from resdet.data.synthetic import write_tiny_voc

    devkit = write_tiny_voc(tmp_path, years=("2007", "2012"))
    sizes = DetSizes((96,), 200)
    train = build_det_dataset("voc0712", devkit, train=True, sizes=sizes)
    test = build_det_dataset("voc0712", devkit, train=False, sizes=sizes)
    assert isinstance(train, VocConcat) and len(train.parts) == 2
    assert not isinstance(test, VocConcat) and test.year == "2007" and test.split == "test"
