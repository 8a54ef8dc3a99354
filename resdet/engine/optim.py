"""SGD as the paper trains every network (momentum 0.9, weight decay 1e-4; section 3.4), and
the modern recipes' AdamW and LAMB with weight decay set apart for norm layers and biases."""

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

    Parameter groups (`decay_groups`): the weight-decayed parameters, then (only with
    ``exclude_norm_and_bias_from_decay``) norm layers and biases without decay; the paper decays
    everything. ``lr`` is the initial rate; the trainer's schedule overwrites it every iteration.
    """
    apart = 0.0 if exclude_norm_and_bias_from_decay else None
    groups = decay_groups(model, weight_decay, norm_weight_decay=apart, bias_weight_decay=apart)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)


OPTIMIZERS = ("sgd", "adamw", "lamb")
RECIPES_HINT = 'pip install "resdet[recipes]"'


def decay_groups(
    model: nn.Module,
    weight_decay: float,
    *,
    norm_weight_decay: float | None = None,
    bias_weight_decay: float | None = None,
) -> list[dict]:
    """The trainable parameters of ``model`` as optimizer groups by weight decay.

    Like torchvision's classification reference (``--norm-weight-decay``,
    ``--bias-weight-decay``), except that a norm layer's bias takes ``norm_weight_decay``
    (torchvision gives it the bias rule): parameters of normalisation layers take
    ``norm_weight_decay``, other biases ``bias_weight_decay``, the rest ``weight_decay``;
    None means ``weight_decay``. Groups with the same decay are merged; empty ones dropped.
    """
    groups: dict[float, list[nn.Parameter]] = {}
    seen: set[int] = set()
    for module in model.modules():
        is_norm = isinstance(module, NORM_LAYERS)
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            decay = weight_decay
            if is_norm and norm_weight_decay is not None:
                decay = norm_weight_decay
            elif name == "bias" and not is_norm and bias_weight_decay is not None:
                decay = bias_weight_decay
            groups.setdefault(decay, []).append(param)
    if not groups:
        raise ValueError(
            f"{type(model).__name__} has no trainable parameters (all have requires_grad=False): "
            "unfreeze some layers before training"
        )
    return [{"params": params, "weight_decay": decay} for decay, params in groups.items()]


def build_optimizer(
    model: nn.Module,
    name: str,
    *,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    nesterov: bool = False,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float | None = None,
    norm_weight_decay: float | None = None,
    bias_weight_decay: float | None = None,
) -> torch.optim.Optimizer:
    """``sgd`` (``torch.optim.SGD``), ``adamw`` (``torch.optim.AdamW``, decoupled decay) or
    ``lamb`` (timm's ``Lamb``, "ResNet strikes back"'s optimizer; ``resdet[recipes]``) over
    `decay_groups`. ``eps`` None takes the optimizer's own (AdamW 1e-8, timm's Lamb 1e-6). ``lr``
    is the initial rate; the trainer's schedule overwrites it."""
    groups = decay_groups(
        model,
        weight_decay,
        norm_weight_decay=norm_weight_decay,
        bias_weight_decay=bias_weight_decay,
    )
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas, **({"eps": eps} if eps else {}))
    if name == "lamb":
        try:
            from timm.optim import Lamb
        except ImportError:
            raise ImportError(
                f"optim.name=lamb uses timm's Lamb, and timm is not installed: {RECIPES_HINT}"
            ) from None
        return Lamb(groups, lr=lr, betas=betas, **({"eps": eps} if eps else {}))
    raise ValueError(f"optim.name {name!r}: choose one of {', '.join(OPTIMIZERS)}")
