"""detectron2 and Caffe2 files: MSRA-style ImageNet backbones into the store, .pkl detectors,
and pickles that would run code."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2_fixture import detectron2_state, record
from typer.testing import CliRunner

import resdet
from resdet.cli import app
from resdet.data.cls_transforms import IMAGENET_STD
from resdet.engine.checkpoint import load_checkpoint


@pytest.fixture(autouse=True)
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESDET_HOME", str(tmp_path / "home"))


def invoke(*args: object) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def caffe2_blobs(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """A resnet50 state dict under the Caffe2 / Detectron blob names of the MSRA models, with
    conv1 taking BGR 0..255 input minus the mean (PIXEL_STD 1)."""
    blobs = {}
    for name, value in state.items():
        if name.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue  # Caffe2's affine BN holds a scale and a bias only
        parts = name.split(".")
        if parts[0] == "conv1":
            scale = torch.tensor([255 * s for s in IMAGENET_STD])[None, :, None, None]
            blobs["conv1_w"] = (value / scale).flip(1)
        elif parts[0] == "bn1":
            blobs[f"res_conv1_bn_{'s' if parts[1] == 'weight' else 'b'}"] = value
        elif parts[0] == "fc":
            blobs[f"fc1000_{'w' if parts[1] == 'weight' else 'b'}"] = value
        else:
            stage, block, layer, field = int(parts[0][-1]) + 1, parts[1], parts[2], parts[-1]
            if layer == "downsample":
                branch, is_bn = "1", parts[3] == "1"
            else:
                branch, is_bn = {"1": "2a", "2": "2b", "3": "2c"}[layer[-1]], layer.startswith("bn")
            suffix = ("_bn_s" if field == "weight" else "_bn_b") if is_bn else "_w"
            blobs[f"res{stage}_{block}_branch{branch}{suffix}"] = value
    blobs["conv1_w_momentum"] = np.zeros(1)  # optimizer state that the importer skips
    return {
        k: np.asarray(v.detach().numpy() if isinstance(v, torch.Tensor) else v)
        for k, v in blobs.items()
    }


def test_msra_caffe2_backbone_imports_with_the_same_logits(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = resdet.create_model("resnet50").eval()  # the paper's layout: stride in the 1x1
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):  # affine only, as Caffe2 stores it
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.1)
            module.running_mean.zero_()
            module.running_var.fill_(1.0)
    path = tmp_path / "R-50.pkl"
    path.write_bytes(pickle.dumps({"blobs": caffe2_blobs(model.state_dict())}, protocol=2))
    assert "imported" in invoke(
        "weights", "import", path, "--format", "detectron2", "--tag", "msra"
    )
    listed = json.loads(invoke("weights", "list", "--json"))
    assert [(e["arch"], e["tag"], e["variant"]["stride_in_1x1"]) for e in listed] == [
        ("resnet50", "msra", True)
    ]
    loaded = resdet.create_model("resnet50", weights="msra").eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model(images), atol=1e-4, rtol=1e-4)


def test_detector_pkl_imports_like_its_pth(tmp_path: Path) -> None:
    state = detectron2_state(record("faster_rcnn_R_50_FPN"))
    torch.save({"model": state}, tmp_path / "model.pth")
    zoo = {"model": {k: v.numpy() for k, v in state.items()}, "__author__": "Detectron2 Model Zoo"}
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(zoo, protocol=2))
    converted = []
    for suffix in ("pth", "pkl"):
        out = tmp_path / f"{suffix}.pt"
        invoke("weights", "import", tmp_path / f"model.{suffix}", "--format", "detectron2",
               "--out", out, "--class-names", "a,b,c")  # fmt: skip
        converted.append(load_checkpoint(out))
    assert converted[0]["meta"]["class_names"] == ["a", "b", "c"]
    assert converted[0]["meta"]["config"]["model"]["conventions"]["roi_aligned"] is True
    for key, value in converted[0]["model"].items():
        assert torch.equal(value, converted[1]["model"][key]), key


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pkl_that_names_code_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "R-50.pkl"
    path.write_bytes(pickle.dumps({"blobs": {"conv1_w": _Payload(marker)}}, protocol=2))
    result = CliRunner().invoke(
        app, ["weights", "import", str(path), "--format", "detectron2", "--tag", "x"]
    )
    assert result.exit_code == 2 and not marker.exists()
    assert "posix.system" in " ".join(result.output.split())


def test_wrong_class_names_and_missing_tag_are_named(tmp_path: Path) -> None:
    torch.save({"model": detectron2_state(record("faster_rcnn_R_50_C4"))}, tmp_path / "m.pth")
    result = CliRunner().invoke(
        app, ["weights", "import", str(tmp_path / "m.pth"), "--format", "detectron2"]
    )  # COCO's 80 names for a 3-class detector
    assert result.exit_code == 2 and "3 classes but 80 class names" in " ".join(
        result.output.split()
    )
