"""The weight store: safetensors files with a JSON manifest (torchvision I/O: torchvision_io).

Layout: ``<root>/<arch>/<tag>.safetensors`` holds the state dict and ``<root>/<arch>/<tag>.json``
its manifest (arch, layout variant, number of classes, dataset, metrics, source, sha256 of the
safetensors file, date, resdet version, format version); ``<root>/defaults.json`` maps an arch
to the tag that ``backbone_weights: auto`` takes (``resdet.models.weight_defaults``). ``<root>``
is ``$RESDET_HOME/weights``, or ``~/.cache/resdet/weights`` when RESDET_HOME is unset.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from resdet.files import write_atomically
from resdet.models.factory import ModelSpec, Variant, build_model, get_spec

__all__ = [
    "WeightEntry",
    "add_weights",
    "find_weights",
    "list_weights",
    "load_into",
    "remove_weights",
    "store_root",
]

FORMAT_VERSION = 1
_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_GET_WEIGHTS = (
    "train them with `resdet train-cls imagenet`, convert a torchvision checkpoint with "
    "`resdet weights import`, or pass the path of a .safetensors file"
)
_SHOWN = 5  # offending keys quoted in an error; the rest are counted
_MANIFEST_TYPES = {
    "format": int,
    "arch": str,
    "variant": dict,
    "num_classes": int,
    "dataset": str,
    "metrics": dict,
    "source": str,
    "sha256": str,
    "date": str,
    "resdet_version": str,
}


@dataclass(frozen=True)
class WeightEntry:
    """One stored set of weights: ``path`` is the .safetensors file, its manifest lies beside it.

    ``metrics`` maps names (e.g. ``top1_err``, a fraction) to values measured with these weights.
    ``date`` is an ISO 8601 UTC timestamp; ``sha256`` is the hex digest of the .safetensors file.
    """

    arch: str
    tag: str
    path: Path
    variant: Variant
    num_classes: int
    dataset: str
    metrics: dict[str, float] = field(hash=False)
    source: str
    sha256: str
    date: str
    resdet_version: str

    @property
    def manifest_path(self) -> Path:
        """The JSON manifest beside the ``.safetensors`` file."""
        return self.path.with_suffix(".json")


def store_root() -> Path:
    """``$RESDET_HOME/weights`` when RESDET_HOME is set, else ``~/.cache/resdet/weights``."""
    home = os.environ.get("RESDET_HOME")
    base = Path(home).expanduser() if home else Path.home() / ".cache" / "resdet"
    return base / "weights"


def list_weights(arch: str | None = None) -> list[WeightEntry]:
    """Stored weights of ``arch`` (all architectures when None), sorted by arch then tag.

    A store that does not exist yet is empty. A broken manifest is skipped with a warning that
    names it, so one bad file does not hide the others.
    """
    root = store_root()
    if arch is not None:
        check_arch(arch)
    folders = [root / arch] if arch is not None else sorted(p for p in root.glob("*") if p.is_dir())
    entries = []
    for folder in folders:
        for manifest in sorted(folder.glob("*.json")):
            try:
                entry = _read_manifest(manifest.with_suffix(".safetensors"))
                if entry.arch != folder.name:
                    raise ValueError(f"its arch is {entry.arch!r} but it lies in {folder}")
                if not entry.path.is_file():
                    raise FileNotFoundError(f"its weights file {entry.path} is missing")
            except (OSError, ValueError) as err:
                warnings.warn(f"skipping weights manifest {manifest}: {err}", stacklevel=2)
                continue
            entries.append(entry)
    return entries


def find_weights(arch: str, tag_or_path: str | Path) -> WeightEntry:
    """The entry for a tag in the store, or for a .safetensors path with its .json beside it.

    A string that contains a path separator or ends in ``.safetensors``/``.json`` is a path;
    anything else is a tag. Raises FileNotFoundError for a missing tag (listing the stored ones)
    or file, ValueError for a manifest of another arch or a malformed one.
    """
    check_arch(arch)
    text = str(tag_or_path)
    is_path = os.sep in text or "/" in text or text.endswith((".safetensors", ".json"))
    if isinstance(tag_or_path, Path) or is_path:
        return _find_path(arch, Path(text).expanduser())
    _check_tag(text)
    path = store_root() / arch / f"{text}.safetensors"
    if not path.exists():
        tags = ", ".join(entry.tag for entry in list_weights(arch)) or "none"
        raise FileNotFoundError(
            f"no weights tagged {text!r} for {arch} in {path.parent} (stored tags: {tags}); "
            f"{_GET_WEIGHTS}. The store is $RESDET_HOME/weights (default ~/.cache/resdet/weights)"
        )
    return _read_manifest(path)


def load_into(model: nn.Module, entry: WeightEntry) -> None:
    """Verify the sha256 of ``entry``'s file, then load its tensors into ``model`` in place.

    When the model's ``fc`` has another number of classes than the entry, or no parameters
    (``nn.Identity``, as in a detection backbone), ``fc.*`` is skipped and the model keeps its own
    classifier. Missing or unexpected keys and shape
    mismatches raise ValueError naming the file and the first offending keys with both shapes.
    """
    expected = model.state_dict()
    # FrozenBatchNorm2d has no batch counter; the stored counters are then simply not needed.
    tensors = {
        k: v
        for k, v in _read_tensors(entry).items()
        if k in expected or not k.endswith("num_batches_tracked")
    }
    fc = expected.get("fc.weight")
    if fc is None or fc.shape[0] != entry.num_classes:
        tensors = {k: v for k, v in tensors.items() if not k.startswith("fc.")}
        expected = {k: v for k, v in expected.items() if not k.startswith("fc.")}
    problems = _mismatches(tensors, expected, "model")
    if problems:
        raise ValueError(f"weights {entry.path} do not fit the {entry.arch} model: {problems}")
    # strict=False only because fc may have been skipped; every other key was checked above.
    model.load_state_dict(tensors, strict=False)


def add_weights(
    arch: str,
    state_dict: Mapping[str, torch.Tensor],
    *,
    tag: str,
    variant: Variant,
    num_classes: int,
    dataset: str,
    metrics: Mapping[str, float],
    source: str,
    force: bool = False,
) -> WeightEntry:
    """Store ``state_dict`` as ``<root>/<arch>/<tag>.safetensors`` with its manifest.

    The keys and shapes must be those of ``arch`` built in ``variant`` with ``num_classes``
    (ValueError otherwise). An existing tag is replaced only with ``force`` (FileExistsError
    otherwise). Each file is written to a temporary name and renamed, so a crash never leaves a
    half-written file under the tag's name (at worst new weights beside the old manifest, which
    loading then refuses by sha256).
    """
    from resdet import __version__  # deferred: resdet/__init__ imports the models package

    spec = check_arch(arch)
    _check_tag(tag)
    problems = _mismatches(state_dict, _reference(spec, variant, num_classes), arch)
    if problems:
        raise ValueError(
            f"state dict does not fit {arch} (shortcut {variant.shortcut}, stride_in_1x1="
            f"{variant.stride_in_1x1}, {num_classes} classes): "
            f"{problems}"
        )
    path = store_root() / arch / f"{tag}.safetensors"
    _refuse_overwrite(path, path.with_suffix(".json"), force=force)
    # A detached contiguous copy per tensor: safetensors refuses views and shared storage.
    tensors = {
        k: v.detach().cpu().clone(memory_format=torch.contiguous_format)
        for k, v in state_dict.items()
    }
    write_atomically(path, lambda tmp: save_file(tensors, tmp))
    manifest = {
        "format": FORMAT_VERSION,
        "arch": arch,
        "variant": {"shortcut": variant.shortcut, "stride_in_1x1": variant.stride_in_1x1},
        "num_classes": num_classes,
        "dataset": dataset,
        "metrics": {str(k): float(v) for k, v in metrics.items()},
        "source": source,
        "sha256": _sha256(path),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "resdet_version": __version__,
    }
    text = json.dumps(manifest, indent=2) + "\n"
    write_atomically(path.with_suffix(".json"), lambda tmp: tmp.write_text(text))
    return _read_manifest(path)


def remove_weights(arch: str, tag: str) -> None:
    """Delete a tag's .safetensors file and manifest; FileNotFoundError when neither exists."""
    check_arch(arch)
    _check_tag(tag)
    path = store_root() / arch / f"{tag}.safetensors"
    files = [p for p in (path, path.with_suffix(".json")) if p.exists()]
    if not files:
        raise FileNotFoundError(f"no weights tagged {tag!r} for {arch} in {path.parent}")
    from resdet.models.weight_defaults import default_tag, set_default  # it imports this module

    if default_tag(arch) == tag:
        set_default(arch, None)
    for p in files:
        p.unlink()


