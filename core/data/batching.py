"""Between sampler and student: a step's ``TrainBatch``, and how its sequences become model inputs.

``TrainBatch`` holds what one (micro-)step trains on: the queries, their sampled groups, the tokens
and the teacher's scores (as Lightning IR's ``TrainBatch`` sits between its data module and model).
Length-sorted dynamic padding: sequences are grouped into chunks of similar length under a
token budget, each chunk padded only to its own longest sequence (rounded up to a multiple of 8
for tensor cores). Results are scattered back to the caller's order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch

from ..errors import TeacherError

if TYPE_CHECKING:
    from ..teachers import TeacherScores
    from .tokens import TokenStore

PAD_MULTIPLE = 8


@dataclass(frozen=True)
class TrainBatch:
    """B queries, each with a group of G documents (its positive first), as the student and the losses read them."""

    rows: np.ndarray  # (B,) query rows of the prepared training set
    groups: np.ndarray  # (B, G) document rows, positive first
    queries: list[np.ndarray]  # B query token arrays
    docs: list[np.ndarray]  # B*G document token arrays, group by group
    teacher: Optional[torch.Tensor]  # (B, G) float32 teacher scores on the CPU; None without a teacher

    @classmethod
    def build(cls, rows: np.ndarray, groups: np.ndarray, queries: "TokenStore", docs: "TokenStore",
              teacher: Optional["TeacherScores"]) -> "TrainBatch":
        """The batch of ``groups`` (sampled for ``rows``): tokens from the stores, scores from the teacher's table.

        Raises:
            TeacherError: a pair of the groups has no teacher score.
        """
        t = None
        if teacher is not None:
            scores = teacher.lookup(rows, groups)
            if np.isnan(scores).any():
                raise TeacherError(f"{int(np.isnan(scores).sum())} (query, doc) pairs of a training batch have no teacher score")
            t = torch.from_numpy(scores)
        return cls(rows, groups, [queries.get(int(r)) for r in rows], [docs.get(int(x)) for x in groups.reshape(-1)], t)


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


def single_rows(seqs: Sequence[np.ndarray], special: SpecialTokens, idx: Optional[np.ndarray] = None) -> tuple[list, list]:
    """``[CLS] x [SEP]`` token rows (and their token types, all 0) of ``seqs`` (those at ``idx``)."""
    rows = [np.concatenate(([special.cls], seqs[i], [special.sep])) for i in (range(len(seqs)) if idx is None else idx)]
    return rows, [np.zeros(len(r), dtype=np.int64) for r in rows]


def pair_rows(queries: Sequence[np.ndarray], docs: Sequence[np.ndarray], special: SpecialTokens,
              idx: Optional[np.ndarray] = None) -> tuple[list, list]:
    """``[CLS] q [SEP] d [SEP]`` token rows, token types 0 for the query part and 1 for the document part."""
    rows, types = [], []
    for i in (range(len(queries)) if idx is None else idx):
        q, d = queries[i], docs[i]
        rows.append(np.concatenate(([special.cls], q, [special.sep], d, [special.sep])))
        types.append(np.concatenate((np.zeros(len(q) + 2, dtype=np.int64), np.ones(len(d) + 1, dtype=np.int64))))
    return rows, types


def single_chunks(seqs: Sequence[np.ndarray], special: SpecialTokens, batch_tokens: Optional[int]) -> list[Chunk]:
    """``[CLS] x [SEP]`` inputs for an encoder, in length-sorted chunks (one chunk: ``batch_tokens`` None)."""
    lengths = np.fromiter((len(s) + 2 for s in seqs), dtype=np.int64, count=len(seqs))
    out = []
    for idx in _plan(lengths, batch_tokens):
        rows, types = single_rows(seqs, special, idx)
        out.append(Chunk(*_pad(rows, types, special.pad), torch.from_numpy(idx.astype(np.int64))))
    return out


def pair_chunks(
    queries: Sequence[np.ndarray], docs: Sequence[np.ndarray], special: SpecialTokens, batch_tokens: Optional[int]
) -> list[Chunk]:
    """``[CLS] q [SEP] d [SEP]`` inputs in length-sorted chunks (one chunk: ``batch_tokens`` None)."""
    lengths = np.fromiter((len(q) + len(d) + 3 for q, d in zip(queries, docs)), dtype=np.int64, count=len(queries))
    out = []
    for idx in _plan(lengths, batch_tokens):
        rows, types = pair_rows(queries, docs, special, idx)
        out.append(Chunk(*_pad(rows, types, special.pad), torch.from_numpy(idx.astype(np.int64))))
    return out


def _plan(lengths: np.ndarray, batch_tokens: Optional[int]) -> list[np.ndarray]:
    return [np.arange(len(lengths))] if batch_tokens is None else plan_chunks(lengths, batch_tokens)


@dataclass
class Packed:
    """Sequences concatenated into one row without padding (padding-free packing, as transformers'
    ``DataCollatorWithFlattening``): position ids restart at each sequence, and ``cu_seqlens`` (the
    sequences' offsets) lets varlen attention keep every sequence to itself."""

    input_ids: torch.Tensor  # (1, T) long
    token_type_ids: torch.Tensor  # (1, T) long
    position_ids: torch.Tensor  # (1, T) long, 0.. within each sequence
    cu_seqlens: torch.Tensor  # (n + 1,) int32: sequence i is tokens cu_seqlens[i]:cu_seqlens[i + 1]
    max_len: int  # the longest sequence

    @classmethod
    def of(cls, rows: list[np.ndarray], types: list[np.ndarray]) -> "Packed":
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        cu = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=cu[1:])
        pos = np.arange(int(cu[-1]), dtype=np.int64) - np.repeat(cu[:-1], lengths)
        return cls(torch.from_numpy(np.concatenate(rows))[None], torch.from_numpy(np.concatenate(types))[None],
                   torch.from_numpy(pos)[None], torch.from_numpy(cu.astype(np.int32)), int(lengths.max()))

    def to(self, device) -> "Packed":
        return Packed(self.input_ids.to(device, non_blocking=True), self.token_type_ids.to(device, non_blocking=True),
                      self.position_ids.to(device, non_blocking=True), self.cu_seqlens.to(device, non_blocking=True), self.max_len)

    @property
    def segments(self) -> torch.Tensor:
        """(T,) long: the sequence each token belongs to."""
        lengths = (self.cu_seqlens[1:] - self.cu_seqlens[:-1]).long()
        return torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device), lengths)


def padding_efficiency(chunks: list[Chunk]) -> float:
    """Real tokens over padded tokens across ``chunks`` (1.0 = no padding at all)."""
    real = sum(c.real_tokens for c in chunks)
    padded = sum(c.input_ids.numel() for c in chunks)
    return real / max(padded, 1)
