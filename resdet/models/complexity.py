"""Parameter and multiply-add counts, as the paper counts its "FLOPs" (conv + fc layers)."""

from __future__ import annotations

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not); buffers such as BN statistics are excluded."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: int | tuple[int, int]) -> int:
    """Multiply-adds of every Conv2d and Linear layer for one image of ``input_size`` pixels.

    A conv contributes output elements x (in_channels / groups) x kernel area; a linear layer
    in_features x out_features. BN, ReLU, pooling and additions are not counted, as in the
    paper's 1.8 / 3.6 / 3.8 / 7.6 / 11.3 x 10^9 for ResNet-18..152 at 224x224. Only shapes
    matter, so a model built on the ``meta`` device is counted without allocating anything.
    """
    height, width = (input_size, input_size) if isinstance(input_size, int) else input_size
    total = 0

    def conv_hook(module: nn.Conv2d, _: tuple[torch.Tensor], out: torch.Tensor) -> None:
        nonlocal total
        kernel = module.kernel_size[0] * module.kernel_size[1]
        total += out.numel() * (module.in_channels // module.groups) * kernel

    def linear_hook(module: nn.Linear, _: tuple[torch.Tensor], out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * module.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            device = next(model.parameters()).device
            model(torch.zeros(1, 3, height, width, device=device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total
