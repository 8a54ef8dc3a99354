"""detectron2's detectors, imported with `resdet weights import --format detectron2`, give
detectron2's detections: every one has a twin (same label, IoU > 0.99, score within 1e-3), and
Mask R-CNN's masks overlap their twins' with IoU > 0.99.

detectron2's outputs are recorded by tools/detectron2_twins.py in tests/fixtures/detectron2,
with the recipe that regenerates its weights (synthetic_weights.py), so this test needs no
detectron2.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from detectron2_fixture import FIXTURE, detectron2_state, record
from pycocotools import mask as mask_utils
from torchvision.ops import box_iou
from typer.testing import CliRunner

from resdet.cli import app
from resdet.experiments.common import config_from_checkpoint
from resdet.experiments.configs import DetExperiment
from resdet.experiments.detection import build_model

MODELS = ["faster_rcnn_R_50_C4", "faster_rcnn_R_50_FPN", "mask_rcnn_R_50_FPN"]


@pytest.fixture(autouse=True)
def _two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def twins(ours: dict, theirs: dict) -> list[tuple[int, int]]:
    """(their index, our index) for each of detectron2's detections, matched greedily in
    detectron2's score order to our unmatched detection of the same label with the highest IoU;
    fails naming the first one without a twin."""
    boxes = torch.tensor(theirs["boxes"]).reshape(-1, 4)
    iou = box_iou(boxes, ours["boxes"]) if len(boxes) and len(ours["boxes"]) else None
    pairs, taken = [], set()
    for i, (label, score) in enumerate(zip(theirs["labels"], theirs["scores"], strict=True)):
        candidates = [
            j
            for j in range(len(ours["boxes"]))
            if j not in taken and int(ours["labels"][j]) == label and iou[i, j] > 0.99
            and abs(float(ours["scores"][j]) - score) < 1e-3
        ]  # fmt: skip
        assert candidates, (
            f"detectron2 detection {i} (label {label}, score {score:.4f}, box {theirs['boxes'][i]}) has no twin"
        )
        best = max(candidates, key=lambda j: float(iou[i, j]))
        taken.add(best)
        pairs.append((i, best))
    return pairs


def imported(tmp_path: Path, recorded: dict) -> tuple[DetExperiment, dict]:
    """The fixture's detectron2 weights saved as a detectron2 checkpoint and imported through
    the CLI: (the checkpoint's config, its state)."""
    checkpoint = tmp_path / "model_final.pth"
    torch.save({"model": detectron2_state(recorded)}, checkpoint)
    out = tmp_path / "imported.pt"
    result = CliRunner().invoke(
        app,
        ["weights", "import", str(checkpoint), "--format", "detectron2", "--out", str(out),
         "--class-names", "a,b,c"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return config_from_checkpoint(out, DetExperiment, "det")


def run_on(
    cfg: DetExperiment, state: dict, recorded: dict, index: int
) -> tuple[torch.Tensor, dict]:
    """(proposals [P, 4], detections) of the imported detector on fixture image ``index``."""
    bgr = cv2.imread(str(FIXTURE / recorded["images"][index]))
    height, width = bgr.shape[:2]
    # At its own size, so neither library resizes (their resize filters differ).
    post_nms = int(recorded["overrides"].get("MODEL.RPN.POST_NMS_TOPK_TEST", 1000))
    sized = replace(
        cfg,
        model=replace(cfg.model, rpn=replace(cfg.model.rpn, post_nms_top_n_test=post_nms)),
        data=replace(
            cfg.data,
            sizes=replace(
                cfg.data.sizes, min_size=(min(height, width),), max_size=max(height, width)
            ),
        ),
    )
    model = build_model(sized, recorded["num_classes"], backbone_weights=None)
    model.load_state_dict(state["model"])
    model.eval()
    image = torch.from_numpy(np.ascontiguousarray(bgr[:, :, ::-1])).permute(2, 0, 1) / 255
    with torch.no_grad():
        batch, _ = model.transform([image])
        proposals, _ = model.rpn(batch, model.backbone(batch.tensors))
        return proposals[0], model([image])[0]


@pytest.mark.parametrize("name", MODELS)
def test_detectron2_detector_gives_detectron2s_detections(tmp_path: Path, name: str) -> None:
    recorded = record(name)
    cfg, state = imported(tmp_path, recorded)
    for index, image_name in enumerate(recorded["images"]):
        proposals, ours = run_on(cfg, state, recorded, index)
        theirs = recorded["outputs"][index]
        top = torch.tensor(theirs["proposals"])
        found = box_iou(top, proposals[: len(top) + 10]).max(dim=1).values > 0.999
        assert found.float().mean() >= 0.98, f"{image_name}: proposals {found.float().mean():.3f}"
        assert len(ours["boxes"]) == len(theirs["boxes"])
        pairs = twins(ours, theirs)
        if "masks" in theirs:
            for i, j in pairs:
                theirs_mask = mask_utils.decode(theirs["masks"][i]).astype(bool)
                ours_mask = (ours["masks"][j, 0] >= 0.5).numpy()
                union = (theirs_mask | ours_mask).sum()
                # A box thinner than a pixel covers no pixel centre: both masks are empty.
                overlap = (theirs_mask & ours_mask).sum() / union if union else 1.0
                assert overlap > 0.99, f"{image_name}: mask of detection {i} IoU {overlap:.4f}"


def test_torchvisions_conventions_do_not_give_detectron2s_detections(tmp_path: Path) -> None:
    """The twin check can fail: the same weights under torchvision's RoIAlign and anchors."""
    recorded = record("faster_rcnn_R_50_FPN")
    cfg, state = imported(tmp_path, recorded)
    conventions = replace(
        cfg.model.conventions, roi_aligned=False, anchor_rounding=True, roi_sampling_ratio=2
    )
    torchvision_ways = replace(cfg, model=replace(cfg.model, conventions=conventions))
    _, ours = run_on(torchvision_ways, state, recorded, 0)
    with pytest.raises(AssertionError, match="has no twin"):
        twins(ours, recorded["outputs"][0])
