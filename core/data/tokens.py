"""Inputs tokenized once: flat int32 token arrays with offsets, memory-mapped by every trial.

A ``TokenStore`` holds sequences *without* special tokens, truncated to a maximum length; the
batching code adds ``[CLS] … [SEP]`` (or ``[CLS] q [SEP] d [SEP]``) and pads each length-sorted
chunk only to its own longest sequence.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cache import stage

logger = logging.getLogger(__name__)


@dataclass
class TokenStore:
    """Sequences of token ids: ``tokens[offsets[i]:offsets[i+1]]`` is sequence i."""

    tokens: np.ndarray  # (T,) int32
    offsets: np.ndarray  # (N+1,) int64

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def get(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]

    @classmethod
    def load(cls, folder: Path) -> "TokenStore":
        return cls(np.load(folder / "tokens.npy", mmap_mode="r"), np.load(folder / "offsets.npy"))

    @classmethod
    def from_sequences(cls, seqs: list[list[int]]) -> "TokenStore":
        lengths = np.array([len(s) for s in seqs], dtype=np.int64)
        offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.fromiter((t for s in seqs for t in s), dtype=np.int32, count=int(offsets[-1]))
        return cls(flat, offsets)


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


def _write(folder: Path, seqs: Iterator[list[int]]) -> None:
    offsets = [0]
    chunks: list[np.ndarray] = []
    for s in seqs:
        chunks.append(np.asarray(s, dtype=np.int32))
        offsets.append(offsets[-1] + len(s))
    tokens = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int32)
    np.save(folder / "tokens.npy", tokens)
    np.save(folder / "offsets.npy", np.asarray(offsets, dtype=np.int64))


def doc_tokens(root: Path, corpus, tokenizer, max_length: int) -> TokenStore:
    """Tokenized documents of ``corpus`` in index order (cached)."""
    key = {"corpus": corpus.key, "tokenizer": tokenizer_key(tokenizer), "max_length": max_length}

    def build(tmp: Path) -> None:
        _write(tmp, _tokenize_texts(tokenizer, (t for _, t in corpus.iter_docs()), max_length))

    return TokenStore.load(stage(root, "doc_tokens", key, build))


def query_tokens(root: Path, texts: list[str], tokenizer, max_length: int) -> TokenStore:
    """Tokenized queries in the order given (cached by the texts' hash)."""
    th = hashlib.sha256("\x1f".join(texts).encode()).hexdigest()[:20]
    key = {"texts": th, "n": len(texts), "tokenizer": tokenizer_key(tokenizer), "max_length": max_length}

    def build(tmp: Path) -> None:
        _write(tmp, _tokenize_texts(tokenizer, texts, max_length))

    return TokenStore.load(stage(root, "query_tokens", key, build))
