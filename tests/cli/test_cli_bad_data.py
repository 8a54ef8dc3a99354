"""Bad data, bad results files and bad run folders through the CLI: each a clear error or a drop
that is counted and printed, and nothing written outside the run folder."""

from __future__ import annotations

import json
import math
import os
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_helpers import TINY_DET, invoke, output_text, runner

from resdet.cli import app
from resdet.data.synthetic import write_tiny_cifar10, write_tiny_coco, write_tiny_voc

DET_FAST = ["--backbone", "resnet18", "--head", "fpn", *TINY_DET]

CLS_FAST = ["--workers", "0", "--device", "cpu", "--no-amp", "--batch-size", "4", "--iters", "1"]


def snapshot(root: Path, skip: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` but those under ``skip``: relative path -> (size, mtime)."""
    found = {}
    for folder, _, files in os.walk(root):
        if Path(folder).is_relative_to(skip):
            continue
        for name in files:
            path = Path(folder, name)
            found[str(path.relative_to(root))] = (path.stat().st_size, path.stat().st_mtime_ns)
    return found


def run_cli(tmp_path: Path, *args: object) -> tuple[int, str]:
    """``resdet ARGS`` with run folder ``tmp_path/run``; asserts nothing else changed."""
    before = snapshot(tmp_path, tmp_path / "run")
    result = runner.invoke(app, [str(a) for a in args])
    assert snapshot(tmp_path, tmp_path / "run") == before
    return result.exit_code, output_text(result)


# --- CIFAR-10 pickles -----------------------------------------------------------------------


class _Payload:
    """Unpickling this runs os.system: what a crafted data file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_cifar_batch_runs_no_code(tmp_path):
    data = write_tiny_cifar10(tmp_path / "cifar")
    marker = tmp_path / "pwned"
    batch = data / "cifar-10-batches-py" / "data_batch_1"
    batch.write_bytes(pickle.dumps({b"data": _Payload(marker), b"labels": []}, protocol=2))
    code, out = run_cli(
        tmp_path, "train-cls", "cifar10", "--data-dir", data, "--out", tmp_path / "run", *CLS_FAST
    )
    assert code == 2 and not marker.exists()
    assert "data_batch_1" in out and "posix.system" in out and "nothing in it was run" in out


# --- COCO JSON ----------------------------------------------------------------------------


def _coco_edit(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(annotation_file: Path) -> None:
        document = json.loads(annotation_file.read_text())
        edit(document)
        annotation_file.write_text(json.dumps(document))

    return apply


def _set_bbox(value):
    def edit(document):
        document["annotations"][0]["bbox"] = value

    return edit


def _repeat_id(key):
    def edit(document):
        document[key][1]["id"] = document[key][0]["id"]

    return edit


COCO_ERRORS = {
    "not json": (lambda path: path.write_text("{'images': "), "is not valid COCO JSON"),
    "no images": (_coco_edit(lambda d: d.pop("images")), "'images' list is missing"),
    "no annotations": (
        _coco_edit(lambda d: d.pop("annotations")),
        "'annotations' list is missing",
    ),
    "no categories": (_coco_edit(lambda d: d.pop("categories")), "'categories' list is missing"),
    "duplicate image id": (_coco_edit(_repeat_id("images")), "images id 1 appears more than once"),
    "duplicate annotation id": (
        _coco_edit(_repeat_id("annotations")),
        "annotations id 1 appears more than once",
    ),
    "bbox of a string": (
        _coco_edit(_set_bbox(["a", 1, 2, 3])),
        "annotation 1 needs a bbox of four numbers",
    ),
    "bbox of three numbers": (
        _coco_edit(_set_bbox([1, 2, 3])),
        "annotation 1 needs a bbox of four numbers",
    ),
}


@pytest.mark.parametrize("case", COCO_ERRORS)
def test_broken_coco_json_is_an_error_naming_file_and_entry(tmp_path, case):
    root = write_tiny_coco(tmp_path / "coco", n_images=2, with_masks=False)
    spoil, expected = COCO_ERRORS[case]
    spoil(root / "annotations" / "instances_train2017.json")
    code, out = run_cli(
        tmp_path, "train-det", "coco", "--data-dir", root, "--out", tmp_path / "run", *DET_FAST
    )
    assert code == 2, out
    assert "instances_train2017.json" in out and expected in out


def _bad_boxes(document):
    # Image 1 keeps its own boxes; these join it: zero size, NaN, outside, partly outside.
    extra = [[5, 5, 0, 10], [math.nan, 5, 10, 10], [500, 5, 10, 10], [150, 100, 30, 40]]
    next_id = max(a["id"] for a in document["annotations"]) + 1
    for offset, bbox in enumerate(extra):
        document["annotations"].append(
            {"id": next_id + offset, "image_id": 1, "category_id": 3, "bbox": bbox, "iscrowd": 0}
        )


def test_bad_boxes_are_dropped_counted_and_printed_or_refused_with_strict(tmp_path):
    root = write_tiny_coco(tmp_path / "coco", n_images=2, with_masks=False)
    train_file = root / "annotations" / "instances_train2017.json"
    _coco_edit(_bad_boxes)(train_file)
    kept = len(json.loads(train_file.read_text())["annotations"]) - 3
    out_dir = tmp_path / "run"
    args = ["train-det", "coco", "--data-dir", root, "--out", out_dir, "--iters", 1, *DET_FAST]
    code, out = run_cli(tmp_path, *args)
    assert code == 0, out
    assert (
        f"coco train: 2 images, {kept} boxes; dropped 3 boxes (zero size 1, NaN or infinite 1, "
        "outside image 1), clipped 1" in out
    )
    counts = json.loads((out_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert counts["type"] == "data" and counts["iter"] == 0
    train = counts["splits"]["train"]
    assert (train["dropped_zero_size"], train["dropped_not_finite"]) == (1, 1)
    assert (train["dropped_outside"], train["clipped_boxes"], train["boxes"]) == (1, 1, kept)
    assert json.loads((out_dir / "eval.json").read_text())["data"] == counts["splits"]

    code, out = run_cli(tmp_path, *args, "--overwrite", "--strict")
    assert code == 2
    assert "instances_train2017.json" in out and "has zero or negative width or height" in out
    assert "annotation" in out and "--strict" in out


@pytest.mark.parametrize("kind", ["jpg", "png"])
def test_truncated_image_is_skipped_counted_or_refused_with_strict(tmp_path, kind):
    root = write_tiny_coco(tmp_path / "coco", n_images=2, with_masks=False)
    train_file = root / "annotations" / "instances_train2017.json"
    image = root / "train2017" / "000000.jpg"
    if kind == "png":  # a PNG under the name the annotations give, cut short
        import cv2

        ok, encoded = cv2.imencode(".png", cv2.imread(str(image)))
        image.write_bytes(encoded.tobytes())
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    out_dir = tmp_path / "run"
    args = ["train-det", "coco", "--data-dir", root, "--out", out_dir, "--iters", 2, *DET_FAST]
    with pytest.warns(UserWarning, match=r"skipping unreadable or truncated image .*000000\.jpg"):
        code, out = run_cli(tmp_path, *args, "--set", "train.log_period=2")
    assert code == 0, out
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    # Batches of both images: the bad one is met, and skipped, once in each of the 2 steps.
    assert [r["skipped_images"] for r in rows if r["type"] == "train"] == [2]
    code, out = run_cli(tmp_path, *args, "--overwrite", "--strict")
    assert code == 2 and "000000.jpg" in out and "data.strict is set" in out
    assert train_file.exists()


# --- VOC XML ------------------------------------------------------------------------------


def _voc_edit(old: str, new: str) -> Callable[[Path], None]:
    def apply(devkit: Path) -> None:
        xml = devkit / "VOC2007" / "Annotations" / "000001.xml"
        text = xml.read_text()
        assert old in text
        xml.write_text(text.replace(old, new, 1))

    return apply


def _swap_x(devkit: Path) -> None:
    import xml.etree.ElementTree as ET

    xml = devkit / "VOC2007" / "Annotations" / "000001.xml"
    tree = ET.parse(xml)
    box = tree.getroot().find("object/bndbox")
    xmin, xmax = box.find("xmin"), box.find("xmax")
    xmin.text, xmax.text = xmax.text, xmin.text
    tree.write(xml)


VOC_ERRORS = {
    "malformed xml": (_voc_edit("</annotation>", ""), "000001.xml is not valid XML"),
    "xmin > xmax": (_swap_x, "000001.xml: object"),
    "unknown class": (_voc_edit("<name>", "<name>x"), "unknown class"),
    "id without a file": (
        lambda devkit: (devkit / "VOC2007" / "Annotations" / "000001.xml").unlink(),
        "remove the id from ImageSets/Main",
    ),
}


@pytest.mark.parametrize("case", VOC_ERRORS)
def test_broken_voc_annotation_is_an_error_naming_file_and_fix(tmp_path, case):
    devkit = write_tiny_voc(tmp_path / "voc", n_images=2, years=("2007",))
    spoil, expected = VOC_ERRORS[case]
    spoil(devkit)
    code, out = run_cli(
        tmp_path, "train-det", "voc2007", "--data-dir", devkit, "--out", tmp_path / "run", *DET_FAST
    )
    assert code == 2 and "000001.xml" in out and expected in out, out
    if case == "unknown class":
        assert "aeroplane, bicycle" in out and "tvmonitor" in out
    if case == "xmin > xmax":
        assert "swap the corners" in out


# --- COCO results files ---------------------------------------------------------------------


def _result(**change):
    return {"image_id": 1, "category_id": 3, "bbox": [1, 2, 30, 40], "score": 0.9, **change}


RESULTS_ERRORS = {
    "NaN box": ([_result(), _result(bbox=[1, math.nan, 3, 4])], "results entry 1 has bbox"),
    "inf score": ([_result(score=math.inf)], "results entry 0 has score inf"),
    "dict instead of list": ({"0": _result()}, "a COCO results file is a JSON list"),
    "unknown image id": ([_result(), _result(image_id=999)], "results entry 1 has image_id 999"),
    "unknown category id": ([_result(category_id=5)], "results entry 0 has category_id 5"),
}


@pytest.mark.parametrize("case", RESULTS_ERRORS)
def test_bad_results_file_is_an_error_naming_the_entry(tmp_path, case):
    root = write_tiny_coco(tmp_path / "coco", n_images=2, with_masks=False)
    entries, expected = RESULTS_ERRORS[case]
    results = tmp_path / "dt.json"
    results.write_text(json.dumps(entries))  # json writes NaN and Infinity as Python reads them
    gt = root / "annotations" / "instances_val2017.json"
    code, out = run_cli(tmp_path, "eval", "--annotations", gt, "--results", results)
    assert code == 2 and "dt.json" in out and expected in out, out


# --- run folders ----------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["is a file", "under a file"])
def test_unusable_out_folder_is_an_error_naming_it(tmp_path, where):
    data = write_tiny_cifar10(tmp_path / "cifar")
    blocker = tmp_path / "run"
    blocker.write_text("a file, not a folder")
    out = blocker if where == "is a file" else blocker / "sub"
    before = snapshot(tmp_path, tmp_path / "nothing")
    result = runner.invoke(
        app,
        ["train-cls", "cifar10", "--data-dir", str(data), "--out", str(out), *CLS_FAST],
    )
    text = output_text(result)
    assert result.exit_code == 2 and "cannot use" in text and "as the run folder" in text
    assert "choose another --out" in text and "Traceback" not in text
    assert snapshot(tmp_path, tmp_path / "nothing") == before


def test_a_used_run_folder_is_refused_or_moved_aside_with_overwrite(tmp_path):
    data = write_tiny_cifar10(tmp_path / "cifar")
    out = tmp_path / "run"
    args = ["train-cls", "cifar10", "--data-dir", data, "--out", out, *CLS_FAST]
    invoke(*args)
    first = (out / "metrics.jsonl").read_text()
    (out / ".last.pt.abc123.tmp").write_bytes(b"cut off by a kill")
    code, text = run_cli(tmp_path, *args)
    assert code == 2 and "already holds a run" in text
    assert "--resume" in text and "--overwrite" in text
    invoke(*args, "--overwrite")
    (aside,) = out.glob("replaced-*")
    assert (aside / "metrics.jsonl").read_text() == first
    assert {p.name for p in aside.iterdir()} == {
        "last.pt",
        "metrics.jsonl",
        "config.yaml",
        "eval.json",
    }
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows if r["type"] == "train"] == [1]  # not appended to the old
    assert not list(out.glob(".*.tmp"))
    code, text = run_cli(tmp_path, *args, "--overwrite", "--resume", out / "last.pt")
    assert code == 2 and "choose one" in text
