"""Explicit, dict-like registries for losses, samplers, students and teachers.

Registry keys are the names used in YAML and on the command line. A duplicate name is a
programming error and raises; an unknown name raises a ``KeyError`` that suggests the closest
known name and lists all of them.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")


def unknown_name_message(kind: str, name: object, known: list[str]) -> str:
    """One line naming an unknown ``name`` of ``kind``, the closest match and every known name."""
    close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown {kind} {name!r}{hint} known: {', '.join(sorted(known))}"


class Registry(Mapping[str, T], Generic[T]):
    """A name → object table that refuses duplicates and explains unknown names.

    Example::

        LOSSES = Registry("loss")
        LOSSES.register("kl", kl)
        LOSSES["kl"]          # the function
        LOSSES["kll"]         # KeyError: unknown loss 'kll'; did you mean 'kl'? known: ...
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj
        return obj

    def __getitem__(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(unknown_name_message(self.kind, name, list(self._items))) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {sorted(self._items)})"
