"""End-to-end detection through the CLI on tiny COCO- and VOC-format sets written by the tests."""

import json

import pytest
from cli_helpers import TINY_DET as TINY
from cli_helpers import invoke, output_text, runner

from resdet.cli import app
from resdet.data.synthetic import write_tiny_coco, write_tiny_voc
from resdet.evaluation.coco import STAT_NAMES
from resdet.models.export import read_metadata
from resdet.models.weights import find_weights


@pytest.mark.parametrize(("head", "task"), [("c4", "det"), ("fpn", "segm")])
def test_coco_train_eval_predict_resume(tmp_path, head, task):
    root = write_tiny_coco(tmp_path / "coco", n_images=4, with_masks=True)
    out = tmp_path / "run"
    common = ["--backbone", "resnet18", "--head", head, "--task", task, "--data-dir", root, *TINY]
    invoke("train-det", "coco", "--out", out, "--iters", 2, *common)
    report = json.loads((out / "eval.json").read_text())
    iou_types = ["bbox", "segm"] if task == "segm" else ["bbox"]
    assert sorted(report) == sorted([*iou_types, "data", "seconds"])
    assert set(report["seconds"]) == {"data", "model", "training", "evaluation"}
    assert report["data"]["train"]["images"] == 4
    for iou_type in iou_types:
        assert set(report[iou_type]) == {*STAT_NAMES, "per_class"}
        assert set(report[iou_type]["per_class"]) == {"square", "circle", "triangle"}

    invoke("train-det", "coco", "--resume", out / "last.pt", "--iters", 3)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows if r["type"] == "train"] == [1, 2, 3]

    results = tmp_path / "dt.json"
    result = invoke(
        "eval",
        "--checkpoint",
        out / "last.pt",
        "--json",
        tmp_path / "e.json",
        "--results-out",
        results,
    )
    assert "AP50" in result.stdout
    # The saved results file evaluated on its own gives the checkpoint evaluation's numbers.
    gt = root / "annotations" / "instances_val2017.json"
    for iou_type in iou_types:
        invoke(
            "eval",
            "--annotations",
            gt,
            "--results",
            results,
            "--iou-type",
            iou_type,
            "--json",
            tmp_path / "f.json",
        )
        from_checkpoint = json.loads((tmp_path / "e.json").read_text())[iou_type]
        from_file = json.loads((tmp_path / "f.json").read_text())[iou_type]
        assert from_file.pop("per_class") == pytest.approx(from_checkpoint.pop("per_class"))
        assert from_file == pytest.approx(from_checkpoint)

    image = next((root / "val2017").glob("*.jpg"))
    invoke(
        "predict",
        image,
        "--checkpoint",
        out / "last.pt",
        "--out",
        tmp_path / "pred",
        "--score-thresh",
        "0",
    )
    assert (tmp_path / "pred" / f"{image.stem}_pred.png").is_file()

    fmt, suffix = ("onnx", ".onnx") if head == "c4" else ("torchscript", ".torchscript.pt")
    exported = invoke(
        "export", "--checkpoint", out / "last.pt", "--format", fmt, "--check-image", image
    )
    kind = "Mask R-CNN" if task == "segm" else "Faster R-CNN"
    assert f"resnet18-{head} {kind} (raw weights) -> {out / f'last{suffix}'}" in output_text(
        exported
    )
    # the random image, the same transposed, a grey one, and the image given
    assert output_text(exported).count("check, input") == 4
    metadata = read_metadata(out / f"last{suffix}", fmt)
    assert metadata["class_names"] == ["square", "circle", "triangle"]
    assert metadata["preprocessing"]["resize"].startswith("inside the model: shorter side to 120")


def test_voc_train_and_voc_tables(tmp_path):
    devkit = write_tiny_voc(tmp_path / "voc", n_images=4)
    out = tmp_path / "run"
    invoke(
        "train-det",
        "voc0712",
        "--backbone",
        "resnet18",
        "--head",
        "fpn",
        "--data-dir",
        devkit,
        "--out",
        out,
        "--iters",
        1,
        *TINY,
    )
    report = json.loads((out / "eval.json").read_text())
    assert report["metric"] == "voc07"
    assert set(report) == {"metric", "mAP", "per_class", "data", "seconds"}

    invoke(
        "eval",
        "--checkpoint",
        out / "last.pt",
        "--results-out",
        tmp_path / "voc_results",
        "--metric",
        "voc12",
        "--json",
        tmp_path / "v.json",
    )
    assert json.loads((tmp_path / "v.json").read_text())["metric"] == "voc12"
    result = invoke(
        "eval",
        "--voc-root",
        devkit,
        "--year",
        "2007",
        "--split",
        "test",
        "--results-dir",
        tmp_path / "voc_results",
        "--json",
        tmp_path / "w.json",
    )
    assert "11-point" in result.stdout
    assert json.loads((tmp_path / "w.json").read_text())["metric"] == "voc07"


