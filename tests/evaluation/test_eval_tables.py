"""The rich tables, rendered to text."""

from __future__ import annotations

import math

import pytest
from rich.console import Console
from rich.table import Table

from resdet.evaluation import STAT_NAMES, VocResult, coco_table, per_class_table, voc_table


def _text(table: Table) -> str:
    console = Console(width=160, record=True)
    console.print(table)
    return console.export_text()


def test_coco_table_shows_percentages_and_no_ground_truth_as_dash() -> None:
    stats = dict.fromkeys(STAT_NAMES, 0.27249)
    stats["APs"] = -1.0  # pycocotools' value when no object is small
    text = _text(coco_table(stats, "bbox"))
    assert "bbox" in text
    for name in STAT_NAMES:
        assert name in text
    assert text.count("27.2") == 11
    assert " - " in text


def test_coco_table_needs_all_twelve() -> None:
    with pytest.raises(KeyError, match="lack"):
        coco_table({"AP": 0.5}, "bbox")


def test_per_class_table() -> None:
    text = _text(per_class_table({"cat": 0.5, "dog": math.nan, "bird": 0.123}, "per class"))
    assert "cat" in text and "50.0" in text and "12.3" in text


def test_voc_table_names_the_metric() -> None:
    result = VocResult(metric="voc07", mAP=0.764, per_class={"aeroplane": 0.8, "bicycle": 0.728})
    text = _text(voc_table(result))
    assert "voc07" in text and "11-point" in text
    assert "76.4" in text and "72.8" in text
    assert "area" in _text(voc_table(VocResult(metric="voc12", mAP=0.5, per_class={"cat": 0.5})))
