"""A small typed registry: one instance per kind of thing (models, datasets)."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to entries; raises on duplicates and suggests close names on a miss."""

    def __init__(self, kind: str, list_command: str) -> None:
        self.kind = kind
        self.list_command = list_command  # the CLI command that lists the entries
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        """Add ``entry`` under ``name``; a second entry with the same name is an error."""
        if name in self._entries:
            raise KeyError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> T:
        """Remove and return the entry ``name`` (KeyError if there is none)."""
        return self._entries.pop(name)

    def get(self, name: str) -> T:
        """The entry registered as ``name``; a miss names the closest registered names."""
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._entries, n=5, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise KeyError(
                f"unknown {self.kind} {name!r}{hint} (list them all with `{self.list_command}`)"
            ) from None

    def list(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell-style wildcard, in registration order."""
        return [name for name in self._entries if fnmatch.fnmatchcase(name, pattern)]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
