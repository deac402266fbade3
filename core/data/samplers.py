"""Negative samplers: which documents fill each query's training group.

A group has ``G`` documents: column 0 a judged positive (drawn uniformly among the query's
relevant documents), columns 1..G-1 negatives from the sampler's ranked list, never a judged
relevant document. Samplers (registry ``SAMPLERS``):

- ``random``: uniform from a fixed random pool per query (drawn once from the whole corpus);
- ``bm25``: uniform from BM25 ranks ``depth = [lo, hi)``;
- ``dense``: uniform from dense-retrieval ranks ``[lo, hi)``;
- ``ensemble``: uniform from ranks ``[lo, hi)`` of the reciprocal-rank fusion of BM25 and dense;
- ``teacher``: the BM25 pool re-ranked by the teacher, ``skip_top`` ranks skipped (against false
  negatives), then the hardest first (or uniform within ``depth`` with ``hardest_first: false``).

If a list holds fewer than G-1 usable negatives, the rest come from the random pool (counted in
``Sampler.fills``). Sampling is a pure function of the generator, so a seed fixes every group.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..registry import Registry

logger = logging.getLogger(__name__)


@dataclass
class SamplingPools:
    """Per training query: positives, judged-relevant set and the ranked candidate lists."""

    positives: dict[str, np.ndarray]
    bm25: dict[str, np.ndarray]
    random: dict[str, np.ndarray]
    dense: Optional[dict[str, np.ndarray]] = None
    relevant: dict[str, set] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.relevant:
            self.relevant = {q: set(map(int, p)) for q, p in self.positives.items()}


def rrf(lists: Sequence[np.ndarray], k: int = 60) -> np.ndarray:
    """Reciprocal-rank fusion (Cormack, Clarke, Büttcher, SIGIR 2009): ``Σ 1 / (k + rank)``, best first."""
    score: dict[int, float] = {}
    for lst in lists:
        for rank, d in enumerate(lst, start=1):
            score[int(d)] = score.get(int(d), 0.0) + 1.0 / (k + rank)
    return np.array(sorted(score, key=lambda d: (-score[d], d)), dtype=np.int64)


class Sampler:
    """Base sampler: draws a positive and G-1 negatives from ``ranked(qid)``."""

    #: candidate components whose teacher scores this sampler needs
    components: tuple[str, ...] = ("bm25",)

    def __init__(self, cfg, pools: SamplingPools, teacher=None) -> None:
        self.cfg = cfg
        self.pools = pools
        self.teacher = teacher
        self.fills = 0
        self._cache: dict[str, np.ndarray] = {}

    def ranked(self, qid: str) -> np.ndarray:
        """The query's ranked negative candidates (relevant documents removed)."""
        if qid not in self._cache:
            lst = self._ranked(qid)
            rel = self.pools.relevant[qid]
            self._cache[qid] = np.array([d for d in lst if int(d) not in rel], dtype=np.int64)
        return self._cache[qid]

    def _ranked(self, qid: str) -> np.ndarray:
        raise NotImplementedError

    def window(self, qid: str) -> np.ndarray:
        lo, hi = self.cfg.depth
        return self.ranked(qid)[lo:hi]

    def negatives(self, qid: str, n: int, rng: np.random.Generator) -> np.ndarray:
        w = self.window(qid)
        take = w[rng.choice(len(w), size=min(n, len(w)), replace=False)] if len(w) else np.zeros(0, np.int64)
        if len(take) < n:
            take = np.concatenate([take, self.fill(qid, n - len(take), set(map(int, take)), rng)])
        return take

    def fill(self, qid: str, n: int, taken: set, rng: np.random.Generator) -> np.ndarray:
        """``n`` random-pool documents not relevant and not already taken."""
        self.fills += n
        rel = self.pools.relevant[qid]
        pool = np.array([d for d in self.pools.random[qid] if int(d) not in rel and int(d) not in taken], dtype=np.int64)
        if len(pool) < n:
            raise ValueError(f"query {qid!r}: only {len(pool)} random-pool documents left to fill {n} negatives; raise candidates.random_pool")
        return pool[rng.choice(len(pool), size=n, replace=False)]

    def sample(self, qids: Sequence[str], group_size: int, rng: np.random.Generator) -> np.ndarray:
        """Doc indices (B, G): column 0 a positive, then G-1 negatives."""
        out = np.empty((len(qids), group_size), dtype=np.int64)
        for b, q in enumerate(qids):
            pos = self.pools.positives[q]
            out[b, 0] = pos[rng.integers(len(pos))]
            out[b, 1:] = self.negatives(q, group_size - 1, rng)
        return out


