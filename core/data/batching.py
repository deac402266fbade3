"""Length-sorted dynamic padding: sequences are grouped into chunks of similar length under a
token budget, each chunk padded only to its own longest sequence (rounded up to a multiple of 8
for tensor cores). Results are scattered back to the caller's order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

PAD_MULTIPLE = 8


@dataclass
class Chunk:
    """One padded forward-pass input; ``index`` gives each row's position in the caller's order."""

    input_ids: torch.Tensor  # (n, L) long
    attention_mask: torch.Tensor  # (n, L) long
    token_type_ids: torch.Tensor  # (n, L) long
    index: torch.Tensor  # (n,) long

    def to(self, device) -> "Chunk":
        return Chunk(*(t.to(device, non_blocking=True) for t in (self.input_ids, self.attention_mask, self.token_type_ids, self.index)))

    @property
    def real_tokens(self) -> int:
        return int(self.attention_mask.sum())


def plan_chunks(
    lengths: np.ndarray, batch_tokens: int, max_rows: int = 4096, min_rows: int = 8, shrink: float = 0.75
) -> list[np.ndarray]:
    """Split positions ``0..N-1`` into chunks of similar length, longest first.

    A chunk closes when one more row would exceed ``batch_tokens`` (rows × padded length) or
    ``max_rows``, or when it holds ``min_rows`` rows and the next sequence is shorter than
    ``shrink`` × the chunk's longest (so no chunk pads short sequences to a far longer one).
    """
    order = np.argsort(-lengths, kind="stable")
    chunks: list[np.ndarray] = []
    start, longest = 0, 0
    for pos in range(len(order)):
        length = int(lengths[order[pos]])
        rows = pos - start
        if rows:
            padded = -(-longest // PAD_MULTIPLE) * PAD_MULTIPLE
            if (rows + 1) * padded > batch_tokens or rows >= max_rows or (rows >= min_rows and length < shrink * longest):
                chunks.append(order[start:pos])
                start = pos
        if start == pos:
            longest = length
    if start < len(order):
        chunks.append(order[start:])
    return chunks


def _pad(rows: list[np.ndarray], types: list[np.ndarray], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    longest = max(len(r) for r in rows)
    width = -(-longest // PAD_MULTIPLE) * PAD_MULTIPLE
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    tt = np.zeros((len(rows), width), dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, (r, t) in enumerate(zip(rows, types)):
        ids[i, : len(r)] = r
        tt[i, : len(t)] = t
        mask[i, : len(r)] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(tt)


@dataclass(frozen=True)
class SpecialTokens:
    cls: int
    sep: int
    pad: int

    @classmethod
    def of(cls, tokenizer) -> "SpecialTokens":
        return cls(tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id)


def single_chunks(seqs: Sequence[np.ndarray], special: SpecialTokens, batch_tokens: int) -> list[Chunk]:
    """``[CLS] x [SEP]`` inputs for an encoder, in length-sorted chunks."""
    lengths = np.fromiter((len(s) + 2 for s in seqs), dtype=np.int64, count=len(seqs))
    out = []
    for idx in plan_chunks(lengths, batch_tokens):
        rows = [np.concatenate(([special.cls], seqs[i], [special.sep])) for i in idx]
        types = [np.zeros(len(r), dtype=np.int64) for r in rows]
        out.append(Chunk(*_pad(rows, types, special.pad), torch.from_numpy(idx.astype(np.int64))))
    return out


def pair_chunks(
    queries: Sequence[np.ndarray], docs: Sequence[np.ndarray], special: SpecialTokens, batch_tokens: int
) -> list[Chunk]:
    """``[CLS] q [SEP] d [SEP]`` inputs (token types 0 for the query part, 1 for the document part)."""
    lengths = np.fromiter((len(q) + len(d) + 3 for q, d in zip(queries, docs)), dtype=np.int64, count=len(queries))
    out = []
    for idx in plan_chunks(lengths, batch_tokens):
        rows, types = [], []
        for i in idx:
            q, d = queries[i], docs[i]
            rows.append(np.concatenate(([special.cls], q, [special.sep], d, [special.sep])))
            types.append(np.concatenate((np.zeros(len(q) + 2, dtype=np.int64), np.ones(len(d) + 1, dtype=np.int64))))
        out.append(Chunk(*_pad(rows, types, special.pad), torch.from_numpy(idx.astype(np.int64))))
    return out


def padding_efficiency(chunks: list[Chunk]) -> float:
    """Real tokens over padded tokens across ``chunks`` (1.0 = no padding at all)."""
    real = sum(c.real_tokens for c in chunks)
    padded = sum(c.input_ids.numel() for c in chunks)
    return real / max(padded, 1)
