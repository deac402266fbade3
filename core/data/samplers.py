"""Negative samplers: which documents fill each query's training group.

A group has ``G`` documents: column 0 a judged positive (drawn uniformly among the query's
relevant documents), columns 1..G-1 negatives from the sampler's ranked list, never a judged
relevant document. Samplers (registry ``SAMPLERS``):

- ``random``: uniform from a fixed random pool per query (drawn once from the whole corpus);
- ``bm25``: uniform from BM25 ranks ``depth = [lo, hi)``;
- ``dense``: uniform from dense-retrieval ranks ``[lo, hi)``;
- ``ensemble``: uniform from ranks ``[lo, hi)`` of the reciprocal-rank fusion of BM25 and dense;
- ``teacher``: the BM25 pool re-ranked by the teacher, ``skip_top`` ranks skipped (against false
  negatives), then the hardest first (or uniform within ``depth`` with ``hardest_first: false``);
- ``imported``: uniform from ranks ``[lo, hi)`` of an imported file's negatives
  (``candidates.imported``: e.g. sentence-transformers' hard negatives of chosen systems, the
  first ``per_system`` of each after the teacher-margin filter, merged by rank across systems).

Queries are rows (ints) of the prepared training queries. Every list lives in a ``Ragged``
(memory-mapped) prepared once, with the judged relevant documents already removed: sampling
reads slices, and a trial holds no per-query Python objects.

If a list holds fewer than G-1 usable negatives, the rest come from the random pool (counted in
``Sampler.fills`` and reported by the trial as ``train/random_fills``). Sampling is a pure
function of the generator, so a seed fixes every group.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..registry import Registry
from .store import Ragged

logger = logging.getLogger(__name__)

POOL_NAMES = ("positives", "bm25", "random", "dense", "teacher", "imported")


@dataclass
class SamplingPools:
    """Per training query row: judged positives and the ranked negative lists (relevant removed)."""

    positives: Ragged  # judged relevant documents (relevance > 0), sorted
    bm25: Ragged  # BM25 candidates in rank order
    random: Ragged  # a seeded uniform pool from the whole corpus, sorted
    dense: Optional[Ragged] = None  # dense candidates in rank order
    teacher: Optional[Ragged] = None  # the BM25 pool in the teacher's order (unscored pairs dropped)
    imported: Optional[Ragged] = None  # negatives of an imported file (its systems merged by rank, margin-filtered)

    def __len__(self) -> int:
        return len(self.positives)

    def save(self, folder: Path) -> None:
        for name in POOL_NAMES:
            r = getattr(self, name)
            if r is not None:
                r.save(folder, name)

    @classmethod
    def load(cls, folder: Path) -> "SamplingPools":
        return cls(**{name: Ragged.load(folder, name) if Ragged.exists(folder, name) else None for name in POOL_NAMES})


def without(lists: Ragged | Sequence[np.ndarray], positives: Ragged) -> Ragged:
    """Each row of ``lists`` without the row's judged positives, in its original order."""
    out = []
    for i in range(len(positives)):
        lst = np.asarray(lists.row(i) if isinstance(lists, Ragged) else lists[i], dtype=np.int64)
        out.append(lst[~np.isin(lst, positives.row(i))])
    return Ragged.from_rows(out)


def random_pools(positives: Ragged, n_docs: int, size: int, seed: int) -> Ragged:
    """A seeded uniform pool of ``size`` non-relevant documents per row, drawn from the whole corpus."""
    rng = np.random.default_rng(seed)
    out = []
    size = min(size, n_docs - 1)
    for i in range(len(positives)):
        rel = positives.row(i)
        draw = rng.choice(n_docs, size=min(n_docs, size + len(rel)), replace=False)
        out.append(np.sort(draw[~np.isin(draw, rel)][:size]))
    return Ragged.from_rows(out)


def teacher_order(bm25: Ragged, teacher, rows: Optional[np.ndarray] = None) -> Ragged:
    """Each row's BM25 negatives sorted by the teacher's score (best first; unscored pairs dropped)."""
    out = []
    for i in range(len(bm25)):
        pool = bm25.row(i).astype(np.int64)
        s = teacher.lookup([int(rows[i]) if rows is not None else i], pool[None, :])[0]
        keep = ~np.isnan(s)
        pool, s = pool[keep], s[keep]
        out.append(pool[np.argsort(-s, kind="stable")])
    return Ragged.from_rows(out)


def rrf(lists: Sequence[np.ndarray], k: int = 60) -> np.ndarray:
    """Reciprocal-rank fusion (Cormack, Clarke, Büttcher, SIGIR 2009): ``Σ 1 / (k + rank)``, best first."""
    docs = np.concatenate([np.asarray(lst, dtype=np.int64) for lst in lists]) if lists else np.zeros(0, np.int64)
    if not len(docs):
        return docs
    ranks = np.concatenate([np.arange(1, len(lst) + 1) for lst in lists])
    uniq, inv = np.unique(docs, return_inverse=True)
    score = np.bincount(inv, weights=1.0 / (k + ranks))
    return uniq[np.lexsort((uniq, -score))]


