"""`resdet models`, `resdet weights ...` and `--version` through the real Typer app."""

import json

import pytest
import torch
import torchvision
from cli_helpers import runner

import resdet
from resdet.cli import app


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and resdet.__version__ in result.stdout


def test_models_json_lists_facts():
    result = runner.invoke(app, ["models", "resnet*", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert set(rows) == {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152"}
    # torchvision's parameter count and the paper's 3.858 GMACs layout (paper Table 1, MSRA release).
    assert rows["resnet50"]["params"] == 25_557_032
    assert rows["resnet50"]["macs"] == pytest.approx(3.858e9, rel=5e-3)
    assert rows["resnet50"]["family"] == "imagenet" and rows["resnet50"]["depth"] == 50
    assert rows["resnet50"]["weights"] == []


def test_models_table_and_unknown_pattern():
    result = runner.invoke(app, ["models", "cifar_resnet2*"])
    assert result.exit_code == 0 and "cifar_resnet20" in result.stdout and "0.27" in result.stdout
    result = runner.invoke(app, ["models", "vgg*"])
    assert result.exit_code == 2 and "no model matches" in result.output


def test_datasets_lists_both_registries():
    result = runner.invoke(app, ["datasets", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["cifar10"]["command"] == "train-cls"
    assert rows["cifar10"]["default_root"] == "datasets/cifar10"
    assert rows["coco-format:PATH"]["command"] == "train-det"
    assert rows["coco-format:PATH"]["default_root"] is None
    assert {"folder:PATH", "digits", "imagenet", "shapes", "coco", "voc0712"} <= set(rows)
    table = runner.invoke(app, ["datasets"])
    assert table.exit_code == 0 and "voc2012" in table.stdout


def test_weights_import_export_round_trip_through_cli(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None).eval()
    checkpoint = tmp_path / "r18.pth"
    torch.save(reference.state_dict(), checkpoint)

    args = ["weights", "import", str(checkpoint), "--arch", "resnet18", "--tag", "tv"]
    result = runner.invoke(app, [*args, "--format", "torchvision"])
    assert result.exit_code == 0, result.output
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "--force" in again.output
    assert runner.invoke(app, [*args, "--force"]).exit_code == 0

    x = torch.randn(2, 3, 64, 64)
    model = resdet.create_model("resnet18", weights="tv").eval()
    with torch.no_grad():
        assert (model(x) - reference(x)).abs().max() < 1e-5

    listed = json.loads(runner.invoke(app, ["weights", "list", "--json"]).stdout)
    assert [(e["arch"], e["tag"]) for e in listed] == [("resnet18", "tv")]
    models = json.loads(runner.invoke(app, ["models", "resnet18", "--json"]).stdout)
    assert models[0]["weights"] == ["tv"]

    exported = tmp_path / "out.pth"
    result = runner.invoke(app, ["weights", "export", "resnet18", str(exported), "--tag", "tv"])
    assert result.exit_code == 0, result.output
    back = torchvision.models.resnet18(weights=None).eval()
    back.load_state_dict(torch.load(exported, weights_only=True))
    with torch.no_grad():
        assert (back(x) - reference(x)).abs().max() < 1e-5

    result = runner.invoke(app, ["weights", "remove", "resnet18", "tv"])
    assert result.exit_code == 0 and "removed resnet18:tv" in result.output
    assert json.loads(runner.invoke(app, ["weights", "list", "--json"]).stdout) == []
    again = runner.invoke(app, ["weights", "remove", "resnet18", "tv"])
    assert again.exit_code == 2 and "no weights tagged 'tv' for resnet18" in again.output


def test_weights_import_refuses_wrong_arch(tmp_path):
    checkpoint = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), checkpoint)
    result = runner.invoke(
        app, ["weights", "import", str(checkpoint), "--arch", "resnet34", "--tag", "x"]
    )
    assert result.exit_code == 2 and str(checkpoint) in result.output
