"""End-to-end classification through the CLI on tiny data written in the real formats."""

import json
import math
import shutil

import cv2
import pytest
import torch
from cli_helpers import invoke, output_text, runner

from resdet.cli import app
from resdet.data import build_cls_dataset
from resdet.data.synthetic import write_bright_dark_folder, write_tiny_cifar10
from resdet.engine.checkpoint import load_checkpoint
from resdet.models.api import create_model
from resdet.models.export import TOLERANCES, load_exported, read_metadata

FAST = ["--workers", "0", "--device", "cpu", "--no-amp"]


def yaml_config(run):
    import yaml

    return yaml.safe_load((run / "config.yaml").read_text())


def read_rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def untimed(rows):
    """Metrics rows without the wall-clock entries, which differ between any two runs."""
    return [{k: v for k, v in row.items() if k not in ("time", "img_per_s", "eta")} for row in rows]


def train_cifar(data, out, iters, *extra):
    return invoke(
        "train-cls",
        "cifar10",
        "--data-dir",
        data,
        "--depth",
        20,
        "--out",
        out,
        "--iters",
        iters,
        "--batch-size",
        8,
        *FAST,
        "--set",
        "train.eval_period=3",
        "--set",
        "train.log_period=1",
        "--set",
        "train.checkpoint_period=3",
        *extra,
    )


