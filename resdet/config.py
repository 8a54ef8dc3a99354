"""Loading experiment configs: YAML files with one ``base:`` level plus ``key.sub=value`` overrides.

Configs are frozen dataclasses (see ``resdet.experiments``). Values are converted by the field's
type; an unknown key is an error naming the closest valid key. A config class may list keys that
moved in ``RENAMED`` (old dotted key -> new dotted key): old files and checkpoints still load,
with a warning that names the new key.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import logging
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

C = TypeVar("C")
logger = logging.getLogger("resdet")


class ConfigError(ValueError):
    """A config file or override that cannot be turned into the experiment's dataclass."""


def load_config(
    cls: type[C],
    path: Path | None = None,
    overrides: Sequence[str] = (),
    *,
    start: dict[str, Any] | None = None,
) -> C:
    """Build ``cls`` from its defaults, ``start`` values, the YAML file at ``path`` and overrides.

    A file may name one parent file with ``base: other.yaml`` (relative to itself); the
    parent's values are applied first. Overrides look like ``key.sub=value``, the value read as
    YAML. Later sources win; ``start`` serves to continue a saved run's configuration.
    """
    # Renamed keys move within each source, before merging, so that later sources still win.
    values = _apply_renames(cls, dict(start or {}), "the saved config")
    if path is not None:
        values = _merge(values, _read_with_base(Path(path), cls))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        override: dict[str, Any] = {}
        _set_dotted(override, key.strip(), yaml.safe_load(raw) if raw.strip() else "")
        values = _merge(values, _apply_renames(cls, override, f"override {key.strip()!r}"))
    return from_dict(cls, values, where=str(path) if path else "defaults")


def to_dict(config: Any) -> dict[str, Any]:
    """A plain, YAML-ready dict of a config dataclass (tuples become lists)."""
    return _plain(dataclasses.asdict(config))


def save_config(config: Any, path: Path) -> None:
    """Write ``config`` as YAML that ``load_config`` reads back to an equal object."""
    path.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


def from_dict(cls: type[C], values: dict[str, Any], where: str = "config") -> C:
    """``cls`` built from ``values``; missing keys (at any depth) keep the dataclass defaults."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping for {cls.__name__}, got {values!r}")
    values = _apply_renames(cls, values, where)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1, cutoff=0.4)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"{where}: unknown key {key!r}{hint}")
    kwargs = {}
    for key, value in values.items():
        default = _field_default(cls, key)
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            # A partial section changes only its own keys of the parent's default section
            # (which may differ from the section class's defaults, e.g. detection's optim).
            value = _merge(to_dict(default), value)
        kwargs[key] = _convert(hints[key], value, f"{where}: {key}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:  # a section's own checks (__post_init__)
        raise ConfigError(f"{where}: {error}") from None


def _apply_renames(cls: type, values: dict[str, Any], where: str) -> dict[str, Any]:
    """``values`` with the keys of ``cls.RENAMED`` (dotted, old -> new) moved to their new place."""
    renamed: dict[str, str] = getattr(cls, "RENAMED", {})
    values = copy.deepcopy(values)
    for old, new in renamed.items():
        parent, last = _section(values, old)
        if parent is None or last not in parent:
            continue
        target, name = _section(values, new)
        if target is not None and name in target:
            raise ConfigError(f"{where}: sets both {old!r} and its new name {new!r}; keep {new!r}")
        logger.warning("%s: config key %r is now %r; read as such (rename it)", where, old, new)
        _set_dotted(values, new, parent.pop(last))
    return values


def _section(values: dict[str, Any], key: str) -> tuple[dict[str, Any] | None, str]:
    """The mapping that holds dotted ``key`` (None if there is none) and the key's last part."""
    *parents, last = key.split(".")
    node: Any = values
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    return (node if isinstance(node, dict) else None), last


def _field_default(cls: type, name: str) -> Any:
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def _read_with_base(path: Path, cls: type) -> dict[str, Any]:
    values = _apply_renames(cls, _read_yaml(path), str(path))
    base = values.pop("base", None)
    if base is None:
        return values
    base_path = (path.parent / base).resolve()
    parent = _apply_renames(cls, _read_yaml(base_path), str(base_path))
    if "base" in parent:
        raise ConfigError(
            f"{base_path}: a base file cannot have a base of its own (one level only)"
        )
    return _merge(parent, values)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return values


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _set_dotted(values: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    node = values
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key!r}: {part!r} is not a section")
    node[last] = value


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(arg, value, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0])
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, where) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {value!r}")
        return tuple(_convert(a, v, where) for a, v in zip(args, value, strict=True))
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML reads 1e-4 (no dot) as a string
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported config type {hint!r}")


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
