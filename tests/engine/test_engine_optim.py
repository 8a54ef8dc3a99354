"""SGD parameter groups: weight-decay exclusion and frozen parameters."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from resdet.engine.optim import build_sgd


def _net() -> nn.Sequential:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1, bias=False))
    net.append(nn.Flatten()).append(nn.Linear(4, 2))
    return net


def test_all_trainable_parameters_are_decayed_by_default() -> None:
    net = _net()
    optimizer = build_sgd(net, lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=True)
    assert len(optimizer.param_groups) == 1
    group = optimizer.param_groups[0]
    assert len(group["params"]) == len(list(net.parameters()))
    assert group["weight_decay"] == 1e-4 and group["nesterov"] and group["momentum"] == 0.9


def test_norm_and_bias_parameters_can_skip_weight_decay() -> None:
    net = _net()
    optimizer = build_sgd(net, lr=0.1, exclude_norm_and_bias_from_decay=True)
    decay, no_decay = optimizer.param_groups
    assert {id(p) for p in decay["params"]} == {
        id(net[0].weight),
        id(net[2].weight),
        id(net[4].weight),
    }
    assert {id(p) for p in no_decay["params"]} == {
        id(net[0].bias),
        id(net[1].weight),
        id(net[1].bias),
        id(net[4].bias),
    }
    assert no_decay["weight_decay"] == 0.0


def test_frozen_parameters_are_left_out() -> None:
    net = _net()
    for param in net[:2].parameters():
        param.requires_grad_(False)
    optimizer = build_sgd(net, lr=0.1)
    params = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert params == {id(net[2].weight), id(net[4].weight), id(net[4].bias)}
    net.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_sgd(net, lr=0.1)


def test_norm_and_bias_decay_are_set_apart_and_the_recipe_optimizers_are_built():
    from timm.optim import Lamb

    from resdet.engine.optim import build_optimizer, decay_groups

    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2)
    )
    groups = {
        g["weight_decay"]: len(g["params"])
        for g in decay_groups(net, 1e-4, norm_weight_decay=0.0, bias_weight_decay=5e-5)
    }
    assert groups == {1e-4: 2, 5e-5: 2, 0.0: 2}  # conv and linear weights; their biases; BN's
    assert len(decay_groups(net, 1e-4)) == 1
    adamw = build_optimizer(net, "adamw", lr=1e-3, weight_decay=0.05)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["eps"] == 1e-8
    assert isinstance(build_optimizer(net, "lamb", lr=5e-3, weight_decay=0.01), Lamb)
    with pytest.raises(ValueError, match="choose one of sgd, adamw, lamb"):
        build_optimizer(net, "adam", lr=1e-3, weight_decay=0.0)
