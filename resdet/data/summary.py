"""What a data set holds and what reading it dropped: one summary per split, for people and logs.

Training prints `summary_line` for each split before the first step and records `data_summary`
in ``metrics.jsonl`` and ``eval.json``, so that a drop never goes unseen.
"""

from __future__ import annotations

from typing import Any

# Detection drop counters (resdet.data.detection.STAT_KEYS) as the summary line words them.
_DROPPED_BOXES = {
    "dropped_zero_size": "zero size",
    "dropped_not_finite": "NaN or infinite",
    "dropped_outside": "outside image",
}


def data_summary(dataset: Any) -> dict[str, int]:
    """Counts for one split.

    Detection sets: their ``stats`` (images, boxes and every cleaning counter of
    ``resdet.data.detection.STAT_KEYS``). Classification sets: ``images`` and ``classes``.
    """
    stats = getattr(dataset, "stats", None)
    if stats is not None:
        return {key: int(value) for key, value in stats.items()}
    return {"images": len(dataset), "classes": len(dataset.class_names)}


def summary_line(split: str, counts: dict[str, int]) -> str:
    """One line for people, e.g. ``train: 117,266 images, 860,001 boxes; dropped 12 boxes (zero
    size 9, outside image 3), clipped 41, 1,021 images without objects (dropped)``."""
    head = f"{counts['images']:,} images"
    if "classes" in counts:
        return f"{split}: {head}, {counts['classes']:,} classes"
    head += f", {counts['boxes']:,} boxes"
    changes = []
    dropped = {text: counts[key] for key, text in _DROPPED_BOXES.items() if counts.get(key)}
    if dropped:
        reasons = ", ".join(f"{text} {n:,}" for text, n in dropped.items())
        changes.append(f"dropped {sum(dropped.values()):,} boxes ({reasons})")
    if counts.get("clipped_boxes"):
        changes.append(f"clipped {counts['clipped_boxes']:,}")
    if counts.get("dropped_polygons"):
        changes.append(f"{counts['dropped_polygons']:,} malformed polygons removed")
    if counts.get("objects_without_mask"):
        changes.append(f"{counts['objects_without_mask']:,} objects without a usable mask dropped")
    if counts.get("images_without_objects"):
        fate = "dropped" if counts.get("dropped_empty_images") else "kept as negatives"
        changes.append(f"{counts['images_without_objects']:,} images without objects ({fate})")
    return f"{split}: {head}" + (f"; {', '.join(changes)}" if changes else "")
