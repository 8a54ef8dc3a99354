"""Import torchvision ResNet checkpoints into the weight store, and export them back.

torchvision's ResNet is resdet's layout with shortcut B and the bottleneck's stride on the 3x3
conv (``TORCHVISION_VARIANT``), with the same parameter names, so conversion only checks keys
and shapes and records the layout.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from resdet.files import write_atomically
from resdet.models.factory import ModelSpec, Variant, get_spec
from resdet.models.weights import (
    WeightEntry,
    _check_tag,
    _mismatches,
    _read_tensors,
    _reference,
    _refuse_overwrite,
    add_weights,
    check_arch,
    find_weights,
    store_root,
)

__all__ = ["TORCHVISION_VARIANT", "export_torchvision", "import_torchvision"]

TORCHVISION_VARIANT = Variant(shortcut="B", stride_in_1x1=False)


def import_torchvision(
    path: str | Path,
    arch: str,
    *,
    tag: str,
    force: bool = False,
    dataset: str = "imagenet",
    source: str | None = None,
) -> WeightEntry:
    """Convert a torchvision ResNet checkpoint (.pth state dict) into the store.

    The file is read with ``torch.load(weights_only=True)``; the state dict may be nested under
    ``"state_dict"`` or ``"model"`` and may carry DataParallel's ``module.`` prefix. It is stored
    in torchvision's layout (shortcut B, stride on the 3x3 conv) with the number of classes of
    its ``fc.weight``. ``source`` defaults to the absolute path of the file.
    """
    spec = check_arch(arch)
    _check_tag(tag)
    path = Path(path).expanduser()
    if spec.family != "imagenet" or not spec.residual:
        raise ValueError(
            f"torchvision has no {arch}: only resnet18/34/50/101/152 checkpoints can be imported"
        )
    stored = store_root() / arch / f"{tag}.safetensors"
    _refuse_overwrite(stored, stored.with_suffix(".json"), force=force)
    if not path.is_file():
        raise FileNotFoundError(f"torchvision checkpoint {path} does not exist")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for unreadable or unsafe files
        raise ValueError(f"{path} is not a readable weights-only torch checkpoint: {err}") from err
    state_dict = _unwrap_state_dict(loaded, path)
    if state_dict.get("fc.weight", torch.empty(())).ndim != 2:
        raise ValueError(
            f"{path} has no 2-d fc.weight [classes, features], so it is not a torchvision "
            "ResNet state dict"
        )
    num_classes = state_dict["fc.weight"].shape[0]
    reference = _reference(spec, TORCHVISION_VARIANT, num_classes)
    # Checkpoints saved before PyTorch 0.4 (torchvision's original ones) lack BN batch counters.
    for key, value in reference.items():
        if key.endswith("num_batches_tracked") and key not in state_dict:
            state_dict[key] = torch.zeros((), dtype=value.dtype)
    problems = _mismatches(state_dict, reference, arch)
    if problems:
        hint = next(
            (f"; it fits {name}: import it with that arch" for name in _fitting_archs(state_dict)),
            "",
        )
        raise ValueError(f"{path} does not fit torchvision's {arch}: {problems}{hint}")
    return add_weights(
        arch,
        state_dict,
        tag=tag,
        variant=TORCHVISION_VARIANT,
        num_classes=num_classes,
        dataset=dataset,
        metrics={},
        source=source if source is not None else str(path.resolve()),
        force=force,
    )


def export_torchvision(
    arch: str, tag_or_path: str | Path, path: str | Path, force: bool = False
) -> Path:
    """Write stored weights as a .pth state dict for ``torchvision.models.<arch>``.

    The file loads with ``load_state_dict(strict=True)`` into
    ``torchvision.models.<arch>(num_classes=entry.num_classes)``. Layouts torchvision cannot
    represent are refused with ValueError; an existing file is kept unless ``force``. Returns
    the path written.
    """
    entry = find_weights(arch, tag_or_path)
    spec = check_arch(arch)
    reason = _torchvision_incompatibility(spec, entry.variant)
    if reason:
        raise ValueError(f"cannot export {entry.path} to torchvision: {reason}")
    path = Path(path).expanduser()
    _refuse_overwrite(path, force=force)
    tensors = _read_tensors(entry)
    write_atomically(path, lambda tmp: torch.save(tensors, tmp))
    return path


def _unwrap_state_dict(loaded: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(loaded, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(loaded.get(key), Mapping):
                loaded = loaded[key]
                break
    if not isinstance(loaded, Mapping) or not loaded:
        raise ValueError(
            f"{path} is not a state dict: expected a dict of parameter names to tensors "
            f"(optionally under 'state_dict' or 'model'), got {type(loaded).__name__}"
        )
    for key, value in loaded.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ValueError(
                f"{path} is not a state dict: entry {key!r} holds a {type(value).__name__}, "
                "not a tensor"
            )
    return {k.removeprefix("module."): v for k, v in loaded.items()}


def _fitting_archs(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """torchvision ResNets whose keys and shapes match ``state_dict``, for error hints."""

    # The batch counters were filled in for the requested arch: compare everything else.
    def uncounted(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v for k, v in tensors.items() if not k.endswith("num_batches_tracked")}

    classes = state_dict["fc.weight"].shape[0]
    return [
        name
        for name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
        if not _mismatches(
            uncounted(state_dict),
            uncounted(_reference(get_spec(name), TORCHVISION_VARIANT, classes)),
            name,
        )
    ]


def _torchvision_incompatibility(spec: ModelSpec, variant: Variant) -> str:
    """Why torchvision cannot hold weights of ``spec`` in ``variant``; empty when it can."""
    if spec.family != "imagenet":
        return f"torchvision has no CIFAR ResNets like {spec.name}"
    if not spec.residual:
        return f"{spec.name} is a plain net; torchvision only has residual ResNets"
    if variant.shortcut != "B":
        return (
            f"the weights use shortcut option {variant.shortcut}; torchvision's ResNet only "
            "has option B (1x1 projections where dimensions change)"
        )
    if spec.block == "bottleneck" and variant.stride_in_1x1:
        return (
            "the weights put the stride on the bottleneck's first 1x1 conv (paper layout, "
            "stride_in_1x1=True) while torchvision puts it on the 3x3 conv: they would load "
            "but compute a different network"
        )
    return ""
