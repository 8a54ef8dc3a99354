"""Config loading: base files, overrides converted by type, unknown keys."""

from dataclasses import replace
from pathlib import Path
from typing import Any

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
    cfg = load_config(ClsExperiment, None, ["data.views.train_scale=[224, 320]", "model.name=x"])
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(ClsExperiment, tmp_path / "c.yaml") == cfg


def test_renamed_keys_move_within_their_source_so_later_sources_win(tmp_path):
    from resdet.experiments.configs import DetExperiment

    old = tmp_path / "old.yaml"
    old.write_text("model:\n  min_size: [800]\n  box_score_thresh: 0.3\n")
    cfg = load_config(DetExperiment, old, ["data.sizes.min_size=[600]"])
    assert cfg.data.sizes.min_size == (600,) and cfg.model.roi_heads.score_thresh == 0.3
    child = tmp_path / "child.yaml"
    child.write_text("base: old.yaml\nmodel:\n  roi_heads:\n    score_thresh: 0.01\n")
    assert load_config(DetExperiment, child).model.roi_heads.score_thresh == 0.01
    saved = {"model": {"min_size": [800]}}  # a checkpoint of an earlier version
    resumed = load_config(DetExperiment, None, ["data.sizes.min_size=[512]"], start=saved)
    assert resumed.data.sizes.min_size == (512,)
    both = tmp_path / "both.yaml"
    both.write_text("model:\n  min_size: [800]\ndata:\n  sizes:\n    min_size: [600]\n")
    with pytest.raises(ConfigError, match="sets both 'model.min_size' and its new name"):
        load_config(DetExperiment, both)


def test_section_checks_name_the_file():
    with pytest.raises(ConfigError, match=r"defaults: data: views: need crop <= train_scale"):
        load_config(ClsExperiment, None, ["data.views.crop=300"])


def test_renamed_keys_still_load_and_warn(caplog):
    with caplog.at_level("WARNING", logger="resdet"):
        cfg = load_config(ClsExperiment, None, ["data.crop_size=32", "data.test_size=40"])
    assert (cfg.data.views.crop, cfg.data.views.test_size) == (32, 40)
    assert "'data.crop_size' is now 'data.views.crop'" in caplog.text


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


def _recipe(cls: type, name: str) -> Any:
    from importlib import resources

    return load_config(cls, Path(str(resources.files("resdet") / "configs")) / f"{name}.yaml")


def test_recipes_carry_the_papers_numbers():
    """The paper's training recipes (sections 3.4, 4.2) and detection setup (Appendix A)."""
    from resdet.experiments.configs import ClsExperiment, DetExperiment

    # CIFAR-10: batch 128, lr 0.1 / 10 at 32k and 48k, stop at 64k, wd 1e-4, momentum 0.9.
    for depth in (20, 32, 44, 56, 110, 1202):
        cfg = _recipe(ClsExperiment, f"cls/cifar10_resnet{depth}")
        assert cfg.model.name == f"cifar_resnet{depth}" and cfg.data.batch_size == 128
        o = cfg.optim
        assert (o.lr, o.steps, o.gamma, o.weight_decay, o.momentum) == (
            0.1,
            (32000, 48000),
            0.1,
            1e-4,
            0.9,
        )
        assert cfg.train.iters == 64000
        if depth >= 110:  # lr 0.01 until the training error is below 80%
            assert (o.warmup, o.warmup_until_train_err) == ("constant", 0.8)
            assert o.lr * o.warmup_factor == pytest.approx(0.01)
        else:
            assert o.warmup == "none"
    # ImageNet: [256, 480] scale, 224 crop, batch 256, lr 0.1, wd 1e-4, momentum 0.9, test 256.
    for depth in (18, 34, 50, 101, 152):
        cfg = _recipe(ClsExperiment, f"cls/imagenet_resnet{depth}")
        d, o = cfg.data, cfg.optim
        v = d.views
        assert (v.train_scale, v.crop, v.test_size, d.batch_size) == (
            (256, 480),
            224,
            256,
            256,
        )
        assert (o.lr, o.weight_decay, o.momentum) == (0.1, 1e-4, 0.9)
    # Faster R-CNN R101-C4 on COCO (Appendix A): frozen BN, shorter side 600, 240k iterations
    # at lr 1e-3 then 80k at 1e-4.
    cfg = _recipe(DetExperiment, "det/coco_faster_rcnn_r101_c4")
    m, o = cfg.model, cfg.optim
    sizes = cfg.data.sizes.min_size
    assert (m.backbone, m.head, m.frozen_bn, sizes) == ("resnet101", "c4", True, (600,))
    assert (o.lr, o.steps, o.gamma, cfg.train.iters) == (0.001, (240000,), 0.1, 320000)


