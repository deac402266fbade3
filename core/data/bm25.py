"""BM25 through tantivy: an inverted index with block-max WAND top-k, multi-threaded, exact pair scores.

Why tantivy (measured in ``benchmarks/bm25_engines.py``, numbers in the README):

- Top-k uses dynamic pruning (block-max WAND), so a query does not score every document. bm25s,
  used before, filled a dense score array over the whole corpus per query and partitioned it:
  its cost per query grows linearly with the corpus (2.2–2.7 s per query at 8.8M passages).
- Searches release the GIL, so one process serves a shard of queries with several threads.
- The score of any given (query, document) pair comes from the same index and the same scorer:
  the query restricted to a set of documents (a zero-weight filter on the document index). A
  BM25 teacher therefore scores only the pairs it needs, on exactly the scale of retrieval.
  PISA (``pyterrier-pisa``, what arXiv 2505.21058 used) retrieves about as fast but has no way
  to score given pairs, and it brings PyTerrier, pandas and a pinned TBB with it.
- The analyzer reproduces the tokenization of the earlier bm25s setup exactly: the pattern
  ``(?u)\\b\\w\\w+\\b``, lowercasing and Lucene's 33 English stopwords.

tantivy fixes BM25's parameters at Lucene's defaults, k1 = 1.2 and b = 0.75, and stores document
lengths as one-byte field norms, as Lucene does.

Ties: hits are returned by score, then by document index, so results do not depend on how the
index is split into segments.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from ..executor import LOCAL
from .cache import stage
from .candidates import Candidates
from .store import Ragged, TextStore
from .tokens import shard_ranges

if TYPE_CHECKING:
    from ..executor import Executor
    from .candidates import Candidates
    from .collections import Corpus, QuerySet

logger = logging.getLogger(__name__)

TOKEN_PATTERN = r"(?u)\b\w\w+\b"
ANALYZER = "ranksweep_bm25"
K1, B = 1.2, 0.75  # tantivy's (Lucene's) fixed BM25 parameters


def settings() -> dict:
    """What determines BM25 results: engine, version, analyzer and parameters (part of cache keys)."""
    import tantivy

    return {"engine": "tantivy", "version": getattr(tantivy, "__version__", "?"), "pattern": TOKEN_PATTERN,
            "lowercase": True, "stopwords": "lucene-english", "k1": K1, "b": B}


def analyzer():
    """The BM25 analyzer: ``(?u)\\b\\w\\w+\\b`` tokens, lowercased, Lucene's English stopwords removed."""
    import tantivy

    return (tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.regex(TOKEN_PATTERN))
            .filter(tantivy.Filter.lowercase()).filter(tantivy.Filter.stopword("english")).build())


def _schema():
    import tantivy

    sb = tantivy.SchemaBuilder()
    sb.add_text_field("body", stored=False, tokenizer_name=ANALYZER, index_option="freq")
    sb.add_unsigned_field("idx", stored=False, indexed=True, fast=True)
    return sb.build()


# ---------------------------------------------------------------------------------------------
# Index
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexJob:
    source: str  # TextStore folder of the corpus
    out: str
    threads: int
    heap_bytes: int = 1 << 30


def build_index(job: IndexJob) -> int:
    """Index every document of the corpus store (document index as a fast field)."""
    import tantivy

    store = TextStore.load(Path(job.source))
    index = tantivy.Index(_schema(), path=job.out)
    index.register_tokenizer(ANALYZER, analyzer())
    threads = max(1, int(job.threads))
    writer = index.writer(heap_size=max(job.heap_bytes, 15_000_000 * threads), num_threads=threads)
    step = 1 << 16
    for a in range(0, len(store), step):
        for i, text in enumerate(store.texts(a, a + step), start=a):
            doc = tantivy.Document()
            doc.add_text("body", text)
            doc.add_unsigned("idx", i)
            writer.add_document(doc)
    writer.commit()
    writer.wait_merging_threads()
    return len(store)


def bm25_index(root: Path, corpus: "Corpus", executor: Optional["Executor"] = None, cpus: int = 1) -> Path:
    """The tantivy index of ``corpus`` (cached stage ``bm25_index``, built by one task with ``cpus`` threads)."""
    executor = executor or LOCAL

    def build(tmp: Path) -> None:
        store = corpus.store(root, executor)
        (tmp / "index").mkdir()
        executor.map(build_index, [IndexJob(str(store.folder), str(tmp / "index"), cpus)], cpus=cpus, label="bm25 index")

    return stage(root, "bm25_index", {"corpus": corpus.key, **settings()}, build) / "index"


