"""Which stored ImageNet weights ``backbone_weights: auto`` starts a detector from.

``<store>/defaults.json`` maps an arch to the tag marked with `set_default` (``resdet weights
default``); without a mark the entry with the best recorded top-1 error is chosen.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from resdet.files import write_atomically
from resdet.models.weights import WeightEntry, check_arch, find_weights, list_weights, store_root

__all__ = ["choose_imagenet_weights", "default_tag", "set_default"]


def default_tag(arch: str) -> str | None:
    """The tag marked with `set_default` for ``arch``, or None."""
    return _read_defaults().get(arch)


def set_default(arch: str, tag: str | None) -> None:
    """Mark ``tag`` (a stored ImageNet entry of ``arch``) as the one ``auto`` picks; None clears
    the mark."""
    check_arch(arch)
    defaults = _read_defaults()
    if tag is None:
        defaults.pop(arch, None)
    else:
        entry = find_weights(arch, tag)
        if entry.dataset.lower() != "imagenet":
            raise ValueError(
                f"{arch}:{tag} was trained on {entry.dataset}, not ImageNet; the default is the "
                "ImageNet backbone that detectors start from"
            )
        defaults[arch] = tag
    text = json.dumps(defaults, indent=2, sort_keys=True) + "\n"
    write_atomically(_defaults_path(), lambda tmp: tmp.write_text(text))


def choose_imagenet_weights(arch: str) -> tuple[WeightEntry | None, str]:
    """The ImageNet entry of ``arch`` that ``backbone_weights: auto`` starts from, and why.

    The entry marked with `set_default`; without one, the entry with the lowest recorded
    ``top1_err``, entries without one after those with it, ties going to the newest. Returns
    ``(None, "")`` when the store holds no ImageNet entry of ``arch``.
    """
    entries = [e for e in list_weights(arch) if e.dataset.lower() == "imagenet"]
    marked = default_tag(arch)
    for entry in entries:
        if entry.tag == marked:
            return entry, "the default set with `resdet weights default`"
    if not entries:
        return None, ""

    def rank(entry: WeightEntry) -> tuple[float, float]:
        error = entry.metrics.get("top1_err", float("inf"))
        return error, -datetime.fromisoformat(entry.date).timestamp()

    best = min(entries, key=rank)
    if len(entries) == 1:
        why = "the only ImageNet entry"
    elif "top1_err" in best.metrics:
        why = (
            f"the lowest recorded top-1 error ({best.metrics['top1_err']:.2%}) of "
            f"{len(entries)} ImageNet entries"
        )
    else:
        why = f"the newest of {len(entries)} ImageNet entries (none records a top-1 error)"
    return best, why + "; `resdet weights default` fixes the choice"


def _defaults_path() -> Path:
    return store_root() / "defaults.json"


def _read_defaults() -> dict[str, str]:
    path = _defaults_path()
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(
            f"{path} is not valid JSON ({err}); fix it or delete it and set the defaults again "
            "with `resdet weights default ARCH TAG`"
        ) from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ValueError(f'{path} should map architectures to tags, e.g. {{"resnet50": "tv"}}')
    return data
