"""Inputs tokenized once: flat int32 token arrays with offsets, memory-mapped by every trial.

A ``TokenStore`` holds sequences *without* special tokens, truncated to a maximum length; the
batching code adds ``[CLS] … [SEP]`` (or ``[CLS] q [SEP] d [SEP]``) and pads each length-sorted
chunk only to its own longest sequence.

Tokenizing is sharded: each shard is a range ``[a, b)`` of a ``TextStore`` (a corpus or a query
set) tokenized by one executor task into its own part files, which are then concatenated into
the stage. A trial only opens the result.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from ..executor import LOCAL
from ..models import load_tokenizer, resolve_model
from .cache import stage
from .store import TextStore

if TYPE_CHECKING:
    from ..executor import Executor
    from .collections import QuerySet

logger = logging.getLogger(__name__)


@dataclass
class TokenStore:
    """Sequences of token ids: ``tokens[offsets[i]:offsets[i+1]]`` is sequence i."""

    tokens: np.ndarray  # (T,) int32
    offsets: np.ndarray  # (N+1,) int64
    folder: Optional[Path] = None  # where it was opened from

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def get(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]

    @classmethod
    def load(cls, folder: Path) -> "TokenStore":
        return cls(np.load(folder / "tokens.npy", mmap_mode="r"), np.load(folder / "offsets.npy", mmap_mode="r"), Path(folder))


def tokenizer_key(tokenizer) -> str:
    """Identify a tokenizer by its vocabulary and class (two paths to one vocab share a key)."""
    vocab = sorted(tokenizer.get_vocab().items())
    h = hashlib.sha256(repr((type(tokenizer).__name__, getattr(tokenizer, "do_lower_case", None), vocab)).encode())
    return h.hexdigest()[:16]


def _tokenize_texts(tokenizer, texts: Iterable[str], max_length: int, batch: int = 4096) -> Iterator[list[int]]:
    buf: list[str] = []

    def flush() -> Iterator[list[int]]:
        enc = tokenizer(buf, add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"]
        yield from enc

    for t in texts:
        buf.append(t)
        if len(buf) == batch:
            yield from flush()
            buf = []
    if buf:
        yield from flush()


@dataclass(frozen=True)
class TokenizeShard:
    """Tokenize items ``[start, stop)`` of the ``TextStore`` at ``source`` into ``out``."""

    source: str
    model: str
    max_length: int
    start: int
    stop: int
    out: str


def tokenize_shard(job: TokenizeShard) -> int:

    store = TextStore.load(Path(job.source))
    tok = load_tokenizer(job.model)
    lengths, chunks = [], []
    step = 8192
    for a in range(job.start, job.stop, step):
        for s in _tokenize_texts(tok, store.texts(a, min(a + step, job.stop)), job.max_length):
            chunks.append(np.asarray(s, dtype=np.int32))
            lengths.append(len(s))
    out = Path(job.out)
    np.save(out.with_suffix(".tokens.npy"), np.concatenate(chunks) if chunks else np.zeros(0, np.int32))
    np.save(out.with_suffix(".lengths.npy"), np.asarray(lengths, dtype=np.int64))
    return job.stop - job.start


def shard_ranges(n: int, size: int) -> list[tuple[int, int]]:
    """``[(0, size), (size, 2 size), …]`` covering ``[0, n)``; one empty range for n = 0."""
    size = max(1, int(size))
    return [(a, min(a + size, n)) for a in range(0, n, size)] or [(0, 0)]


def merge_token_parts(parts: list[Path], folder: Path) -> None:
    """Concatenate shard parts (in order) into ``tokens.npy`` + ``offsets.npy``, streaming."""
    lengths = np.concatenate([np.load(p.with_suffix(".lengths.npy")) for p in parts])
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = np.lib.format.open_memmap(folder / "tokens.npy", mode="w+", dtype=np.int32, shape=(int(offsets[-1]),))
    pos = 0
    for p in parts:
        t = np.load(p.with_suffix(".tokens.npy"), mmap_mode="r")
        tokens[pos : pos + len(t)] = t
        pos += len(t)
        p.with_suffix(".tokens.npy").unlink()
        p.with_suffix(".lengths.npy").unlink()
    tokens.flush()
    del tokens
    np.save(folder / "offsets.npy", offsets)


def tokenize_store(root: Path, kind: str, store: TextStore, store_key: str, model: str, tokenizer, max_length: int,
                   executor: Optional["Executor"] = None, shard_size: int = 250_000) -> TokenStore:
    """Every text of ``store`` tokenized by ``model``'s tokenizer (cached stage ``kind``, built in shards)."""
    executor = executor or LOCAL
    key = {"texts": store_key, "n": len(store), "tokenizer": tokenizer_key(tokenizer), "max_length": max_length}

    def build(tmp: Path) -> None:
        source = str(store.folder)
        jobs = [TokenizeShard(source, resolve_model(model), max_length, a, b, str(tmp / f"part-{i:05d}"))
                for i, (a, b) in enumerate(shard_ranges(len(store), shard_size))]
        executor.map(tokenize_shard, jobs, cpus=1, label=f"{kind} ({len(jobs)} shards)")
        merge_token_parts([Path(j.out) for j in jobs], tmp)

    return TokenStore.load(stage(root, kind, key, build))


def doc_tokens(root: Path, corpus, model: str, tokenizer, max_length: int, executor: Optional["Executor"] = None,
               shard_size: int = 250_000) -> TokenStore:
    """Tokenized documents of ``corpus`` in index order (cached, built in shards from the corpus store)."""
    return tokenize_store(root, "doc_tokens", corpus.store(root, executor), corpus.key, model, tokenizer, max_length,
                          executor, shard_size)


def query_tokens(root: Path, queries: "QuerySet", model: str, tokenizer, max_length: int,
                 executor: Optional["Executor"] = None, shard_size: int = 250_000) -> TokenStore:
    """Tokenized queries of a ``QuerySet`` in its order (cached)."""
    return tokenize_store(root, "query_tokens", queries.store, queries.key, model, tokenizer, max_length, executor, shard_size)
