"""Config loading: base files, overrides converted by type, unknown keys."""

from dataclasses import replace
from pathlib import Path

import pytest

from resdet.config import ConfigError, load_config, save_config
from resdet.experiments.configs import ClsExperiment


def test_defaults_file_base_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "optim:\n  lr: 0.05\n  steps: [10, 20]\ndata:\n  batch_size: 64\n"
    )
    (tmp_path / "run.yaml").write_text("base: base.yaml\noptim:\n  lr: 0.2\n")
    cfg = load_config(
        ClsExperiment,
        tmp_path / "run.yaml",
        ["train.iters=300", "optim.weight_decay=1e-4", "model.shortcut=C", "train.amp=fp16"],
    )
    assert cfg.optim.lr == 0.2  # the file wins over its base
    assert cfg.optim.steps == (10, 20)  # list -> tuple[int, ...]
    assert cfg.data.batch_size == 64 and cfg.data.workers == 4  # untouched keys keep defaults
    assert cfg.train.iters == 300 and cfg.optim.weight_decay == 1e-4
    assert cfg.model.shortcut == "C"


def test_round_trip(tmp_path):
    cfg = load_config(ClsExperiment, None, ["data.train_scale=[128, 160]", "model.name=resnet18"])
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(ClsExperiment, tmp_path / "c.yaml") == cfg


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lrr=0.1", "did you mean 'lr'"),
        ("trian.iters=3", "did you mean 'train'"),
        ("train.iters=abc", "expected an integer"),
        ("model.shortcut=D", "not one of"),
        ("train.channels_last=3", "expected true or false"),
        ("noequals", "key.sub=value"),
    ],
)
def test_bad_overrides_name_the_problem(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(ClsExperiment, None, [override])


def test_base_has_one_level_only(tmp_path):
    (tmp_path / "a.yaml").write_text("train:\n  iters: 1\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    (tmp_path / "c.yaml").write_text("base: b.yaml\n")
    with pytest.raises(ConfigError, match="one level only"):
        load_config(ClsExperiment, tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(ClsExperiment, tmp_path / "missing.yaml")


def test_partial_section_keeps_the_experiments_own_defaults():
    from resdet.experiments.configs import DetExperiment

    default = DetExperiment()
    cfg = load_config(DetExperiment, None, ["optim.lr=0.01", "train.amp=fp32"])
    # Detection's optim/train defaults differ from OptimConfig()/TrainConfig(): keep them.
    assert cfg.optim == replace(default.optim, lr=0.01)
    assert cfg.train == replace(default.train, amp="fp32")


def test_every_packaged_recipe_loads():
    from importlib import resources

    from resdet.experiments.configs import ClsExperiment, DetExperiment

    root = resources.files("resdet") / "configs"
    files = sorted(Path(str(root)).glob("*/*.yaml"))
    assert len(files) > 30
    for path in files:
        cls = ClsExperiment if path.parent.name == "cls" else DetExperiment
        load_config(cls, path)