def check_arch(arch: str) -> ModelSpec:
    """The registry spec of ``arch``; ValueError (with close names) for an unknown one."""
    try:
        return get_spec(arch)
    except KeyError as err:
        raise ValueError(err.args[0]) from None


def _check_tag(tag: str) -> None:
    if not _TAG.fullmatch(tag):
        raise ValueError(
            f"invalid weight tag {tag!r}: use at most 100 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (e.g. 'imagenet-90ep')"
        )


def _find_path(arch: str, path: Path) -> WeightEntry:
    if path.suffix == ".json":
        path = path.with_suffix(".safetensors")
    if path.suffix != ".safetensors":
        raise ValueError(f"weights path {path} should name a .safetensors file")
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist; {_GET_WEIGHTS}")
    entry = _read_manifest(path)
    if entry.arch != arch:
        raise ValueError(
            f"weights {path} are for {entry.arch}, not {arch}: "
            f"create {entry.arch} instead or pick weights made for {arch}"
        )
    return entry


def _read_manifest(path: Path) -> WeightEntry:
    """The entry for the .safetensors file ``path`` from the manifest beside it."""
    manifest = path.with_suffix(".json")
    if not manifest.is_file():
        raise FileNotFoundError(
            f"manifest {manifest} is missing: weights need their .json beside the .safetensors "
            "file (store them with `resdet weights import` or resdet.models.weights.add_weights)"
        )
    try:
        data = json.loads(manifest.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"manifest {manifest} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"manifest {manifest} should hold a JSON object")
    if isinstance(data.get("format"), int) and data["format"] > FORMAT_VERSION:
        raise ValueError(
            f"manifest {manifest} has format {data['format']}, newer than this resdet reads "
            f"({FORMAT_VERSION}); upgrade resdet"
        )
    for key, kind in _MANIFEST_TYPES.items():
        if not isinstance(data.get(key), kind):
            raise ValueError(f"manifest {manifest}: {key!r} should be a {kind.__name__}")
    if not all(isinstance(v, (int, float)) for v in data["metrics"].values()):
        raise ValueError(f"manifest {manifest}: 'metrics' should map names to numbers")
    variant = data["variant"]
    if variant.get("shortcut") not in ("A", "B", "C") or not isinstance(
        variant.get("stride_in_1x1"), bool
    ):
        raise ValueError(
            f"manifest {manifest}: 'variant' should be "
            f'{{"shortcut": "A"|"B"|"C", "stride_in_1x1": true|false}}, got {variant}'
        )
    fields = ("arch", "num_classes", "dataset", "metrics", "source", "sha256", "date")
    return WeightEntry(
        tag=path.stem,
        path=path,
        variant=Variant(variant["shortcut"], variant["stride_in_1x1"]),
        resdet_version=data["resdet_version"],
        **{key: data[key] for key in fields},
    )


def _read_tensors(entry: WeightEntry) -> dict[str, torch.Tensor]:
    """The state dict of ``entry`` after checking its sha256 against the manifest."""
    digest = _sha256(entry.path)
    if digest != entry.sha256:
        raise ValueError(
            f"weights {entry.path} are corrupted or were changed after they were stored: "
            f"sha256 is {digest}, manifest {entry.manifest_path} says {entry.sha256}; "
            "import or train them again"
        )
    return load_file(entry.path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _reference(spec: ModelSpec, variant: Variant, num_classes: int) -> dict[str, torch.Tensor]:
    """The state dict of ``spec`` in ``variant``, on the meta device: shapes only, no memory."""
    with torch.device("meta"):
        return build_model(spec, variant, num_classes=num_classes).state_dict()


def _mismatches(
    tensors: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], what: str
) -> str:
    """A readable list of missing, unexpected and mis-shaped keys; empty when they match."""
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    shapes = [
        f"{k}: file {list(tensors[k].shape)} vs {what} {list(v.shape)}"
        for k, v in expected.items()
        if k in tensors and tensors[k].shape != v.shape
    ]
    parts = []
    for label, items in (
        ("shape mismatches", shapes),
        ("missing keys", missing),
        ("unexpected keys", unexpected),
    ):
        if items:
            more = f", ... ({len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
            parts.append(f"{len(items)} {label} ({', '.join(items[:_SHOWN])}{more})")
    return "; ".join(parts)


def _refuse_overwrite(*paths: Path, force: bool) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise FileExistsError(
            f"{' and '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; "
            "pass --force (force=True) to overwrite, or choose another tag or path"
        )