D2_COMMON = {
    # detectron2 config/defaults.py and Base-RCNN-*.yaml, by resdet key
    "model.trainable_stages": 3,  # BACKBONE.FREEZE_AT 2
    "model.stride_in_1x1": True,
    "data.sizes.min_size": (640, 672, 704, 736, 768, 800),
    "data.sizes.max_size": 1333,
    "data.sizes.keep_empty": False,  # DATALOADER.FILTER_EMPTY_ANNOTATIONS
    "model.conventions.roi_aligned": True,  # ROIAlignV2
    "model.conventions.roi_sampling_ratio": 0,
    "model.conventions.anchor_rounding": False,
    "model.conventions.rpn_box_loss_beta": 0.0,
    "model.conventions.roi_box_loss_beta": 0.0,
    "model.conventions.head_init": "detectron2",
    "model.conventions.mask_paste": "detectron2",
    "model.roi_heads.batch_size_per_image": 512,
    "model.roi_heads.score_thresh": 0.05,
    "model.roi_heads.nms_thresh": 0.5,
}
D2_HEADS = {
    "c4": {"model.conventions.size_divisible": 1, "model.rpn.pre_nms_top_n_train": 12000,
           "model.rpn.post_nms_top_n_train": 2000, "model.rpn.pre_nms_top_n_test": 6000,
           "model.rpn.post_nms_top_n_test": 1000},
    "fpn": {"model.conventions.size_divisible": 32, "model.rpn.pre_nms_top_n_train": 2000,
            "model.rpn.post_nms_top_n_train": 1000, "model.rpn.pre_nms_top_n_test": 1000,
            "model.rpn.post_nms_top_n_test": 1000},
}  # fmt: skip


def dotted(config: object, key: str) -> object:
    """The value of ``model.rpn.pre_nms_top_n_train`` and the like in ``config``."""
    for part in key.split("."):
        config = getattr(config, part)
    return config


@pytest.mark.parametrize(
    ("name", "backbone", "head", "masks", "steps", "iters"),
    [
        ("faster_rcnn_R_50_C4_1x", "resnet50", "c4", False, (60000, 80000), 90000),
        ("faster_rcnn_R_101_C4_3x", "resnet101", "c4", False, (210000, 250000), 270000),
        ("faster_rcnn_R_50_FPN_1x", "resnet50", "fpn", False, (60000, 80000), 90000),
        ("mask_rcnn_R_50_FPN_1x", "resnet50", "fpn", True, (60000, 80000), 90000),
        ("PascalVOC-Detection/faster_rcnn_R_50_C4", "resnet50", "c4", False, (12000, 16000), 18000),
    ],
)
def test_detectron2_recipes_follow_detectron2s_configs(name, backbone, head, masks, steps, iters):
    from resdet.experiments.configs import DetExperiment

    cfg = _recipe(DetExperiment, f"det/detectron2/{name}")
    m, o = cfg.model, cfg.optim
    assert (m.backbone, m.head, m.masks) == (backbone, head, masks)
    expected = {**D2_COMMON, **D2_HEADS[head]}
    if name.startswith("PascalVOC"):
        expected["data.sizes.min_size"] = (480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800)
        assert cfg.data.dataset == "voc0712" and o.warmup_iters == 100
    else:
        assert cfg.data.dataset == "coco" and o.warmup_iters == 1000
    assert {key: dotted(cfg, key) for key in expected} == expected
    assert (o.lr, o.steps, cfg.train.iters, cfg.data.batch_size) == (0.02, steps, iters, 16)
    assert (o.warmup, o.warmup_factor, o.weight_decay, o.momentum) == ("linear", 0.001, 1e-4, 0.9)
    assert cfg.train.amp == "fp32"


def test_modern_recipes_carry_their_sources_settings():
    """torchvision's v2 command line and the "ResNet strikes back" A1-A3 table, key for key."""
    from resdet.experiments.configs import ClsExperiment

    tv = _recipe(ClsExperiment, "cls/imagenet_resnet50_tv_v2")
    d, o = tv.data, tv.optim
    assert (d.batch_size, d.views.crop, d.views.test_size, d.views.test_crop) == (
        1024,
        176,
        232,
        224,
    )
    assert (d.views.train_crop, d.augment.policy, d.augment.random_erasing) == (
        "random_resized", "trivialaugment", 0.1,
    )  # fmt: skip
    assert (d.mix.mixup_alpha, d.mix.cutmix_alpha, d.repeated_augment) == (0.2, 1.0, 4)
    assert (o.name, o.lr, o.weight_decay, o.norm_weight_decay, o.schedule) == (
        "sgd", 0.5, 2e-5, 0.0, "cosine",
    )  # fmt: skip
    assert (tv.loss.label_smoothing, tv.train.iters, o.warmup_iters) == (0.1, 600 * 1251, 5 * 1251)
    # torchvision's EMA: decay 0.99998 scaled by batch x 32 steps / epochs, every 32 steps
    per_update = 1 - (1 - 0.99998) * 1024 * 32 / 600
    assert tv.train.ema == pytest.approx(per_update ** (1 / 32), abs=1e-8)

    table = {  # epochs, lr, weight decay, smoothing, mixup, drop path, repeats, crop, magnitude
        "a1": (600, 5e-3, 0.01, 0.1, 0.2, 0.05, 3, 224, 7),
        "a2": (300, 5e-3, 0.02, 0.0, 0.1, 0.05, 3, 224, 7),
        "a3": (100, 8e-3, 0.02, 0.0, 0.1, 0.0, 1, 160, 6),
    }
    for name, row in table.items():
        cfg = _recipe(ClsExperiment, f"cls/imagenet_resnet50_rsb_{name}")
        d, o = cfg.data, cfg.optim
        got = (
            cfg.train.iters // 625, o.lr, o.weight_decay, cfg.loss.label_smoothing,
            d.mix.mixup_alpha, cfg.model.drop_path, d.repeated_augment, d.views.crop,
            d.augment.magnitude,
        )  # fmt: skip
        assert got == row, name
        assert (o.name, cfg.loss.kind, d.batch_size, d.mix.cutmix_alpha) == (
            "lamb",
            "bce",
            2048,
            1.0,
        )
        assert (d.views.test_size, d.views.test_crop, o.warmup_iters) == (236, 224, 5 * 625)
