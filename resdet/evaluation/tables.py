"""rich tables for evaluation results; numbers shown as percentages with one decimal."""

from __future__ import annotations

import math
from collections.abc import Mapping

from rich.table import Table

from resdet.evaluation.coco import STAT_NAMES
from resdet.evaluation.voc import METRIC_DESCRIPTIONS, VocResult


def coco_table(stats: Mapping[str, float], title: str) -> Table:
    """One row with the twelve COCO numbers (:data:`STAT_NAMES` keys, fractions) as percents.

    pycocotools' -1 ("no ground truth in this area range") and nan are shown as "-".
    """
    missing = [name for name in STAT_NAMES if name not in stats]
    if missing:
        raise KeyError(f"COCO stats lack {missing}; pass CocoResult.stats (keys {STAT_NAMES})")
    table = Table(title=title)
    for name in STAT_NAMES:
        table.add_column(name, justify="right")
    table.add_row(*(_percent(stats[name]) for name in STAT_NAMES))
    return table


def per_class_table(per_class: Mapping[str, float], title: str, pairs_per_row: int = 3) -> Table:
    """Class names and AP (fractions, shown as percents; nan as "-"), ``pairs_per_row``
    (class, AP) pairs side by side so 80 COCO classes fit on one screen."""
    table = Table(title=title)
    for _ in range(pairs_per_row):
        table.add_column("class")
        table.add_column("AP", justify="right")
    items = list(per_class.items())
    for start in range(0, len(items), pairs_per_row):
        row = []
        for name, ap in items[start : start + pairs_per_row]:
            row += [name, _percent(ap)]
        table.add_row(*row)
    return table


def voc_table(result: VocResult) -> Table:
    """Per-class AP and mAP (percents), naming the metric and its AP definition (voc07 11-point
    or voc12 area), since the two give different numbers for the same detections."""
    table = Table(title=f"PASCAL VOC, {result.metric}")
    table.add_column("class")
    table.add_column(METRIC_DESCRIPTIONS[result.metric], justify="right")
    for name, ap in result.per_class.items():
        table.add_row(name, _percent(ap))
    table.add_section()
    table.add_row("mAP", _percent(result.mAP), style="bold")
    return table


def _percent(value: float) -> str:
    if math.isnan(value) or value < 0:
        return "-"
    return f"{100.0 * value:.1f}"


def classification_table(metrics: Mapping[str, float], title: str) -> Table:
    """Top-1/top-5 error in percent: single view, and 10-crop / multi-scale when the keys
    ``*_10crop`` / ``*_multiscale`` exist."""
    table = Table(title=title)
    for column in ("test", "top-1 err", "top-5 err"):
        table.add_column(column, justify="left" if column == "test" else "right")
    views = (("single view", ""), ("10-crop", "_10crop"), ("multi-scale (FCN)", "_multiscale"))
    for label, suffix in views:
        if f"top1_err{suffix}" in metrics:
            table.add_row(
                label,
                _percent(metrics[f"top1_err{suffix}"]),
                _percent(metrics.get(f"top5_err{suffix}", float("nan"))),
            )
    return table
