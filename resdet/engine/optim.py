"""SGD as the paper trains every network (momentum 0.9, weight decay 1e-4; section 3.4)."""

from __future__ import annotations

import torch
from torch import nn

# The normalisation layers of torchvision.ops._utils.split_normalization_params.
NORM_LAYERS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LocalResponseNorm,
)


def split_decay_params(
    model: nn.Module, *, exclude_norm_and_bias: bool
) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Trainable parameters split into (with weight decay, without weight decay).

    Parameters with ``requires_grad=False`` (frozen backbone stages, frozen BN) are left out.
    With ``exclude_norm_and_bias`` the parameters of normalisation layers and every parameter
    named ``bias`` go to the second list; shared parameters are listed once.
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        is_norm = isinstance(module, NORM_LAYERS)
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            if exclude_norm_and_bias and (is_norm or name == "bias"):
                no_decay.append(param)
            else:
                decay.append(param)
    return decay, no_decay


def build_sgd(
    model: nn.Module,
    *,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    nesterov: bool = False,
    exclude_norm_and_bias_from_decay: bool = False,
) -> torch.optim.SGD:
    """``torch.optim.SGD`` over the trainable parameters of ``model``.

    Parameter groups: the weight-decayed parameters, then (only with
    ``exclude_norm_and_bias_from_decay``) those without decay; the paper decays everything. ``lr`` is the
    initial rate; the trainer's schedule overwrites it every iteration.
    """
    decay, no_decay = split_decay_params(
        model, exclude_norm_and_bias=exclude_norm_and_bias_from_decay
    )
    if not decay and not no_decay:
        raise ValueError(
            f"{type(model).__name__} has no trainable parameters (all have requires_grad=False): "
            "unfreeze some layers before training"
        )
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    groups = [group for group in groups if group["params"]]
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)
