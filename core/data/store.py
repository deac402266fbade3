"""On-disk, memory-mapped containers that every stage and trial shares: no per-document Python objects.

- ``TextStore``: ids and UTF-8 texts of a corpus (or a query set) in index order. Ids are a
  fixed-width byte array with a sorted permutation beside it, so ``index_of(ids)`` is a binary
  search and nothing builds a dict of every id; a text is a slice of one byte blob, so any
  shard ``[start, stop)`` is read without touching the rest.
- ``Ragged``: rows of different lengths over one flat array (CSR without columns), for per-query
  lists such as judged positives, candidate pools or negatives.

Both open in O(1) time and memory: the arrays are ``np.load(..., mmap_mode="r")`` and pages are
read on demand, shared by every process of a node through the page cache.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np


def _encode(ids: Iterable[str]) -> list[bytes]:
    return [str(x).encode("utf-8") for x in ids]


@dataclass
class TextStore:
    """``ids[i]`` and ``text(i)`` of N items in index order (memory-mapped)."""

    ids: np.ndarray  # (N,) S{w}: UTF-8 ids, NUL-padded
    order: np.ndarray  # (N,) int64: argsort of ids
    sorted_ids: np.ndarray  # (N,) S{w}: ids[order]
    offsets: np.ndarray  # (N+1,) int64 into blob
    blob: np.ndarray  # (bytes,) uint8: the texts, back to back (blob.bin)
    folder: Optional[Path] = None  # where it was opened from (shard tasks re-open it there)

    FILES = ("ids.npy", "order.npy", "sorted_ids.npy", "offsets.npy")

    def __len__(self) -> int:
        return len(self.ids)

    # -- ids ---------------------------------------------------------------------------------
    def id(self, i: int) -> str:
        return bytes(self.ids[i]).decode("utf-8")

    def ids_of(self, idx: Sequence[int] | np.ndarray) -> list[str]:
        """The ids at positions ``idx``."""
        a = np.asarray(idx, dtype=np.int64)
        return [x.decode("utf-8") for x in self.ids[a].tolist()]

    def index_of(self, ids: Sequence[str]) -> np.ndarray:
        """Positions (int64) of ``ids``; -1 where an id is not in the store."""
        if len(ids) == 0:
            return np.zeros(0, dtype=np.int64)
        want = np.array(_encode(ids), dtype=self.ids.dtype if len(self) else "S1")
        if not len(self):
            return np.full(len(ids), -1, dtype=np.int64)
        pos = np.searchsorted(self.sorted_ids, want)
        pos_c = np.minimum(pos, len(self) - 1)
        found = (pos < len(self)) & (self.sorted_ids[pos_c] == want)
        # an id longer than the store's width was truncated by the cast: it cannot be present
        found &= np.array([len(x) <= self.ids.dtype.itemsize for x in _encode(ids)])
        return np.where(found, self.order[pos_c], -1).astype(np.int64)

    # -- texts -------------------------------------------------------------------------------
    def text(self, i: int) -> str:
        return self.blob[self.offsets[i] : self.offsets[i + 1]].tobytes().decode("utf-8")

    def texts(self, start: int = 0, stop: Optional[int] = None) -> list[str]:
        """Texts of positions ``[start, stop)``, read as one slice of the blob."""
        stop = len(self) if stop is None else min(stop, len(self))
        if stop <= start:
            return []
        base = int(self.offsets[start])
        raw = self.blob[base : int(self.offsets[stop])].tobytes()
        cuts = (self.offsets[start : stop + 1] - base).tolist()
        return [raw[a:b].decode("utf-8") for a, b in zip(cuts[:-1], cuts[1:])]

    # -- io ----------------------------------------------------------------------------------
    @classmethod
    def write(cls, folder: Path, items: Iterable[tuple[str, str]]) -> int:
        """Write ``(id, text)`` pairs in order into ``folder``; return how many were written.

        Texts stream to disk; only the ids (bytes) are held until the end, to size their array.
        Duplicate ids are refused: an id must name one item.
        """
        folder.mkdir(parents=True, exist_ok=True)
        ids: list[bytes] = []
        offsets = [0]
        with (folder / "blob.bin").open("wb") as f:
            for doc_id, text in items:
                b = text.encode("utf-8")
                f.write(b)
                offsets.append(offsets[-1] + len(b))
                ids.append(str(doc_id).encode("utf-8"))
        width = max((len(x) for x in ids), default=1) or 1
        arr = np.array(ids, dtype=f"S{width}") if ids else np.zeros(0, dtype="S1")
        order = np.argsort(arr, kind="stable")
        sorted_ids = arr[order]
        if len(arr) > 1:
            dup = np.nonzero(sorted_ids[1:] == sorted_ids[:-1])[0]
            if len(dup):
                raise ValueError(f"duplicate id {sorted_ids[dup[0]].decode('utf-8')!r}: ids must be unique")
        np.save(folder / "ids.npy", arr)
        np.save(folder / "order.npy", order.astype(np.int64))
        np.save(folder / "sorted_ids.npy", sorted_ids)
        np.save(folder / "offsets.npy", np.asarray(offsets, dtype=np.int64))
        return len(ids)

    @classmethod
    def load(cls, folder: Path) -> "TextStore":
        m = {name: np.load(folder / name, mmap_mode="r") for name in cls.FILES}
        size = (folder / "blob.bin").stat().st_size
        blob = np.memmap(folder / "blob.bin", dtype=np.uint8, mode="r") if size else np.zeros(0, dtype=np.uint8)
        return cls(m["ids.npy"], m["order.npy"], m["sorted_ids.npy"], m["offsets.npy"], blob, Path(folder))


@dataclass
class Ragged:
    """Rows of variable length: row i is ``values[indptr[i]:indptr[i+1]]``."""

    indptr: np.ndarray  # (R+1,) int64
    values: np.ndarray  # (nnz,)

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def row(self, i: int) -> np.ndarray:
        return np.asarray(self.values[self.indptr[i] : self.indptr[i + 1]])

    def lengths(self) -> np.ndarray:
        return np.diff(np.asarray(self.indptr))

    def rows(self) -> Iterable[np.ndarray]:
        for i in range(len(self)):
            yield self.row(i)

    @classmethod
    def from_rows(cls, rows: Sequence[np.ndarray], dtype=np.int32) -> "Ragged":
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum([len(r) for r in rows], out=indptr[1:])
        values = np.concatenate([np.asarray(r, dtype=dtype) for r in rows]) if len(rows) else np.zeros(0, dtype=dtype)
        return cls(indptr, values.astype(dtype, copy=False))

    def save(self, folder: Path, name: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / f"{name}.indptr.npy", np.asarray(self.indptr, dtype=np.int64))
        np.save(folder / f"{name}.values.npy", np.asarray(self.values))

    @classmethod
    def load(cls, folder: Path, name: str) -> "Ragged":
        return cls(np.load(folder / f"{name}.indptr.npy", mmap_mode="r"), np.load(folder / f"{name}.values.npy", mmap_mode="r"))

    @classmethod
    def exists(cls, folder: Path, name: str) -> bool:
        return (folder / f"{name}.indptr.npy").exists()