def test_bad_input_is_named(tmp_path):
    result = runner.invoke(
        app, ["train-det", "coco", "--data-dir", str(tmp_path / "missing"), *TINY]
    )
    assert result.exit_code == 2 and "missing" in result.output
    result = runner.invoke(app, ["train-det", "cityscapes"])
    assert result.exit_code == 2 and "no packaged recipe" in result.output
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    root = write_tiny_coco(tmp_path / "coco", n_images=2)
    gt = root / "annotations" / "instances_val2017.json"
    result = invoke("eval", "--annotations", gt, "--results", empty, "--json", tmp_path / "z.json")
    assert json.loads((tmp_path / "z.json").read_text())["bbox"]["AP"] == 0
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps([{"image_id": 999, "category_id": 3, "bbox": [0, 0, 5, 5], "score": 1}])
    )
    result = runner.invoke(app, ["eval", "--annotations", str(gt), "--results", str(bad)])
    assert result.exit_code == 2 and "999" in result.output


def test_readme_quickstart_runs_end_to_end(tmp_path):
    """`resdet train-det shapes`, the README's main job, with its recipe and a few steps."""
    result = invoke("train-det", "shapes", "--iters", 4, "--workers", 0, "--device", "cpu")
    out = tmp_path / "runs" / "shapes-faster-resnet18-fpn"
    text = " ".join(result.output.split())
    assert "shapes train: 1,000 images" in text and "shapes eval: 100 images" in text
    assert "resnet18 backbone starts from random initialisation" in text
    assert "COCO bbox AP (%)" in text and "AP50" in text
    report = json.loads((out / "eval.json").read_text())
    assert set(report["bbox"]) == {*STAT_NAMES, "per_class"}
    assert set(report["bbox"]["per_class"]) == {"square", "circle", "triangle"}
    assert report["data"]["train"]["images"] == 1000 and report["data"]["eval"]["boxes"] > 100
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["type"] == "data" and rows[-1]["type"] == "eval"


def test_backbone_weights_choice_is_printed_and_recorded(tmp_path):
    import yaml

    import resdet
    from resdet.engine.checkpoint import read_checkpoint_meta
    from resdet.models.factory import Variant
    from resdet.models.weights import add_weights

    for tag in ("first", "second"):
        add_weights(
            "resnet18",
            resdet.create_model("resnet18").state_dict(),
            tag=tag,
            variant=Variant("B", True),
            num_classes=1000,
            dataset="imagenet",
            metrics={"top1_err": 0.3 if tag == "first" else 0.4},
            source="test",
        )
    invoke("weights", "default", "resnet18", "second")
    listed = json.loads(invoke("weights", "list", "--json").stdout)
    assert [(e["tag"], e["default"]) for e in listed] == [("first", False), ("second", True)]
    assert "second *" in invoke("weights", "list").stdout

    root = write_tiny_coco(tmp_path / "coco", n_images=2, with_masks=False)
    at = TINY.index("model.backbone_weights=null")
    no_null = TINY[: at - 1] + TINY[at + 1 :]  # without that --set pair
    args = ["train-det", "coco", "--backbone", "resnet18", "--data-dir", root, *no_null]
    result = invoke(*args, "--out", tmp_path / "run", "--iters", 1, "--backbone-weights", "auto")
    text = " ".join(result.output.split())
    assert "resnet18 backbone weights: ImageNet 'second'" in text and "the default set with" in text
    model_cfg = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["model"]
    second = find_weights("resnet18", "second")
    assert (model_cfg["backbone_weights"], model_cfg["backbone_sha256"]) == (
        "second",
        second.sha256,
    )
    saved = read_checkpoint_meta(tmp_path / "run" / "last.pt")["config"]["model"]
    assert saved["backbone_sha256"] == second.sha256

    # The recorded digest is checked: a replaced entry stops a run started from that config.
    replaced = runner.invoke(
        app,
        [str(a) for a in args]
        + ["--config", str(tmp_path / "run" / "config.yaml"), "--out", str(tmp_path / "b")]
        + ["--set", f"model.backbone_sha256={'0' * 64}"],
    )
    assert replaced.exit_code == 2 and "the entry was replaced since" in replaced.output

    result = invoke(*args, "--out", tmp_path / "c", "--iters", 1, "--backbone-weights", "none")
    assert "starts from random initialisation" in result.output


def test_a_packaged_recipe_by_name(tmp_path):
    import yaml

    root = write_tiny_coco(tmp_path / "coco", n_images=2, with_masks=False)
    recipe = "detectron2/faster_rcnn_R_50_FPN_1x"
    args = ["train-det", "coco", "--config", recipe, "--data-dir", root, "--out", tmp_path / "r"]
    invoke(*args, "--backbone", "resnet18", "--iters", 1, *TINY)
    model = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["model"]
    conventions = model["conventions"]
    assert (model["head"], conventions["roi_aligned"], conventions["rpn_box_loss_beta"]) == (
        "fpn",
        True,
        0.0,
    )
    wrong = runner.invoke(app, ["train-det", "coco", "--config", "detectron2/nope"])
    assert wrong.exit_code == 2 and "neither a file nor a packaged recipe" in wrong.output
