"""Drawing: training curves as in the paper's Figs. 4 and 6, and detections on images."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np


def read_metrics(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """The ``train`` and ``eval`` rows of a run's ``metrics.jsonl``."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} a resdet run folder?")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("type") == "train"], [
        r for r in rows if r.get("type") == "eval"
    ]


def plot_curves(
    run_dirs: list[Path],
    out: Path,
    *,
    metric: str = "top1_err",
    labels: list[str] | None = None,
    title: str | None = None,
) -> None:
    """Training error (thin) and test error (bold) in percent against iterations, one colour a run.

    ``metric`` names the error logged both by training (per log period) and by evaluation,
    as a fraction. Writes a PNG (or any format matplotlib infers from ``out``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for i, run_dir in enumerate(run_dirs):
        train, evals = read_metrics(run_dir)
        label = labels[i] if labels else Path(run_dir).name
        color = f"C{i}"
        thin = [(r["iter"], 100 * r[metric]) for r in train if metric in r]
        bold = [(r["iter"], 100 * r[metric]) for r in evals if metric in r]
        if not thin and not bold:
            raise ValueError(
                f"{run_dir}/metrics.jsonl has no {metric!r} entries; choose another --metric"
            )
        if thin:
            ax.plot(*zip(*thin, strict=True), color=color, linewidth=0.7, alpha=0.8)
        if bold:
            ax.plot(*zip(*bold, strict=True), color=color, linewidth=2.2, label=label)
    ax.set_xlabel("iteration")
    ax.set_ylabel("error (%)")
    ax.set_title(title or "training error (thin) and test error (bold)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


def instance_colors(n: int) -> np.ndarray:
    """``n`` well-separated RGB colours (uint8 [n, 3]), the same for the same ``n``."""
    if n == 0:
        return np.zeros((0, 3), np.uint8)
    hues = (np.arange(n) * 0.618034) % 1.0
    hsv = np.stack([hues * 180, np.full(n, 200), np.full(n, 255)], axis=1).astype(np.uint8)
    return cv2.cvtColor(hsv[None], cv2.COLOR_HSV2RGB)[0]


def draw_detections(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: list[str],
    scores: np.ndarray,
    masks: np.ndarray | None = None,
    mask_alpha: float = 0.45,
) -> np.ndarray:
    """A copy of ``image`` (uint8 RGB [H, W, 3]) with detections drawn.

    ``boxes`` float [N, 4] xyxy in the image's pixels, ``labels`` N class names, ``scores`` [N]
    in [0, 1], ``masks`` optional bool/uint8 [N, H, W] drawn translucent in per-instance colours.
    """
    canvas = image.copy()
    colors = instance_colors(len(boxes))
    if masks is not None:
        for mask, color in zip(masks, colors, strict=True):
            region = mask.astype(bool)
            canvas[region] = (1 - mask_alpha) * canvas[region] + mask_alpha * color
    thickness = max(1, round(min(image.shape[:2]) / 250))
    for box, label, score, color in zip(boxes, labels, scores, colors, strict=True):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        rgb = tuple(int(c) for c in color)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), rgb, thickness)
        text = f"{label} {score:.2f}"
        scale = 0.4 * thickness
        (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        top = max(y1 - h - base, 0)
        cv2.rectangle(canvas, (x1, top), (x1 + w, top + h + base), rgb, -1)
        cv2.putText(canvas, text, (x1, top + h), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1)
    return canvas
