"""VOC AP on small cases worked out by hand with the devkit's rules (py-faster-rcnn voc_eval.py).

Boxes are VOC's 1-based inclusive pixels: (1, 1, 10, 10) is 10x10 = 100 pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from resdet.evaluation import (
    ScoredBox,
    TruthBox,
    VocEvaluator,
    evaluate_voc,
    read_voc_results,
    voc_ap,
    write_voc_results,
)

G1, G2 = (1.0, 1.0, 10.0, 10.0), (21.0, 21.0, 30.0, 30.0)
FAR = (41.0, 41.0, 50.0, 50.0)


def _ap(detections, ground_truth, metric):
    return evaluate_voc({"cat": detections}, ground_truth, ["cat"], metric).per_class["cat"]


# Ranked TP, FP, TP with 2 positives: recall [.5, .5, 1], precision [1, .5, 2/3].
# voc07: thresholds 0, .1, ..., .5 (6 of them) see precision 1; .6 ... 1.0 (5) see 2/3:
#        (6 * 1 + 5 * 2/3) / 11 = 28/33.
# voc12: envelope [1, 1, 2/3, 2/3]; area = .5 * 1 + .5 * 2/3 = 5/6.
TP_FP_TP = {"voc07": 28 / 33, "voc12": 5 / 6}


@pytest.mark.parametrize("metric", ["voc07", "voc12"])
def test_tp_fp_tp(metric: str) -> None:
    ground_truth = {"a": [("cat", G1, False), ("cat", G2, False)]}
    detections = [("a", 0.9, G1), ("a", 0.8, FAR), ("a", 0.7, G2)]
    assert _ap(detections, ground_truth, metric) == pytest.approx(TP_FP_TP[metric], abs=1e-12)


@pytest.mark.parametrize("metric", ["voc07", "voc12"])
def test_duplicate_detection_is_a_false_positive(metric: str) -> None:
    # Ranked: G1 (TP), G1 again (duplicate: FP), G2 on image b (TP): the TP, FP, TP case above.
    ground_truth = {"a": [("cat", G1, False)], "b": [("cat", G2, False)]}
    detections = [("a", 0.9, G1), ("a", 0.8, G1), ("b", 0.7, G2)]
    assert _ap(detections, ground_truth, metric) == pytest.approx(TP_FP_TP[metric], abs=1e-12)


@pytest.mark.parametrize("metric", ["voc07", "voc12"])
def test_difficult_match_is_neither_true_nor_false_positive(metric: str) -> None:
    # The difficult box is not a positive (1 positive) and the detection on it is ignored, so
    # the ranked list is just one TP: recall 1, precision 1, AP 1 under both metrics. Counting
    # it as a positive would cap recall at 0.5; counting the detection as FP would lower AP.
    ground_truth = {"a": [("cat", G1, False), ("cat", G2, True)]}
    detections = [("a", 0.9, G2), ("a", 0.8, G1)]
    # 11 additions of 1/11 give 1.0000000000000002 in floating point, as in voc_eval.py.
    assert _ap(detections, ground_truth, metric) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize(("metric", "expected"), [("voc07", 6 / 11), ("voc12", 0.5)])
def test_best_overlap_already_matched_is_a_false_positive(metric: str, expected: float) -> None:
    # G3 overlaps G1 with IoU 100/110, but a second detection on G1 takes its best-IoU box G1,
    # which is matched: FP (the devkit does not fall back to the next box). TP, FP with
    # 2 positives: recall [.5, .5], precision [1, .5]; voc07: 6 thresholds <= .5 see 1 -> 6/11;
    # voc12: .5 * 1 + .5 * 0 = .5.
    g3 = (1.0, 1.0, 10.0, 11.0)
    ground_truth = {"a": [("cat", G1, False), ("cat", g3, False)]}
    assert _ap([("a", 0.9, G1), ("a", 0.8, G1)], ground_truth, metric) == pytest.approx(expected)


def test_iou_counts_pixels_inclusively_and_needs_more_than_half() -> None:
    # (1,1,2,2) is 2x2 = 4 px and (1,1,2,3) is 2x3 = 6 px: IoU 4/6 > .5, a TP (without the +1
    # it would be 1/2, not a match).
    assert (
        _ap(
            [("a", 0.9, (1.0, 1.0, 2.0, 3.0))],
            {"a": [("cat", (1.0, 1.0, 2.0, 2.0), False)]},
            "voc12",
        )
        == 1.0
    )
    # (1,1,10,20) is 200 px and holds G1 (100 px): IoU exactly .5 is not > .5, so no match.
    assert _ap([("a", 0.9, (1.0, 1.0, 10.0, 20.0))], {"a": [("cat", G1, False)]}, "voc12") == 0.0


def test_voc07_thresholds_are_numpy_arange() -> None:
    # Recall exactly 0.3 with precision 1: np.arange(0, 1.1, .1) has 0.30000000000000004, so
    # only 0, .1, .2 reach it: 3/11 (py-faster-rcnn voc_eval.py, detectron2 give the same).
    assert voc_ap(np.array([0.3]), np.array([1.0]), use_07_metric=True) == pytest.approx(3 / 11)
    # Area: recall 0 -> .3 at precision 1 = .3.
    assert voc_ap(np.array([0.3]), np.array([1.0]), use_07_metric=False) == pytest.approx(0.3)


def test_classes_without_positives_are_nan_and_left_out_of_the_mean() -> None:
    ground_truth = {"a": [("cat", G1, False)], "b": [("dog", G2, True)]}
    result = evaluate_voc({"cat": [("a", 0.5, G1)]}, ground_truth, ["cat", "dog"], "voc07")
    assert np.isnan(result.per_class["dog"])
    assert result.mAP == pytest.approx(1.0, abs=1e-12)
    assert result.metric == "voc07"


def test_detection_on_unknown_image_is_refused() -> None:
    with pytest.raises(ValueError, match="image 'zzz', which has no ground-truth entry"):
        _ap([("zzz", 0.9, G1)], {"a": [("cat", G1, False)]}, "voc07")


def test_results_files_round_trip(tmp_path: Path) -> None:
    detections = {
        "cat": [ScoredBox("000005", 0.123456789, (1.5, 2.25, 100.0, 200.125))],
        "dog": [ScoredBox(7, 0.5, (1.0, 1.0, 10.0, 10.0)), ScoredBox(8, 0.25, G2)],
        "bird": [],
    }
    paths = write_voc_results(tmp_path, detections)
    assert [p.name for p in paths] == [f"comp4_det_test_{c}.txt" for c in detections]
    assert paths[1].read_text().splitlines()[0] == "7 0.5 1.0 1.0 10.0 10.0"
    back = read_voc_results(tmp_path, ["cat", "dog", "bird"])
    expected = {
        name: [ScoredBox(str(d.image_id), d.score, d.box) for d in dets]
        for name, dets in detections.items()
    }
    assert back == expected


def test_malformed_results_line_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "comp4_det_test_cat.txt").write_text(
        "000005 0.9 1 1 10 10\n000006 0.8 1 1 ten 10\n"
    )
    with pytest.raises(ValueError, match=r"comp4_det_test_cat\.txt:2: expected"):
        read_voc_results(tmp_path, ["cat"])
    with pytest.raises(FileNotFoundError, match="comp4_det_test_dog.txt"):
        read_voc_results(tmp_path, ["dog"])


def test_evaluator_scales_to_orig_size_and_shifts_to_one_based() -> None:
    # VOC box (11, 21, 60, 80) (1-based inclusive) is read as (10, 20, 60, 80) in continuous
    # pixels (resdet.data.voc, detectron2's convention), (5, 10, 30, 40) at half size.
    ground_truth = {5: [TruthBox("dog", (11.0, 21.0, 60.0, 80.0), False)], 6: []}
    evaluator = VocEvaluator(["cat", "dog"], ground_truth, metric="voc12")
    target = {
        "image_id": torch.tensor(5),
        "size": torch.tensor([100, 150]),
        "orig_size": torch.tensor([200, 300]),
    }
    output = {
        "boxes": torch.tensor([[5.0, 10.0, 30.0, 40.0]]),
        "labels": torch.tensor([2]),
        "scores": torch.tensor([0.75]),
    }
    evaluator.process([target], [output])
    assert evaluator.detections() == {
        "cat": [],
        "dog": [ScoredBox("5", 0.75, (11.0, 21.0, 60.0, 80.0))],
    }
    # Image 6 was not processed, so it is not evaluated; "cat" has no positives (nan, skipped).
    assert evaluator.compute() == {"voc/mAP": 1.0, "voc/AP50": 1.0}
    assert evaluator.last_result is not None and evaluator.last_result.metric == "voc12"
    with pytest.raises(ValueError, match="model label 3 is outside 1..2"):
        evaluator.process([target], [dict(output, labels=torch.tensor([3]))])