class Sampler:
    """Base sampler: draws a positive and G-1 negatives from ``ranked(row)``."""

    #: candidate components whose teacher scores this sampler needs
    components: tuple[str, ...] = ("bm25",)

    def __init__(self, cfg, pools: SamplingPools) -> None:
        self.cfg = cfg
        self.pools = pools
        self.fills = 0

    def ranked(self, row: int) -> np.ndarray:
        """The query's ranked negative candidates (judged relevant documents already removed)."""
        raise NotImplementedError

    def window(self, row: int) -> np.ndarray:
        lo, hi = self.cfg.depth
        return self.ranked(row)[lo:hi]

    def negatives(self, row: int, n: int, rng: np.random.Generator) -> np.ndarray:
        w = self.window(row)
        take = w[rng.choice(len(w), size=min(n, len(w)), replace=False)] if len(w) else np.zeros(0, np.int64)
        if len(take) < n:
            take = np.concatenate([take, self.fill(row, n - len(take), take, rng)])
        return take

    def fill(self, row: int, n: int, taken: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``n`` random-pool documents not already taken (the pool holds no relevant document)."""
        self.fills += n
        pool = self.pools.random.row(row)
        pool = pool[~np.isin(pool, taken)]
        if len(pool) < n:
            raise ValueError(f"query row {row}: only {len(pool)} random-pool documents left to fill {n} negatives; "
                             "raise candidates.random_pool")
        return pool[rng.choice(len(pool), size=n, replace=False)].astype(np.int64)

    def sample(self, rows: Sequence[int], group_size: int, rng: np.random.Generator) -> np.ndarray:
        """Doc indices (B, G): column 0 a positive, then G-1 negatives."""
        out = np.empty((len(rows), group_size), dtype=np.int64)
        for b, r in enumerate(rows):
            pos = self.pools.positives.row(int(r))
            out[b, 0] = pos[rng.integers(len(pos))]
            out[b, 1:] = self.negatives(int(r), group_size - 1, rng)
        return out


class RandomSampler(Sampler):
    components = ("bm25", "random")

    def ranked(self, row: int) -> np.ndarray:
        return self.pools.random.row(row)

    def window(self, row: int) -> np.ndarray:
        return self.ranked(row)


class BM25Sampler(Sampler):
    components = ("bm25",)

    def ranked(self, row: int) -> np.ndarray:
        return self.pools.bm25.row(row)


class DenseSampler(Sampler):
    components = ("bm25", "dense")

    def ranked(self, row: int) -> np.ndarray:
        if self.pools.dense is None:
            raise ValueError("sampler 'dense' needs dense candidates; candidates.dense_depth is 0")
        return self.pools.dense.row(row)


class EnsembleSampler(Sampler):
    components = ("bm25", "dense")

    def ranked(self, row: int) -> np.ndarray:
        if self.pools.dense is None:
            raise ValueError("sampler 'ensemble' needs dense candidates; candidates.dense_depth is 0")
        return rrf([self.pools.bm25.row(row), self.pools.dense.row(row)], self.cfg.rrf_k)


class TeacherSampler(Sampler):
    components = ("bm25",)

    def ranked(self, row: int) -> np.ndarray:
        if self.pools.teacher is None:
            raise ValueError("sampler 'teacher' needs teacher scores (the teacher's order of the BM25 pool was not prepared)")
        return self.pools.teacher.row(row)

    def window(self, row: int) -> np.ndarray:
        lo, hi = self.cfg.depth
        r = self.ranked(row)
        return r[self.cfg.skip_top:] if self.cfg.hardest_first else r[max(lo, self.cfg.skip_top):hi]

    def negatives(self, row: int, n: int, rng: np.random.Generator) -> np.ndarray:
        if not self.cfg.hardest_first:
            return super().negatives(row, n, rng)
        w = self.window(row)[:n].astype(np.int64)
        if len(w) < n:
            w = np.concatenate([w, self.fill(row, n - len(w), w, rng)])
        return w


class ImportedSampler(Sampler):
    components = ("bm25", "imported")

    def ranked(self, row: int) -> np.ndarray:
        if self.pools.imported is None:
            raise ValueError("sampler 'imported' needs imported candidates (candidates.imported) and they were not prepared")
        return self.pools.imported.row(row)


SAMPLERS: Registry[type[Sampler]] = Registry("sampler")
SAMPLERS.register("random", RandomSampler)
SAMPLERS.register("bm25", BM25Sampler)
SAMPLERS.register("dense", DenseSampler)
SAMPLERS.register("ensemble", EnsembleSampler)
SAMPLERS.register("teacher", TeacherSampler)
SAMPLERS.register("imported", ImportedSampler)


def mix_negatives(groups: np.ndarray, fraction: float, pools: SamplingPools, rows: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """Replace ``round(fraction * (G-1))`` negatives of each group by random-pool documents.

    Changes the locality of the group (its diameter) while keeping its size; the replaced columns
    are drawn uniformly among the negatives.
    """
    g = groups.shape[1]
    k = int(round(fraction * (g - 1)))
    if k == 0:
        return groups
    out = groups.copy()
    for b, r in enumerate(rows):
        cols = 1 + rng.choice(g - 1, size=k, replace=False)
        pool = pools.random.row(int(r))
        pool = pool[~np.isin(pool, out[b])]
        out[b, cols] = pool[rng.choice(len(pool), size=k, replace=False)]
    return out
