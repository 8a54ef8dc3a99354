"""End-to-end detection through the CLI on tiny COCO- and VOC-format sets written by the tests."""

import json

import pytest
from cli_helpers import invoke, runner

from resdet.cli import app
from resdet.data.synthetic import write_tiny_coco, write_tiny_voc
from resdet.evaluation.coco import STAT_NAMES

# Small everything: 120x160 images at their own size, few proposals, a narrow box head.
TINY = [
    "--workers",
    "0",
    "--device",
    "cpu",
    "--no-amp",
    "--batch-size",
    "2",
    "--set",
    "model.min_size=[120]",
    "--set",
    "model.max_size=160",
    "--set",
    "model.backbone_weights=null",
    "--set",
    "model.rpn_pre_nms_top_n_train=100",
    "--set",
    "model.rpn_post_nms_top_n_train=50",
    "--set",
    "model.rpn_pre_nms_top_n_test=50",
    "--set",
    "model.rpn_post_nms_top_n_test=30",
    "--set",
    "model.box_batch_size_per_image=32",
    "--set",
    "model.box_head_width=64",
    "--set",
    "model.box_score_thresh=0.0",
    "--set",
    "train.log_period=1",
    "--set",
    "train.checkpoint_period=2",
    "--set",
    "optim.warmup=none",
    "--set",
    "optim.lr=0.005",
    "--set",
    "optim.steps=[]",
]


@pytest.mark.parametrize(("head", "task"), [("c4", "det"), ("fpn", "segm")])
def test_coco_format_train_eval_predict_resume(tmp_path, head, task):
    root = write_tiny_coco(tmp_path / "coco", n_images=4, with_masks=True)
    out = tmp_path / "run"
    common = ["--backbone", "resnet18", "--head", head, "--task", task, "--data-dir", root, *TINY]
    invoke("train-det", "coco", "--out", out, "--iters", 2, *common)
    report = json.loads((out / "eval.json").read_text())
    iou_types = ["bbox", "segm"] if task == "segm" else ["bbox"]
    assert sorted(report) == sorted([*iou_types, "data"])
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
    assert report["metric"] == "voc07" and set(report) == {"metric", "mAP", "per_class", "data"}

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
