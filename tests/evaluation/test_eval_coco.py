"""evaluate_coco against pycocotools' COCOeval on generated files in COCO's on-disk format."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from evaluation_synthetic import coco_gt_and_results
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from resdet.evaluation import STAT_NAMES, evaluate_coco, save_results


def _write(tmp_path: Path, seed: int, num_images: int, masks: bool) -> tuple[Path, Path]:
    gt, results = coco_gt_and_results(seed, num_images, masks)
    gt_path, results_path = tmp_path / "instances.json", tmp_path / "results.json"
    gt_path.write_text(json.dumps(gt))
    results_path.write_text(json.dumps(results))
    return gt_path, results_path


def _pycocotools(
    gt_path: Path, results_path: Path, iou_type: str, image_ids: list[int] | None = None
) -> COCOeval:
    """The reference: load, loadRes, evaluate, accumulate, summarize, as its README shows."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_path))
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(str(results_path)), iou_type)
        if image_ids is not None:
            evaluator.params.imgIds = image_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


@pytest.mark.parametrize(("iou_type", "num_images"), [("bbox", 300), ("segm", 200)])
def test_stats_equal_pycocotools(tmp_path: Path, iou_type: str, num_images: int) -> None:
    gt_path, results_path = _write(
        tmp_path, seed=0, num_images=num_images, masks=iou_type == "segm"
    )
    reference = _pycocotools(gt_path, results_path, iou_type)
    result = evaluate_coco(gt_path, results_path, iou_type)
    assert tuple(result.stats) == STAT_NAMES
    # 1e-9 is the tolerance resdet promises; measured differences are below 1e-16.
    np.testing.assert_allclose(list(result.stats.values()), reference.stats, rtol=0, atol=1e-9)
    # Guards against a degenerate comparison: pycocotools gives AP 0.089 (bbox) and 0.036 (segm)
    # on these files (measured with _pycocotools above).
    assert result.stats["AP"] > 0.03


def test_per_class_is_the_mean_of_pycocotools_precision(tmp_path: Path) -> None:
    gt_path, results_path = _write(tmp_path, seed=1, num_images=120, masks=False)
    reference = _pycocotools(gt_path, results_path, "bbox")
    result = evaluate_coco(gt_path, results_path, "bbox")
    # detectron2's definition: precision [T, R, K, A, M] at area "all", maxDets 100, > -1 kept.
    precision = reference.eval["precision"]
    names = {c["id"]: c["name"] for c in json.loads(gt_path.read_text())["categories"]}
    for k, category_id in enumerate(reference.params.catIds):
        values = precision[:, :, k, 0, -1]
        values = values[values > -1]
        expected = values.mean() if values.size else math.nan
        assert result.per_class[names[category_id]] == pytest.approx(
            expected, abs=1e-12, nan_ok=True
        )
    # class13 is predicted but never annotated (evaluation_synthetic.CATEGORIES_WITH_GT).
    assert math.isnan(result.per_class["class13"])


def test_image_subset_equals_pycocotools_img_ids(tmp_path: Path) -> None:
    gt_path, results_path = _write(tmp_path, seed=2, num_images=60, masks=False)
    subset = [1000 + 3 * i for i in range(0, 60, 2)]
    reference = _pycocotools(gt_path, results_path, "bbox", image_ids=subset)
    result = evaluate_coco(gt_path, results_path, "bbox", image_ids=subset)
    np.testing.assert_allclose(list(result.stats.values()), reference.stats, rtol=0, atol=1e-9)


def test_coco_object_and_list_inputs_are_not_modified(tmp_path: Path) -> None:
    gt_path, results_path = _write(tmp_path, seed=3, num_images=40, masks=True)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_path))
    results = json.loads(results_path.read_text())
    gt_before, results_before = copy.deepcopy(coco_gt.dataset), copy.deepcopy(results)
    from_objects = evaluate_coco(coco_gt, results, "segm")
    assert coco_gt.dataset == gt_before
    assert results == results_before
    assert from_objects == evaluate_coco(gt_path, results_path, "segm")


def test_unknown_image_id_is_refused_with_file_index_and_value(tmp_path: Path) -> None:
    gt_path, results_path = _write(tmp_path, seed=4, num_images=10, masks=False)
    results = json.loads(results_path.read_text())
    results[3]["image_id"] = 424242
    results_path.write_text(json.dumps(results))
    with pytest.raises(ValueError, match=r"results\.json.*entry 3.*image_id 424242"):
        evaluate_coco(gt_path, results_path)


def test_unknown_category_id_is_refused_with_index_and_value(tmp_path: Path) -> None:
    gt_path, results_path = _write(tmp_path, seed=4, num_images=10, masks=False)
    results = json.loads(results_path.read_text())
    results[5]["category_id"] = 2  # ids are 1, 3, ..., 13 (evaluation_synthetic.CATEGORY_IDS)
    with pytest.raises(ValueError, match=r"results list.*entry 5.*category_id 2"):
        evaluate_coco(gt_path, results)


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_empty_results_give_zeros(tmp_path: Path, iou_type: str) -> None:
    gt_path, results_path = _write(tmp_path, seed=5, num_images=60, masks=True)
    results_path.write_text("[]")
    # The generated ground truth has objects in all three area ranges, so no stat is -1.
    for results in (results_path, []):
        result = evaluate_coco(gt_path, results, iou_type)
        assert result.stats == dict.fromkeys(STAT_NAMES, 0.0)


def test_malformed_json_names_the_file_and_the_error(tmp_path: Path) -> None:
    gt_path, results_path = _write(tmp_path, seed=6, num_images=5, masks=False)
    results_path.write_text('[{"image_id": 1000,')
    with pytest.raises(ValueError, match=r"results\.json is not valid JSON: Expecting"):
        evaluate_coco(gt_path, results_path)


def test_segm_needs_masks_in_ground_truth(tmp_path: Path) -> None:
    gt_path, results_path = _write(tmp_path, seed=7, num_images=5, masks=False)
    with pytest.raises(ValueError, match=r"instances\.json: annotation id 1 has no 'segmentation'"):
        evaluate_coco(gt_path, [], "segm")


def test_saved_results_evaluate_like_the_list(tmp_path: Path) -> None:
    gt_path, results_path = _write(tmp_path, seed=8, num_images=30, masks=False)
    results = json.loads(results_path.read_text())
    saved = save_results(tmp_path / "out" / "saved.json", results)
    assert json.loads(saved.read_text()) == results
    assert evaluate_coco(gt_path, saved) == evaluate_coco(gt_path, results)
