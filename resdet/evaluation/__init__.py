"""Evaluators: COCO (pycocotools-exact), PASCAL VOC (devkit rules) and classification top-k."""

from resdet.evaluation.classification import (
    PAPER_TEST_SCALES,
    ClassificationEvaluator,
    MultiScale,
    TenCrop,
)
from resdet.evaluation.coco import (
    STAT_NAMES,
    CocoEvaluator,
    CocoResult,
    evaluate_coco,
    gather_per_image,
    save_results,
)
from resdet.evaluation.tables import coco_table, per_class_table, voc_table
from resdet.evaluation.voc import (
    ScoredBox,
    TruthBox,
    VocEvaluator,
    VocResult,
    evaluate_voc,
    read_voc_results,
    voc_ap,
    write_voc_results,
)

__all__ = [
    "PAPER_TEST_SCALES",
    "STAT_NAMES",
    "ClassificationEvaluator",
    "CocoEvaluator",
    "CocoResult",
    "MultiScale",
    "TenCrop",
    "ScoredBox",
    "VocEvaluator",
    "TruthBox",
    "VocResult",
    "coco_table",
    "evaluate_coco",
    "evaluate_voc",
    "gather_per_image",
    "per_class_table",
    "read_voc_results",
    "save_results",
    "voc_ap",
    "voc_table",
    "write_voc_results",
]