class RandomSampler(Sampler):
    components = ("bm25", "random")

    def _ranked(self, qid: str) -> np.ndarray:
        return self.pools.random[qid]

    def window(self, qid: str) -> np.ndarray:
        return self.ranked(qid)


class BM25Sampler(Sampler):
    components = ("bm25",)

    def _ranked(self, qid: str) -> np.ndarray:
        return self.pools.bm25[qid]


class DenseSampler(Sampler):
    components = ("bm25", "dense")

    def _ranked(self, qid: str) -> np.ndarray:
        if self.pools.dense is None:
            raise ValueError("sampler 'dense' needs dense candidates; candidates.dense_depth is 0")
        return self.pools.dense[qid]


class EnsembleSampler(Sampler):
    components = ("bm25", "dense")

    def _ranked(self, qid: str) -> np.ndarray:
        if self.pools.dense is None:
            raise ValueError("sampler 'ensemble' needs dense candidates; candidates.dense_depth is 0")
        return rrf([self.pools.bm25[qid], self.pools.dense[qid]], self.cfg.rrf_k)


class TeacherSampler(Sampler):
    components = ("bm25",)

    def _ranked(self, qid: str) -> np.ndarray:
        if self.teacher is None:
            raise ValueError("sampler 'teacher' needs teacher scores")
        pool = self.pools.bm25[qid]
        s = self.teacher.lookup([qid], pool[None, :])[0]
        keep = ~np.isnan(s)
        pool, s = pool[keep], s[keep]
        return pool[np.argsort(-s, kind="stable")]

    def window(self, qid: str) -> np.ndarray:
        lo, hi = self.cfg.depth
        r = self.ranked(qid)
        return r[self.cfg.skip_top:] if self.cfg.hardest_first else r[max(lo, self.cfg.skip_top):hi]

    def negatives(self, qid: str, n: int, rng: np.random.Generator) -> np.ndarray:
        if not self.cfg.hardest_first:
            return super().negatives(qid, n, rng)
        w = self.window(qid)[:n]
        if len(w) < n:
            w = np.concatenate([w, self.fill(qid, n - len(w), set(map(int, w)), rng)])
        return w


SAMPLERS: Registry[type[Sampler]] = Registry("sampler")
SAMPLERS.register("random", RandomSampler)
SAMPLERS.register("bm25", BM25Sampler)
SAMPLERS.register("dense", DenseSampler)
SAMPLERS.register("ensemble", EnsembleSampler)
SAMPLERS.register("teacher", TeacherSampler)


def mix_negatives(groups: np.ndarray, fraction: float, pools: SamplingPools, qids: Sequence[str], rng: np.random.Generator) -> np.ndarray:
    """Replace ``round(fraction * (G-1))`` negatives of each group by random-pool documents.

    Changes the locality of the group (its diameter) while keeping its size; the replaced columns
    are drawn uniformly among the negatives.
    """
    g = groups.shape[1]
    k = int(round(fraction * (g - 1)))
    if k == 0:
        return groups
    out = groups.copy()
    for b, q in enumerate(qids):
        cols = 1 + rng.choice(g - 1, size=k, replace=False)
        taken = set(map(int, out[b]))
        rel = pools.relevant[q]
        pool = np.array([d for d in pools.random[q] if int(d) not in taken and int(d) not in rel], dtype=np.int64)
        out[b, cols] = pool[rng.choice(len(pool), size=k, replace=False)]
    return out


def random_pools(query_ids: Sequence[str], relevant: dict[str, set], n_docs: int, size: int, seed: int) -> dict[str, np.ndarray]:
    """A seeded uniform pool of ``size`` non-relevant documents per query, drawn from the whole corpus."""
    rng = np.random.default_rng(seed)
    out = {}
    size = min(size, n_docs - 1)
    for q in query_ids:
        rel = relevant[q]
        draw = rng.choice(n_docs, size=min(n_docs, size + len(rel)), replace=False)
        out[q] = np.sort(np.array([d for d in draw if int(d) not in rel][:size], dtype=np.int64))
    return out