def test_cifar_run_eval_and_exact_resume(tmp_path, monkeypatch):
    data = write_tiny_cifar10(tmp_path / "cifar")
    whole, half = tmp_path / "whole", tmp_path / "half"
    train_cifar(data, whole, 6)
    assert {p.name for p in whole.iterdir()} >= {
        "config.yaml",
        "metrics.jsonl",
        "last.pt",
        "eval.json",
    }

    train_cifar(data, half, 3)
    invoke("train-cls", "cifar10", "--resume", half / "last.pt", "--iters", 6)
    assert untimed(read_rows(half)) == untimed(read_rows(whole))
    a, b = load_checkpoint(whole / "last.pt")["model"], load_checkpoint(half / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((half / "eval.json").read_text()) == json.loads(
        (whole / "eval.json").read_text()
    )

    # resdet eval reads everything from the checkpoint; its numbers equal a direct computation.
    result = invoke("eval", "--checkpoint", whole / "last.pt", "--json", tmp_path / "e.json")
    assert "top-1 err" in result.stdout
    reported = json.loads((tmp_path / "e.json").read_text())
    net = create_model("cifar_resnet20", num_classes=10)
    net.load_state_dict({k.removeprefix("net."): v for k, v in a.items()})
    test_set = build_cls_dataset("cifar10", data, "test", train=False)
    images = torch.stack([test_set[i][0] for i in range(len(test_set))])
    labels = torch.tensor([test_set[i][1] for i in range(len(test_set))])
    with torch.no_grad():
        top5 = net.eval()(images).topk(5, dim=1).indices
    assert reported["top1_err"] == pytest.approx((top5[:, 0] != labels).float().mean().item())
    top5_err = 1 - (top5 == labels[:, None]).any(dim=1).float().mean().item()
    assert reported["top5_err"] == pytest.approx(top5_err)
    # CIFAR-10 is tested on the single 32x32 view (paper 4.2): no 10-crop or multi-scale.
    for flag in ("--ten-crop", "--multi-scale"):
        refused = runner.invoke(app, ["eval", "--checkpoint", str(whole / "last.pt"), flag])
        assert refused.exit_code == 2 and "cifar10 is tested on its single view" in refused.output
        assert flag in " ".join(refused.output.split())

    # The ONNX export takes raw RGB in [0, 1] (its mean image inside) and gives the same logits.
    exported = output_text(invoke("export", "--checkpoint", whole / "last.pt"))
    assert f"cifar_resnet20 (raw weights) -> {whole / 'last.onnx'}" in exported
    assert exported.count("check, input") == 2
    assert read_metadata(whole / "last.onnx", "onnx")["class_names"][:2] == [
        "airplane",
        "automobile",
    ]
    raw = torch.from_numpy(test_set.images).permute(0, 3, 1, 2).float() / 255
    (logits,) = load_exported(whole / "last.onnx", "onnx")(raw)
    with torch.no_grad():
        assert (logits - net(images)).abs().max() < 1e-4
    refused = runner.invoke(app, ["export", "--checkpoint", str(whole / "last.pt"), "--dynamic"])
    assert refused.exit_code == 2 and "take 32x32 inputs only" in output_text(refused)
    monkeypatch.setitem(TOLERANCES, "logits", -1.0)  # any difference, even none, is too much
    refused = runner.invoke(app, ["export", "--checkpoint", str(whole / "last.pt")])
    assert refused.exit_code == 2
    assert f"{whole / 'last.onnx'} differs from the PyTorch model" in output_text(refused)

    invoke("plot", whole, half, "--out", tmp_path / "curves.png")
    # resdet.viz.plot_curves draws 7 x 4.5 inches at 120 dpi.
    assert cv2.imread(str(tmp_path / "curves.png")).shape == (540, 840, 3)


def test_folder_run_learns_and_registers_weights(tmp_path):
    data = write_bright_dark_folder(tmp_path / "bd")
    out = tmp_path / "run"
    invoke(
        "train-cls",
        f"folder:{data}",
        "--out",
        out,
        "--iters",
        30,
        "--batch-size",
        16,
        "--lr",
        0.05,
        "--register",
        *FAST,
        "--set",
        "model.name=cifar_resnet20",
        "--set",
        "data.views.train_scale=[32,40]",
        "--set",
        "data.views.crop=32",
        "--set",
        "data.views.test_size=32",
        "--set",
        "data.views.lighting_std=0",
        "--set",
        "train.eval_period=30",
        "--set",
        "train.log_period=5",
        "--set",
        "train.ema=0.9",
    )
    train = [r for r in read_rows(out) if r["type"] == "train"]
    assert train[-1]["loss_cls"] < train[0]["loss_cls"]
    final = json.loads((out / "eval.json").read_text())
    assert final["top1_err"] < 0.25  # chance is 0.5
    assert 0 <= final["ema/top1_err"] <= 1  # the average's numbers beside the trained weights
    listed = json.loads(invoke("weights", "list", "--json").stdout)
    assert [(e["arch"], e["tag"], e["num_classes"]) for e in listed] == [
        ("cifar_resnet20", "run", 2)
    ]
    scores = tmp_path / "eval.json"
    result = invoke(
        "eval", "--checkpoint", out / "last.pt", "--ten-crop", "--multi-scale", "--json", scores
    )
    assert "10-crop" in result.stdout and "multi-scale" in result.stdout
    metrics = json.loads(scores.read_text())
    assert {"top1_err", "top1_err_10crop", "top1_err_multiscale"} <= set(metrics)
    assert metrics["top1_err_multiscale"] < 0.5  # the trained net, whole images at 224-640 px

    # Exported, the averaged weights make the same predictions on the test images, resized
    # and cropped as its metadata says (here 32 px: nothing to do) and given in [0, 1].
    exported = output_text(
        invoke("export", "--checkpoint", out / "last.pt", "--format", "torchscript")
    )
    assert "(ema weights)" in exported
    model_file = out / "last.torchscript.pt"
    metadata = read_metadata(model_file, "torchscript")
    assert metadata["class_names"] == ["bright", "dark"]
    assert metadata["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
    test_set = build_cls_dataset(f"folder:{data}", None, "val", train=False)
    pixels = torch.stack([test_set[i][0].pixels for i in range(len(test_set))])
    labels = torch.tensor([test_set[i][1] for i in range(len(test_set))])
    (logits,) = load_exported(model_file, "torchscript")(pixels.float() / 255)
    wrong = (logits.argmax(1) != labels).float().mean().item()
    assert wrong == pytest.approx(final["ema/top1_err"])

    # The weight store takes the checkpoint too, averaged weights first.
    added = output_text(invoke("weights", "add", out / "last.pt", "--tag", "again"))
    assert added == f"added the ema weights of {out / 'last.pt'} as again"


def test_bad_input_is_named(tmp_path):
    result = runner.invoke(
        app, ["train-cls", "cifar10", "--data-dir", str(tmp_path / "nope"), *FAST]
    )
    assert result.exit_code == 2 and "nope" in result.output and "--download" in result.output
    # --download fetches only what is missing: batches already there are read as they are.
    data = write_tiny_cifar10(tmp_path / "present")
    invoke(
        "train-cls",
        "cifar10",
        "--download",
        "--data-dir",
        data,
        "--iters",
        1,
        "--batch-size",
        8,
        *FAST,
    )
    assert yaml_config(tmp_path / "runs" / "cifar10-cifar_resnet20")["data"]["download"] is True
    result = runner.invoke(app, ["train-cls", "cifar10", "--set", "optim.lrr=1"])
    assert result.exit_code == 2 and "did you mean 'lr'" in result.output
    data = write_tiny_cifar10(tmp_path / "cifar")
    train_cifar(data, tmp_path / "r", 1)
    again = runner.invoke(
        app, ["train-cls", "cifar10", "--data-dir", str(data), "--out", str(tmp_path / "r"), *FAST]
    )
    assert again.exit_code == 2 and "--resume" in again.output
    other = runner.invoke(
        app,
        [
            "train-cls",
            "cifar10",
            "--data-dir",
            str(data),
            "--depth",
            "32",
            "--out",
            str(tmp_path / "s"),
            "--resume",
            str(tmp_path / "r" / "last.pt"),
            *FAST,
        ],
    )
    assert (
        other.exit_code == 2
        and "cifar_resnet20" in other.output
        and "cifar_resnet32" in other.output
    )


def test_val_classes_must_match_train_classes(tmp_path):
    data = write_bright_dark_folder(tmp_path / "bd", per_class=4)
    shutil.rmtree(data / "val" / "dark")  # labels would shift: bright would become class 0
    result = runner.invoke(
        app, ["train-cls", f"folder:{data}", "--depth", "18", "--out", str(tmp_path / "r")]
    )
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())  # the console wraps long lines
    assert "only in training: ['dark'], only in evaluation: []" in message
    assert str(data / "val") in message


@pytest.mark.parametrize("decode", ["cpu", "gpu"])
def test_folder_run_resumes_exactly_whoever_decodes(tmp_path, decode):
    """uint8 views from 2 workers, or (data.decode=gpu, run here with --device cpu) bytes from
    them with decoding and views in the trainer's process: a run stopped and resumed with 0
    workers is the same run."""
    data = write_bright_dark_folder(tmp_path / "bd")
    small = [
        "--batch-size", 8, "--device", "cpu", "--no-amp",
        "--set", "model.name=cifar_resnet20", "--set", f"data.decode={decode}",
        "--set", "data.views.train_scale=[32,40]", "--set", "data.views.crop=32",
        "--set", "data.views.test_size=32", "--set", "train.log_period=3",
        "--set", "train.eval_period=3", "--set", "train.save_best=top1_err",
        "--set", "train.tensorboard=true",
    ]  # fmt: skip
    whole, half = tmp_path / "whole", tmp_path / "half"
    invoke("train-cls", f"folder:{data}", "--out", whole, "--iters", 6, "--workers", 2, *small)
    invoke("train-cls", f"folder:{data}", "--out", half, "--iters", 3, "--workers", 2, *small)
    invoke(
        "train-cls", f"folder:{data}", "--resume", half / "last.pt", "--iters", 6, "--workers", 0
    )
    rows = untimed(read_rows(whole))
    assert rows == untimed(read_rows(half))
    if decode == "gpu":
        assert [r["cpu_decoded_images"] for r in rows if r["type"] == "train"] == [0, 0]
    a, b = load_checkpoint(whole / "last.pt")["model"], load_checkpoint(half / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    best = [r for r in rows if r["type"] == "best"]
    assert best and load_checkpoint(whole / "best.pt")["iteration"] == best[-1]["iter"]
    assert "top-1 err" in invoke("eval", "--checkpoint", whole / "best.pt").stdout
    assert any((whole / "tb").glob("events.out.tfevents.*"))
    if decode == "cpu":  # the weight store takes best.pt with its metric; no EMA to insist on
        invoke("weights", "add", whole / "best.pt", "--tag", "best")
        (entry,) = json.loads(invoke("weights", "list", "--json").stdout)
        assert entry["metrics"] == {"top1_err": best[-1]["value"]}
        refused = runner.invoke(app, ["weights", "add", str(whole / "best.pt"), "--weights", "ema"])
        assert refused.exit_code == 2 and "holds no averaged weights" in output_text(refused)


def test_a_best_metric_the_run_does_not_report_is_refused_before_training(tmp_path):
    data = write_bright_dark_folder(tmp_path / "bd")
    run = str(tmp_path / "run")
    args = ["train-cls", f"folder:{data}", "--out", run, "--iters", "2", "--batch-size", "8", *FAST]
    result = runner.invoke(app, [*args, "--set", "train.save_best=bbox/AP"])
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert "train.save_best='bbox/AP' is not a metric this run evaluates" in message
    assert "top1_err, top5_err" in message
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.parametrize("recipe", ["imagenet_resnet50_tv_v2", "imagenet_resnet50_rsb_a1"])
def test_modern_recipes_run_and_resume_exactly(tmp_path, recipe):
    """torchvision's v2 and RSB A1 settings (random-resized crops, TrivialAugment or
    RandAugment, erasing, mixup and cutmix, repeated augmentation, label smoothing or BCE, SGD
    or LAMB) on a small net and set: a run stopped and resumed is the same run."""
    data = write_bright_dark_folder(tmp_path / "bd", per_class=8)
    small = [
        "--config", recipe, "--batch-size", 8, *FAST,
        "--set", "model.name=cifar_resnet20", "--set", "model.stride_in_1x1=null",
        "--set", "data.views.crop=32", "--set", "data.views.test_size=36",
        "--set", "data.views.test_crop=32", "--set", "optim.warmup_iters=2",
        # a schedule that does not depend on the run's length, so 2 + 2 iterations is 4
        "--set", "optim.schedule=step", "--set", "optim.steps=[3]",
        "--set", "train.eval_period=2", "--set", "train.log_period=1",
        "--set", "train.checkpoint_period=2",
    ]  # fmt: skip
    whole, half = tmp_path / "whole", tmp_path / "half"
    invoke("train-cls", f"folder:{data}", "--out", whole, "--iters", 4, *small)
    invoke("train-cls", f"folder:{data}", "--out", half, "--iters", 2, *small)
    invoke("train-cls", f"folder:{data}", "--resume", half / "last.pt", "--iters", 4)
    rows = untimed(read_rows(whole))
    assert rows == untimed(read_rows(half))
    assert all(math.isfinite(r["loss_cls"]) for r in rows if r["type"] == "train")
    saved = yaml_config(whole)
    assert (
        saved["data"]["mix"]["cutmix_alpha"] == 1.0 and saved["data"]["augment"]["policy"] != "none"
    )


def test_modern_pieces_on_small_images_resume_exactly(tmp_path):
    """digits_modern: TrivialAugment before the pad-and-crop, erasing after normalising,
    mixup/cutmix, EMA: stopped at 2 and resumed to 4 is the run of 4."""
    small = [
        "--config", "digits_modern", "--depth", 20, "--batch-size", 16, *FAST,
        "--set", "optim.schedule=step", "--set", "optim.steps=[3]",
        "--set", "optim.warmup_iters=2", "--set", "train.eval_period=2",
        "--set", "train.log_period=1", "--set", "train.checkpoint_period=2",
    ]  # fmt: skip
    whole, half = tmp_path / "whole", tmp_path / "half"
    invoke("train-cls", "digits", "--out", whole, "--iters", 4, *small)
    invoke("train-cls", "digits", "--out", half, "--iters", 2, *small)
    invoke("train-cls", "digits", "--resume", half / "last.pt", "--iters", 4)
    assert untimed(read_rows(whole)) == untimed(read_rows(half))
