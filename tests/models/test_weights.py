"""The weight store: torchvision import/export round trips, integrity and overwrite checks."""

import json
from pathlib import Path

import pytest
import torch
import torchvision
from torchvision.ops import FrozenBatchNorm2d

import resdet
from resdet.models.factory import Variant
from resdet.models.torchvision_io import export_torchvision, import_torchvision
from resdet.models.weight_defaults import choose_imagenet_weights, default_tag, set_default
from resdet.models.weights import (
    add_weights,
    find_weights,
    list_weights,
    load_into,
    remove_weights,
    store_root,
)

# Logits of the same weights in two implementations agree to float32 rounding (brief: < 1e-5).
ATOL = 1e-5


@pytest.fixture(autouse=True)
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RESDET_HOME", str(tmp_path / "home"))
    return tmp_path / "home" / "weights"


def randomised(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` in eval mode with random BN statistics and affine terms, so that a wrong
    key mapping or layout cannot give the same logits by accident."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                for t in (m.weight, m.bias, m.running_mean):
                    t.copy_(torch.randn(t.shape, generator=generator) * 0.1 + (t is m.weight))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=generator) + 0.5)
    return model.eval()


def torchvision_checkpoint(tmp_path: Path, arch: str, num_classes: int = 1000) -> tuple:
    torch.manual_seed(0)
    model = randomised(getattr(torchvision.models, arch)(weights=None, num_classes=num_classes))
    path = tmp_path / f"{arch}.pth"
    torch.save(model.state_dict(), path)
    return model, path


def cifar_entry(tag: str = "run1", *, shortcut: str = "A", force: bool = False):
    model = resdet.create_model("cifar_resnet20", shortcut=shortcut)
    variant = Variant(shortcut=shortcut, stride_in_1x1=True)
    entry = add_weights(
        "cifar_resnet20",
        model.state_dict(),
        tag=tag,
        variant=variant,
        num_classes=10,
        dataset="cifar10",
        metrics={"top1_err": 0.0875},  # ResNet-20's 8.75% (paper Table 6); any number would do
        source="test",
        force=force,
    )
    return model, entry


IMAGES = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_import_torchvision_gives_the_same_logits(tmp_path: Path, arch: str) -> None:
    reference, path = torchvision_checkpoint(tmp_path, arch)
    entry = import_torchvision(path, arch, tag="tv")
    assert entry.variant == Variant("B", stride_in_1x1=False)
    assert (entry.num_classes, entry.dataset, entry.source) == (
        1000,
        "imagenet",
        str(path.resolve()),
    )
    model = resdet.create_model(arch, weights="tv").eval()
    with torch.no_grad():
        assert (model(IMAGES) - reference(IMAGES)).abs().max() < ATOL


def test_export_round_trip_loads_strictly_into_torchvision(tmp_path: Path) -> None:
    reference, path = torchvision_checkpoint(tmp_path, "resnet18", num_classes=7)
    entry = import_torchvision(path, "resnet18", tag="seven")
    assert entry.num_classes == 7
    out = export_torchvision("resnet18", "seven", tmp_path / "out" / "exported.pth")
    model = torchvision.models.resnet18(num_classes=7)
    model.load_state_dict(torch.load(out, weights_only=True), strict=True)
    with torch.no_grad():
        assert (model.eval()(IMAGES) - reference(IMAGES)).abs().max() < ATOL
    with pytest.raises(FileExistsError, match="--force"):
        export_torchvision("resnet18", "seven", out)
    export_torchvision("resnet18", "seven", out, force=True)


def test_nested_checkpoint_with_module_prefix(tmp_path: Path) -> None:
    reference, _ = torchvision_checkpoint(tmp_path, "resnet18")
    path = tmp_path / "ddp.pth"
    state = {f"module.{k}": v for k, v in reference.state_dict().items()}
    torch.save({"model": state, "epoch": 3}, path)
    import_torchvision(path, "resnet18", tag="ddp")
    model = resdet.create_model("resnet18", weights="ddp").eval()
    with torch.no_grad():
        assert (model(IMAGES) - reference(IMAGES)).abs().max() < ATOL


def test_import_refuses_files_that_are_not_state_dicts(tmp_path: Path) -> None:
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(3)], path)
    with pytest.raises(ValueError, match="list.pth is not a state dict"):
        import_torchvision(path, "resnet18", tag="x")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pth is not a readable"):
        import_torchvision(garbage, "resnet18", tag="x")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        import_torchvision(tmp_path / "missing.pth", "resnet18", tag="x")


def test_wrong_arch_is_refused_with_shapes(tmp_path: Path) -> None:
    _, path = torchvision_checkpoint(tmp_path, "resnet50")
    with pytest.raises(ValueError, match="resnet50.pth does not fit") as err:
        import_torchvision(path, "resnet18", tag="wrong")
    message = str(err.value)
    # resnet50's first bottleneck 1x1 conv against resnet18's first basic-block 3x3 conv.
    assert "layer1.0.conv1.weight: file [64, 64, 1, 1] vs resnet18 [64, 64, 3, 3]" in message
    assert "unexpected keys" in message and "it fits resnet50: import it with that arch" in message
    assert list_weights() == []


def test_corrupted_file_is_refused_naming_it() -> None:
    _, entry = cifar_entry()
    data = bytearray(entry.path.read_bytes())
    data[-100:] = bytes(255 - b for b in data[-100:])
    entry.path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256") as err:
        resdet.create_model("cifar_resnet20", weights="run1")
    assert str(entry.path) in str(err.value)


def test_overwrite_needs_force() -> None:
    first, entry = cifar_entry()
    with pytest.raises(FileExistsError, match="--force"):
        cifar_entry()
    second, replaced = cifar_entry(force=True)
    assert replaced.sha256 != entry.sha256
    loaded = resdet.create_model("cifar_resnet20", weights="run1")
    assert torch.equal(loaded.conv1.weight, second.conv1.weight)
    assert not list(entry.path.parent.glob("*.tmp"))


def test_manifest_records_the_entry(store: Path) -> None:
    _, entry = cifar_entry()
    assert entry.path == store / "cifar_resnet20" / "run1.safetensors"
    manifest = json.loads(entry.manifest_path.read_text())
    assert manifest["variant"] == {"shortcut": "A", "stride_in_1x1": True}
    assert manifest["metrics"] == {"top1_err": 0.0875}
    assert manifest["resdet_version"] == resdet.__version__
    assert manifest["date"].endswith("+00:00")
    assert find_weights("cifar_resnet20", "run1") == entry


def test_listing_skips_broken_manifests(store: Path) -> None:
    assert list_weights() == []
    cifar_entry("a")
    cifar_entry("b")
    (store / "cifar_resnet20" / "broken.json").write_text("{not json")
    with pytest.warns(UserWarning, match="broken.json"):
        entries = list_weights("cifar_resnet20")
    assert [e.tag for e in entries] == ["a", "b"]
    with pytest.warns(UserWarning):
        assert resdet.model_info("cifar_resnet20").weights == ("a", "b")
    assert list_weights("resnet18") == []
    remove_weights("cifar_resnet20", "a")
    with pytest.warns(UserWarning):
        assert [e.tag for e in list_weights()] == ["b"]
    with pytest.raises(FileNotFoundError, match="'a'"):
        remove_weights("cifar_resnet20", "a")


def test_fewer_classes_keep_a_fresh_classifier() -> None:
    stored, _ = cifar_entry()
    model = resdet.create_model("cifar_resnet20", weights="run1", num_classes=4)
    assert model.fc.weight.shape == (4, 64)
    assert torch.equal(model.layer3[2].conv2.weight, stored.layer3[2].conv2.weight)
    assert torch.equal(model.bn1.running_var, stored.bn1.running_var)


def test_loading_into_a_frozen_batch_norm_backbone() -> None:
    stored, entry = cifar_entry()
    model = resdet.create_model("cifar_resnet20", norm_layer=FrozenBatchNorm2d)
    model.fc = torch.nn.Identity()  # a detection backbone keeps no classifier
    load_into(model, entry)
    assert torch.equal(model.bn1.weight, stored.bn1.weight)


def test_load_into_names_mismatched_keys() -> None:
    _, entry = cifar_entry(shortcut="A")
    other = resdet.create_model("cifar_resnet20", shortcut="B")
    with pytest.raises(ValueError, match=r"run1.safetensors do not fit .* missing keys \(layer2"):
        load_into(other, entry)


def test_weights_by_path(tmp_path: Path) -> None:
    stored, entry = cifar_entry()
    moved = tmp_path / "elsewhere" / "mine.safetensors"
    moved.parent.mkdir()
    moved.write_bytes(entry.path.read_bytes())
    moved.with_suffix(".json").write_text(entry.manifest_path.read_text())
    model = resdet.create_model("cifar_resnet20", weights=str(moved))
    assert torch.equal(model.conv1.weight, stored.conv1.weight)
    assert find_weights("cifar_resnet20", moved.with_suffix(".json")).tag == "mine"
    with pytest.raises(ValueError, match="are for cifar_resnet20, not cifar_resnet32"):
        find_weights("cifar_resnet32", moved)
    moved.with_suffix(".json").unlink()
    with pytest.raises(FileNotFoundError, match=r"mine.json is missing"):
        find_weights("cifar_resnet20", moved)


def test_missing_and_invalid_tags() -> None:
    cifar_entry("kept")
    with pytest.raises(FileNotFoundError, match=r"stored tags: kept.*resdet weights import"):
        find_weights("cifar_resnet20", "absent")
    with pytest.raises(ValueError, match="invalid weight tag"):
        cifar_entry("bad tag")
    with pytest.raises(ValueError, match="unknown model"):
        find_weights("resnet19", "kept")


def test_add_weights_checks_shapes_and_copes_with_channels_last() -> None:
    model = resdet.create_model("cifar_resnet20").to(memory_format=torch.channels_last)
    options = dict(dataset="cifar10", metrics={}, source="test")
    entry = add_weights(
        "cifar_resnet20",
        model.state_dict(),
        tag="cl",
        variant=Variant("A"),
        num_classes=10,
        **options,
    )
    assert entry.num_classes == 10
    with pytest.raises(ValueError, match=r"fc.weight: file \[10, 64\] vs cifar_resnet20 \[5, 64\]"):
        add_weights(
            "cifar_resnet20",
            model.state_dict(),
            tag="x",
            variant=Variant("A"),
            num_classes=5,
            **options,
        )


def test_export_refuses_layouts_torchvision_cannot_hold(tmp_path: Path) -> None:
    cifar_entry()
    with pytest.raises(ValueError, match="no CIFAR ResNets"):
        export_torchvision("cifar_resnet20", "run1", tmp_path / "never.pth")
    options = dict(dataset="imagenet", metrics={}, source="test", num_classes=3)
    paper = resdet.create_model("resnet50", stride_in_1x1=True, num_classes=3)
    add_weights("resnet50", paper.state_dict(), tag="paper", variant=Variant("B", True), **options)
    with pytest.raises(ValueError, match="compute a different network"):
        export_torchvision("resnet50", "paper", tmp_path / "never.pth")
    option_a = resdet.create_model("resnet18", shortcut="A", num_classes=3)
    add_weights("resnet18", option_a.state_dict(), tag="a", variant=Variant("A", False), **options)
    with pytest.raises(ValueError, match="shortcut option A"):
        export_torchvision("resnet18", "a", tmp_path / "never.pth")
    assert not (tmp_path / "never.pth").exists()


def test_store_root_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("RESDET_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert store_root() == tmp_path / ".cache" / "resdet" / "weights"


def imagenet_entry(tag: str, metrics: dict, year: int, dataset: str = "imagenet"):
    """A resnet18 entry dated 1 January ``year``, with ``metrics`` recorded."""
    entry = add_weights(
        "resnet18",
        resdet.create_model("resnet18").state_dict(),
        tag=tag,
        variant=Variant("B", True),
        num_classes=1000,
        dataset=dataset,
        metrics=metrics,
        source="test",
    )
    manifest = json.loads(entry.manifest_path.read_text())
    manifest["date"] = f"{year}-01-01T00:00:00+00:00"
    entry.manifest_path.write_text(json.dumps(manifest))
    return entry


def test_auto_takes_the_default_then_the_best_top1_then_the_newest() -> None:
    assert choose_imagenet_weights("resnet18") == (None, "")
    imagenet_entry("old-good", {"top1_err": 0.30}, 2020)
    imagenet_entry("new-unmeasured", {}, 2024)
    imagenet_entry("cifar", {"top1_err": 0.01}, 2025, dataset="cifar10")  # never a backbone
    entry, why = choose_imagenet_weights("resnet18")
    assert entry.tag == "old-good" and "lowest recorded top-1 error (30.00%) of 2" in why
    imagenet_entry("new-good", {"top1_err": 0.30}, 2023)  # a tie goes to the newer
    assert choose_imagenet_weights("resnet18")[0].tag == "new-good"
    set_default("resnet18", "new-unmeasured")
    entry, why = choose_imagenet_weights("resnet18")
    assert entry.tag == "new-unmeasured" and "default" in why
    with pytest.raises(ValueError, match="trained on cifar10, not ImageNet"):
        set_default("resnet18", "cifar")
    remove_weights("resnet18", "new-unmeasured")  # removing the default clears the mark
    assert default_tag("resnet18") is None
    assert choose_imagenet_weights("resnet18")[0].tag == "new-good"


def test_only_unmeasured_entries_take_the_newest() -> None:
    imagenet_entry("a", {}, 2020)
    imagenet_entry("b", {}, 2022)
    entry, why = choose_imagenet_weights("resnet18")
    assert entry.tag == "b" and "newest of 2 ImageNet entries" in why