# ---------------------------------------------------------------------------------------------
# Searching
# ---------------------------------------------------------------------------------------------


class BM25Searcher:
    """An opened index: ``search`` (top-k) and ``pair_scores`` (given documents), both thread-parallel."""

    _open: dict[str, "BM25Searcher"] = {}

    def __init__(self, folder: Path) -> None:
        import tantivy

        self.index = tantivy.Index.open(str(folder))
        self.index.register_tokenizer(ANALYZER, analyzer())
        self.analyzer = analyzer()
        self.schema = self.index.schema
        self.searcher = self.index.searcher()

    @classmethod
    def open(cls, folder: Path) -> "BM25Searcher":
        """One searcher per index and process (shards run in the same process reuse it)."""
        key = f"{os.getpid()}:{Path(folder).resolve()}"
        if key not in cls._open:
            cls._open[key] = cls(folder)
        return cls._open[key]

    def _text_query(self, text: str):
        import tantivy

        tokens = self.analyzer.analyze(text)
        if not tokens:
            return None
        return tantivy.Query.boolean_query(
            [(tantivy.Occur.Should, tantivy.Query.term_query(self.schema, "body", t, index_option="freq")) for t in tokens])

    def _one(self, text: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = self._text_query(text)
        if q is None:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        hits = self.searcher.search(q, k, count=False).hits
        if not hits:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        idx = np.asarray(self.searcher.fast_field_values("idx", [a for _, a in hits]), dtype=np.int64)
        sc = np.asarray([s for s, _ in hits], dtype=np.float32)
        order = np.lexsort((idx, -sc))
        return idx[order], sc[order]

    def search(self, texts: Sequence[str], k: int, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` document indices (Q, k) int32 (-1 padded) and BM25 scores (Q, k) float32."""
        idx = np.full((len(texts), k), -1, dtype=np.int32)
        sc = np.zeros((len(texts), k), dtype=np.float32)

        def run(i: int) -> None:
            d, s = self._one(texts[i], k)
            idx[i, : len(d)] = d
            sc[i, : len(s)] = s

        _parallel(run, len(texts), threads)
        return idx, sc

    def scores_for(self, text: str, docs: np.ndarray) -> np.ndarray:
        """BM25 scores (float32) of one query for ``docs`` (a document without a query term scores 0)."""
        import tantivy

        out = np.zeros(len(docs), dtype=np.float32)
        q = self._text_query(text)
        if q is None or len(docs) == 0:
            return out
        uniq = np.unique(docs)
        only = tantivy.Query.const_score_query(tantivy.Query.term_set_query(self.schema, "idx", uniq.tolist()), 0.0)
        both = tantivy.Query.boolean_query([(tantivy.Occur.Must, only), (tantivy.Occur.Should, q)])
        hits = self.searcher.search(both, len(uniq), count=False).hits
        if hits:
            got = np.asarray(self.searcher.fast_field_values("idx", [a for _, a in hits]), dtype=np.int64)
            val = np.asarray([s for s, _ in hits], dtype=np.float32)
            pos = np.searchsorted(uniq, got)
            full = np.zeros(len(uniq), dtype=np.float32)
            full[pos] = val
            out = full[np.searchsorted(uniq, docs)]
        return out

    def pair_scores(self, texts: Sequence[str], pools: Sequence[np.ndarray], threads: int = 1) -> list[np.ndarray]:
        """BM25 scores of each query ``texts[i]`` for the documents ``pools[i]``."""
        out: list[np.ndarray] = [np.zeros(0, np.float32)] * len(texts)

        def run(i: int) -> None:
            out[i] = self.scores_for(texts[i], np.asarray(pools[i], dtype=np.int64))

        _parallel(run, len(texts), threads)
        return out


def _parallel(fn, n: int, threads: int) -> None:
    if threads <= 1 or n < 2:
        for i in range(n):
            fn(i)
        return
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(fn, range(n), chunksize=max(1, n // (threads * 8))))


# ---------------------------------------------------------------------------------------------
# Sharded stages
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchShard:
    index: str
    queries: str  # TextStore folder
    start: int
    stop: int
    k: int
    threads: int
    out: str


def search_shard(job: SearchShard) -> int:
    texts = TextStore.load(Path(job.queries)).texts(job.start, job.stop)
    idx, sc = BM25Searcher.open(Path(job.index)).search(texts, job.k, job.threads)
    np.save(f"{job.out}.doc_idx.npy", idx)
    np.save(f"{job.out}.scores.npy", sc)
    return len(texts)


def bm25_candidates(root: Path, corpus: "Corpus", queries: "QuerySet", k: int, executor: Optional["Executor"] = None,
                    cpus: int = 1, shard_queries: int = 50_000) -> "Candidates":
    """BM25 top-k of every query of ``queries`` over ``corpus`` (cached, retrieved in query shards)."""
    executor = executor or LOCAL
    k = min(k, corpus.count)
    key = {"corpus": corpus.key, "queries": queries.key, "n": len(queries), "k": k, **settings()}

    def build(tmp: Path) -> None:
        index = bm25_index(root, corpus, executor, cpus)
        jobs = [SearchShard(str(index), str(queries.store.folder), a, b, k, cpus, str(tmp / f"part-{i:05d}"))
                for i, (a, b) in enumerate(shard_ranges(len(queries), shard_queries))]
        executor.map(search_shard, jobs, cpus=cpus, label=f"bm25 retrieval ({len(jobs)} shards)")
        Candidates.merge([Path(j.out) for j in jobs], tmp, k)

    return Candidates.load(stage(root, "bm25_candidates", key, build))


@dataclass(frozen=True)
class PairShard:
    index: str
    queries: str
    pools: str  # folder of a saved Ragged named "pools", rows aligned with the queries
    start: int
    stop: int
    threads: int
    out: str
    known: Optional[str] = None  # folder of the same queries' BM25 candidates: their pairs are already scored


def pair_shard(job: PairShard) -> int:

    texts = TextStore.load(Path(job.queries)).texts(job.start, job.stop)
    pools = Ragged.load(Path(job.pools), "pools")
    rows = [pools.row(i).astype(np.int64) for i in range(job.start, job.stop)]
    scores = [np.zeros(len(r), dtype=np.float32) for r in rows]
    todo = list(range(len(rows)))
    if job.known:  # a pair among the query's retrieved candidates has its retrieval score: the same scorer
        cand = Candidates.load(Path(job.known))
        unknown = []
        for j, i in enumerate(range(job.start, job.stop)):
            kd, ks = cand.ranked(i), cand.ranked_scores(i)
            order = np.argsort(kd)
            kd, ks = kd[order], ks[order]
            pos = np.minimum(np.searchsorted(kd, rows[j]), max(len(kd) - 1, 0))
            hit = (np.take(kd, pos) == rows[j]) if len(kd) else np.zeros(len(rows[j]), bool)
            scores[j][hit] = ks[pos[hit]]
            unknown.append(~hit)
    else:
        unknown = [np.ones(len(r), bool) for r in rows]
    todo = [j for j in todo if unknown[j].any()]
    found = BM25Searcher.open(Path(job.index)).pair_scores([texts[j] for j in todo], [rows[j][unknown[j]] for j in todo], job.threads)
    for j, f in zip(todo, found):
        scores[j][unknown[j]] = f
    np.save(f"{job.out}.npy", np.concatenate(scores) if scores else np.zeros(0, np.float32))
    return len(texts)


def bm25_pair_scores(root: Path, corpus: "Corpus", queries: "QuerySet", pools: Ragged, work: Path,
                     executor: Optional["Executor"] = None, cpus: int = 1, shard_queries: int = 50_000,
                     known: Optional["Candidates"] = None) -> np.ndarray:
    """BM25 scores (nnz,) float32 of every pair (query i, ``pools.row(i)``), aligned with ``pools.values``.

    ``work`` is a folder on shared storage for the shards' inputs and outputs (inside the stage
    being built); only the pairs asked for are scored, and with ``known`` (BM25 candidates of the
    same queries) the pairs among them take their retrieval scores instead of being scored again.
    """

    executor = executor or LOCAL
    index = bm25_index(root, corpus, executor, cpus)
    pools.save(work, "pools")
    jobs = [PairShard(str(index), str(queries.store.folder), str(work), a, b, cpus, str(work / f"pairs-{i:05d}"),
                      str(known.folder) if known is not None else None)
            for i, (a, b) in enumerate(shard_ranges(len(queries), shard_queries))]
    executor.map(pair_shard, jobs, cpus=cpus, label=f"bm25 pair scores ({len(jobs)} shards)")
    out = np.concatenate([np.load(f"{j.out}.npy") for j in jobs])
    for j in jobs:
        Path(f"{j.out}.npy").unlink()
    for name in ("pools.indptr.npy", "pools.values.npy"):
        (work / name).unlink()
    return out
