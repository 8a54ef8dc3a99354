"""Architecture facts pinned against the paper and torchvision (paper Table 1, section 4.2; torchvision)."""

import pytest
import torch
import torchvision

import resdet
from resdet.models.blocks import ZeroPadShortcut
from resdet.models.complexity import count_params

# torchvision's resnet parameter counts (fc 1000); paper Table 1 stacks.
TORCHVISION_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
}
# Multiply-adds (conv + fc) at 224x224, stride on the bottleneck's 1x1 (paper, MSRA release):
# paper Table 1 "FLOPs" 1.8 / 3.6 / 3.8 / 7.6 / 11.3 x 10^9 (MSRA layout, stride in the 1x1).
PAPER_GMACS = {
    "resnet18": 1.814,
    "resnet34": 3.664,
    "resnet50": 3.858,
    "resnet101": 7.570,
    "resnet152": 11.282,
}
# The same with the stride on the 3x3 conv (torchvision "v1.5").
TORCHVISION_GMACS = {"resnet50": 4.089, "resnet101": 7.801, "resnet152": 11.514}
# CIFAR 6n+2 nets with option A shortcuts: exact counts (paper Table 6 rounds them to
# 0.27M / 0.46M / 0.66M / 0.85M / 1.7M / 19.4M).
CIFAR_PARAMS = {
    20: 269_722,
    32: 464_154,
    44: 658_586,
    56: 853_018,
    110: 1_727_962,
    1202: 19_421_274,
}
CIFAR_MMACS = {20: 40.55, 32: 68.86, 44: 97.17, 56: 125.49, 110: 252.89, 1202: 2829.24}


@pytest.mark.parametrize("name", TORCHVISION_PARAMS)
def test_imagenet_params_equal_torchvision(name):
    assert resdet.model_info(name).params == TORCHVISION_PARAMS[name]
    with torch.device("meta"):
        reference = getattr(torchvision.models, name)(weights=None)
    assert count_params(reference) == TORCHVISION_PARAMS[name]


@pytest.mark.parametrize("name", PAPER_GMACS)
def test_imagenet_macs_paper_layout(name):
    assert resdet.model_info(name).macs / 1e9 == pytest.approx(PAPER_GMACS[name], rel=5e-3)


@pytest.mark.parametrize("name", TORCHVISION_GMACS)
def test_bottleneck_macs_torchvision_layout(name):
    info = resdet.model_info(name, stride_in_1x1=False)
    assert info.macs / 1e9 == pytest.approx(TORCHVISION_GMACS[name], rel=5e-3)
    assert info.params == TORCHVISION_PARAMS[name]


@pytest.mark.parametrize("depth", CIFAR_PARAMS)
def test_cifar_params_and_macs(depth):
    info = resdet.model_info(f"cifar_resnet{depth}")
    assert info.params == CIFAR_PARAMS[depth]
    assert info.macs / 1e6 == pytest.approx(CIFAR_MMACS[depth], rel=5e-3)


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_plain_nets_have_option_a_parameter_count(depth):
    assert resdet.model_info(f"cifar_plain{depth}").params == CIFAR_PARAMS[depth]


@pytest.mark.parametrize("depth", [18, 34, 50])
def test_imagenet_plain_equals_option_a(depth):
    plain = resdet.model_info(f"plain{depth}").params
    assert plain == resdet.model_info(f"resnet{depth}", shortcut="A").params


def test_shortcut_options_order_parameter_counts():
    # Table 3: A adds no parameters, B projects where dimensions increase, C everywhere.
    a, b, c = (resdet.model_info("resnet34", shortcut=s).params for s in "ABC")
    assert a < b < c
    assert b == TORCHVISION_PARAMS["resnet34"]


def test_option_a_pads_zeros_and_subsamples():
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4)
    out = ZeroPadShortcut(2, 5, stride=2)(x)
    assert out.shape == (1, 5, 2, 2)
    assert torch.equal(out[:, :2], x[:, :, ::2, ::2])
    assert not out[:, 2:].any()


def test_stride_placement_in_bottleneck():
    paper = resdet.create_model("resnet50")
    tv = resdet.create_model("resnet50", stride_in_1x1=False)
    assert paper.layer2[0].conv1.stride == (2, 2) and paper.layer2[0].conv2.stride == (1, 1)
    assert tv.layer2[0].conv1.stride == (1, 1) and tv.layer2[0].conv2.stride == (2, 2)


def test_zero_init_residual_makes_blocks_identity_like():
    model = resdet.create_model("resnet18", zero_init_residual=True)
    assert all(not block.bn2.weight.any() for stage in model.stages for block in stage)
    with pytest.raises(ValueError, match="plain net"):
        resdet.create_model("plain18", zero_init_residual=True)


def test_features_report_channels_and_strides():
    model = resdet.create_model("resnet50").eval()
    features = model.forward_features(torch.randn(1, 3, 64, 96))
    assert list(features) == ["res2", "res3", "res4", "res5"]
    for name, tensor in features.items():
        channels, stride = model.feature_info[name]
        assert tensor.shape == (1, channels, 64 // stride, 96 // stride)
    cifar = resdet.create_model("cifar_resnet20").eval()
    shapes = {
        k: tuple(v.shape) for k, v in cifar.forward_features(torch.randn(2, 3, 32, 32)).items()
    }
    assert shapes == {"res2": (2, 16, 32, 32), "res3": (2, 32, 16, 16), "res4": (2, 64, 8, 8)}


def test_unknown_name_lists_close_names():
    with pytest.raises(KeyError, match="resnet50"):
        resdet.create_model("resnet05")


def test_list_models_wildcards():
    names = resdet.list_models()
    assert {"resnet18", "plain34", "cifar_resnet1202", "cifar_plain110"} <= set(names)
    assert resdet.list_models("cifar_plain*") == [f"cifar_plain{d}" for d in (20, 32, 44, 56, 110)]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("name", resdet.list_models())
def test_every_model_trains_one_step(name):
    torch.manual_seed(0)
    model = resdet.create_model(name, num_classes=7)
    size = 32 if name.startswith("cifar") else 64
    logits = model(torch.randn(2, 3, size, size))
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
    logits.logsumexp(1).sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
