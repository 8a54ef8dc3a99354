"""The weight store: safetensors files with a JSON manifest, and torchvision import/export.

Layout: ``<root>/<arch>/<tag>.safetensors`` holds the state dict and ``<root>/<arch>/<tag>.json``
its manifest (arch, layout variant, number of classes, dataset, metrics, source, sha256 of the
safetensors file, date, resdet version, format version). ``<root>`` is ``$RESDET_HOME/weights``,
or ``~/.cache/resdet/weights`` when RESDET_HOME is unset.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from resdet.models.factory import ModelSpec, Variant, build_model, get_spec

__all__ = [
    "WeightEntry",
    "add_weights",
    "export_torchvision",
    "find_weights",
    "import_torchvision",
    "list_weights",
    "load_into",
    "remove_weights",
    "store_root",
]

FORMAT_VERSION = 1
TORCHVISION_VARIANT = Variant(shortcut="B", stride_in_1x1=False)
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
        _spec(arch)
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
    _spec(arch)
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

    spec = _spec(arch)
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
    _write_atomically(path, lambda tmp: save_file(tensors, tmp))
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
    _write_atomically(path.with_suffix(".json"), lambda tmp: tmp.write_text(text))
    return _read_manifest(path)


def remove_weights(arch: str, tag: str) -> None:
    """Delete a tag's .safetensors file and manifest; FileNotFoundError when neither exists."""
    _spec(arch)
    _check_tag(tag)
    path = store_root() / arch / f"{tag}.safetensors"
    files = [p for p in (path, path.with_suffix(".json")) if p.exists()]
    if not files:
        raise FileNotFoundError(f"no weights tagged {tag!r} for {arch} in {path.parent}")
    for p in files:
        p.unlink()


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
    spec = _spec(arch)
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
    spec = _spec(arch)
    reason = _torchvision_incompatibility(spec, entry.variant)
    if reason:
        raise ValueError(f"cannot export {entry.path} to torchvision: {reason}")
    path = Path(path).expanduser()
    _refuse_overwrite(path, force=force)
    tensors = _read_tensors(entry)
    _write_atomically(path, lambda tmp: torch.save(tensors, tmp))
    return path


def _spec(arch: str) -> ModelSpec:
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


def _refuse_overwrite(*paths: Path, force: bool) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise FileExistsError(
            f"{' and '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; "
            "pass --force (force=True) to overwrite, or choose another tag or path"
        )


def _write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """``write`` a temporary file beside ``path`` (same file system), then rename it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
