"""SGD parameter groups: weight-decay exclusion and frozen parameters."""

from __future__ import annotations

import pytest
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
