"""Teacher scores: computed once per (teacher, query set, candidate component), read from disk.

A teacher scores (query, document) pairs. Kinds (registry ``TEACHERS``, one ``TeacherKind`` each):

- ``bi``: any HF encoder, pooled embeddings, dot or cosine (document embeddings are cached and
  shared with dense candidates of the same model);
- ``cross``: any HF sequence-classification model with one logit;
- ``bm25``: the BM25 score itself (from the BM25 index, for exactly the pairs asked for);
- ``file``: imported scores, streamed from any format of ``data/imports.py`` (the seed code's JSON,
  TREC runs, sentence-transformers hard negatives, cross-encoder score pickles, Hofstätter's TSV,
  Tevatron/FlagEmbedding JSONL, ColBERT examples);
- ``ensemble``: a weighted sum of per-query z-normalised member scores;
- ``none``: no teacher (contrastive losses only).

Pairs are grouped in *components*, one per candidate list (``bm25`` = BM25 top-k plus the
judged positives, ``dense``, ``random``), each a cached score table whose rows follow the query
set's order. A trial reads only the components its sampler can emit. Ensemble members are
z-normalised per query with the mean and standard deviation of their scores over that query's
``bm25`` component, so every component of a query shares one scale.

Scoring is sharded through an executor: cross-encoder pairs and bi-encoder embeddings run as GPU
tasks when GPUs are given, BM25 pairs as CPU tasks over query ranges, a teacher file in one task.
"""

from __future__ import annotations

import hashlib
import logging
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from .progress import Progress
from .data.batching import SpecialTokens, pair_chunks
from .data.bm25 import bm25_pair_scores
from .data.cache import fingerprint, stage
from .data.candidates import EncoderSpec, doc_embeddings, query_embeddings
from .data.collections import Corpus, QuerySet
from .data.imports import ImportedTable, import_table, reader
from .data.store import Ragged
from .data.tokens import TokenStore, doc_tokens, query_tokens
from .errors import ConfigError, TeacherError
from .executor import LOCAL
from .models import SequenceClassifier, autocast, load_tokenizer, pinned_threads, resolve_device, resolve_model, run_chunks
from .registry import Registry, unknown_name_message

if TYPE_CHECKING:
    from .config import TeacherConfig
    from .executor import Executor

logger = logging.getLogger(__name__)


@dataclass
class ScoreTable:
    """Scores of (query row × document) pairs: row i holds ``pools.row(i)`` (sorted) and their scores.

    NaN marks a pair the teacher did not score (an imported file without it).
    """

    pools: Ragged  # doc indices (int32), sorted and unique within each row
    scores: np.ndarray  # (nnz,) float32, aligned with pools.values
    folder: Optional[Path] = None  # where it was opened from

    def __len__(self) -> int:
        return len(self.pools)

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.pools.indptr[i], self.pools.indptr[i + 1]
        return np.asarray(self.pools.values[lo:hi]), np.asarray(self.scores[lo:hi])

    def lookup(self, rows: Sequence[int], docs: np.ndarray) -> np.ndarray:
        """Scores (B, G) of ``docs`` (B, G) for query ``rows`` (B,); NaN where the pair is absent."""
        out = np.full(docs.shape, np.nan, dtype=np.float32)
        for b, r in enumerate(rows):
            d, s = self.row(int(r))
            if not len(d):
                continue
            pos = np.searchsorted(d, docs[b])
            pos_c = np.minimum(pos, len(d) - 1)
            hit = (pos < len(d)) & (d[pos_c] == docs[b])
            out[b, hit] = s[pos_c[hit]]
        return out

    def save(self, folder: Path) -> None:
        self.pools.save(folder, "pools")
        np.save(folder / "scores.npy", np.asarray(self.scores, dtype=np.float32))

    @classmethod
    def load(cls, folder: Path) -> "ScoreTable":
        return cls(Ragged.load(folder, "pools"), np.load(folder / "scores.npy", mmap_mode="r"), Path(folder))


class TeacherScores:
    """A teacher's scores over several components, looked up in order (first hit wins)."""

    def __init__(self, tables: dict[str, ScoreTable]) -> None:
        self.tables = tables

    def lookup(self, rows: Sequence[int], docs: np.ndarray) -> np.ndarray:
        out = np.full(docs.shape, np.nan, dtype=np.float32)
        for t in self.tables.values():
            missing = np.isnan(out)
            if not missing.any():
                break
            found = t.lookup(rows, docs)
            out[missing] = found[missing]
        return out

    def scored(self, row: int) -> np.ndarray:
        """Sorted unique documents with a (non-NaN) score for query ``row``."""
        parts = []
        for t in self.tables.values():
            d, s = t.row(row)
            parts.append(d[~np.isnan(s)])
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int32)


# ---------------------------------------------------------------------------------------------
# Scorers: raw scores of one teacher (not an ensemble) for pools of documents
# ---------------------------------------------------------------------------------------------


@dataclass
class ScoringContext:
    """Where and how teachers score: the cache, the executor and the resources of its tasks."""

    root: Path
    max_query_length: int
    max_doc_length: int
    batch_tokens: int = 16384
    executor: Optional["Executor"] = None
    cpus: int = 1
    gpus: float = 0
    shard_pairs: int = 2_000_000
    shard_docs: int = 500_000
    shard_queries: int = 50_000
    device: str = "auto"
    #: BM25 candidates by query-set key: a BM25 teacher takes their scores instead of scoring those pairs again
    bm25_candidates: dict = field(default_factory=dict)
    #: every query of a query set's collection, by query-set key: an imported file's id outside it is unknown
    known_queries: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.executor is None:

            self.executor = LOCAL


def _row_shards(pools: Ragged, pairs_per_shard: int) -> list[tuple[int, int]]:
    """Row ranges holding about ``pairs_per_shard`` pairs each."""
    ends = np.asarray(pools.indptr[1:])
    cuts, start, n = [], 0, len(pools)
    while start < n:
        target = int(pools.indptr[start]) + max(1, pairs_per_shard)
        stop = max(start + 1, int(np.searchsorted(ends, target, side="right")))
        stop = min(stop, n)
        cuts.append((start, stop))
        start = stop
    return cuts or [(0, 0)]


@dataclass(frozen=True)
class BiPairShard:
    doc_emb: str
    query_emb: str
    pools: str
    start: int
    stop: int
    out: str


def bi_pair_shard(job: BiPairShard) -> int:
    emb = np.load(job.doc_emb, mmap_mode="r")
    q = np.load(job.query_emb, mmap_mode="r")
    pools = Ragged.load(Path(job.pools), "pools")
    out = [(np.asarray(emb[pools.row(i)], dtype=np.float32) @ np.asarray(q[i], dtype=np.float32)).astype(np.float32)
           for i in range(job.start, job.stop)]
    np.save(f"{job.out}.npy", np.concatenate(out) if out else np.zeros(0, np.float32))
    return job.stop - job.start


def _bi_scores(t: TeacherConfig, ctx: ScoringContext, corpus: Corpus, queries: QuerySet, pools: Ragged, work: Path) -> np.ndarray:
    spec = EncoderSpec(t.model, t.pooling, t.similarity, ctx.max_doc_length, ctx.max_query_length)
    emb = doc_embeddings(ctx.root, corpus, spec, ctx.executor, ctx.gpus, ctx.cpus, ctx.shard_docs, ctx.batch_tokens)
    q = query_embeddings(ctx.root, queries, spec, ctx.executor, ctx.gpus, ctx.cpus, ctx.shard_queries, ctx.batch_tokens)
    pools.save(work, "pools")
    jobs = [BiPairShard(str(emb.filename), str(q.filename), str(work), a, b, str(work / f"bi-{i:05d}"))
            for i, (a, b) in enumerate(_row_shards(pools, ctx.shard_pairs))]
    ctx.executor.map(bi_pair_shard, jobs, cpus=1, label=f"bi teacher pairs ({len(jobs)} shards)")
    return _collect(jobs, work)


@dataclass(frozen=True)
class CrossPairShard:
    model: str
    docs: str  # doc TokenStore folder
    queries: str  # query TokenStore folder
    pools: str
    start: int
    stop: int
    batch_tokens: int
    out: str
    threads: int = 1
    device: str = "auto"


@pinned_threads
def cross_pair_shard(job: CrossPairShard) -> int:
    import torch


    device = resolve_device(job.device)
    tok = load_tokenizer(job.model)
    docs, queries = TokenStore.load(Path(job.docs)), TokenStore.load(Path(job.queries))
    pools = Ragged.load(Path(job.pools), "pools")
    model = SequenceClassifier(job.model).to(device).eval()
    special = SpecialTokens.of(tok)
    lo, hi = int(pools.indptr[job.start]), int(pools.indptr[job.stop])
    q_of = np.repeat(np.arange(job.start, job.stop), pools.lengths()[job.start : job.stop])
    d_all = np.asarray(pools.values[lo:hi], dtype=np.int64)
    flat = np.zeros(len(d_all), dtype=np.float32)
    step = 1 << 14  # a progress line per step at most; length-sorted chunks within it
    progress = Progress(f"cross teacher {job.model} on queries [{job.start:,}, {job.stop:,})", len(d_all), "pairs")
    with torch.inference_mode(), autocast(device):
        for s in range(0, len(d_all), step):
            qs = [queries.get(int(i)) for i in q_of[s : s + step]]
            ds = [docs.get(int(d)) for d in d_all[s : s + step]]
            chunks = pair_chunks(qs, ds, special, job.batch_tokens)
            flat[s : s + len(qs)] = run_chunks(model.forward_pairs, chunks, len(qs), device)[:, 0].float().cpu().numpy()
            progress.update(len(qs))
    np.save(f"{job.out}.npy", flat)
    return job.stop - job.start


def _cross_scores(t: TeacherConfig, ctx: ScoringContext, corpus: Corpus, queries: QuerySet, pools: Ragged, work: Path) -> np.ndarray:

    tok = load_tokenizer(t.model)
    docs = doc_tokens(ctx.root, corpus, t.model, tok, ctx.max_doc_length, ctx.executor, ctx.shard_docs)
    qtok = query_tokens(ctx.root, queries, t.model, tok, ctx.max_query_length, ctx.executor, ctx.shard_queries)
    pools.save(work, "pools")
    jobs = [CrossPairShard(resolve_model(t.model), str(docs.folder), str(qtok.folder), str(work), a, b, ctx.batch_tokens,
                           str(work / f"cross-{i:05d}"), ctx.cpus, ctx.device)
            for i, (a, b) in enumerate(_row_shards(pools, ctx.shard_pairs))]
    ctx.executor.map(cross_pair_shard, jobs, cpus=ctx.cpus, gpus=ctx.gpus, label=f"cross teacher pairs ({len(jobs)} shards)")
    return _collect(jobs, work)


def _collect(jobs, work: Path) -> np.ndarray:
    out = np.concatenate([np.load(f"{j.out}.npy") for j in jobs]) if jobs else np.zeros(0, np.float32)
    for j in jobs:
        Path(f"{j.out}.npy").unlink()
    for name in ("pools.indptr.npy", "pools.values.npy"):
        if (work / name).exists():
            (work / name).unlink()
    return out.astype(np.float32)


def read_teacher_file(path: str | Path, fmt: str = "auto") -> dict[str, dict[str, float]]:
    """``{qid: {docid: score}}`` of a small teacher file of any imported format (tests, inspection).

    Trials never build this dict: they stream the file into an ``ImportedTable`` (``imports.py``).

    Raises:
        TeacherError: naming the file (and line) when it is missing, truncated or corrupt, not UTF-8,
            malformed, or holds a score that is not a finite number.
    """
    p = Path(path)
    if not p.exists():
        raise TeacherError(f"teacher file not found: {p}")
    out: dict[str, dict[str, float]] = {}
    try:
        for rec in reader(p, fmt).records():
            for q, d, s in zip(rec.qids, rec.pids, rec.scores):
                if not math.isnan(s):
                    out.setdefault(q, {})[d] = s
    except (EOFError, OSError, zlib.error, UnicodeDecodeError) as e:  # gzip.BadGzipFile is an OSError
        raise TeacherError(f"{p}: cannot be read to its end: truncated or corrupt ({type(e).__name__}: {e})") from None
    return out


def file_table(t: TeacherConfig, ctx: ScoringContext, corpus: Corpus, queries: QuerySet) -> ImportedTable:
    """The teacher file streamed into an ``ImportedTable`` over ``queries`` (a cached stage, shared with candidates)."""
    return import_table(ctx.root, t.path, t.format, file_digest(t.path, ctx.root), corpus, queries, ctx.known_queries.get(queries.key),
                        t.on_unknown, ctx.executor)


def file_digest(path: str, root: Optional[Path] = None) -> str:
    """Content hash of a file, memoised by its stat in the cache (large teacher files are hashed once)."""
    return fingerprint(Path(path), "file", dict, root)["key"]


# ---------------------------------------------------------------------------------------------
# Teacher kinds: the registry ``TEACHERS`` is the only list of them
# ---------------------------------------------------------------------------------------------


class TeacherKind:
    """One kind of teacher: what its config needs, what determines its scores, how it scores pairs, what it may miss.

    A new kind is one subclass registered in ``TEACHERS``; the config check, the cache keys, the
    missing-pair policy, preflight and the reported metrics all ask it.
    """

    #: it gives scores (``none`` does not: no distillation term, no teacher entropy or KL reported)
    scores = True
    #: its scores depend on the tokenised lengths (``max_query_length``, ``max_doc_length``)
    tokenized = False
    #: it combines member teachers
    combines = False

    def check(self, t: "TeacherConfig", path: str) -> None:
        """Raise ``ConfigError`` naming ``path`` for what this kind's config lacks."""

    def key(self, t: "TeacherConfig", root: Optional[Path]) -> dict:
        """What determines its scores (the cache key)."""
        return {"kind": t.kind}

    def models(self, t: "TeacherConfig") -> list[str]:
        """Models it loads (preflight checks each is available)."""
        return []

    def files(self, t: "TeacherConfig") -> list[tuple[str, str]]:
        """``(path, format)`` of files it reads (preflight parses their first records)."""
        return []

    def must_cover(self, t: "TeacherConfig") -> bool:
        """Whether a pair it leaves unscored is an error (else it is dropped from training)."""
        return False

    def score(self, t: "TeacherConfig", ctx: ScoringContext, corpus: Corpus, queries: QuerySet, pools: Ragged, work: Path) -> np.ndarray:
        """Raw scores of ``pools`` (aligned with ``pools.values``), NaN where it has none."""
        raise NotImplementedError(f"teacher kind {t.kind!r} does not score pairs itself")


def _need(cond: bool, path: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{path}: {msg}")


class _ModelTeacher(TeacherKind):
    tokenized = True

    def check(self, t, path):
        _need(bool(t.model), f"{path}.model", f"a {t.kind} teacher needs a model path or name")

    def models(self, t):
        return [t.model] if t.model else []


class BiTeacher(_ModelTeacher):
    """Any HF encoder: pooled embeddings, dot or cosine (document embeddings shared with dense candidates of the model)."""

    def key(self, t, root):
        return {"kind": t.kind, "model": t.model, "pooling": t.pooling, "similarity": t.similarity}

    def score(self, t, ctx, corpus, queries, pools, work):
        return _bi_scores(t, ctx, corpus, queries, pools, work)


class CrossTeacher(_ModelTeacher):
    """Any HF sequence-classification model with one logit."""

    def key(self, t, root):
        return {"kind": t.kind, "model": t.model}

    def score(self, t, ctx, corpus, queries, pools, work):
        return _cross_scores(t, ctx, corpus, queries, pools, work)


class BM25Teacher(TeacherKind):
    """The BM25 score itself, from the BM25 index, for exactly the pairs asked for."""

    def score(self, t, ctx, corpus, queries, pools, work):
        return bm25_pair_scores(ctx.root, corpus, queries, pools, work, ctx.executor, ctx.cpus, ctx.shard_queries,
                                ctx.bm25_candidates.get(queries.key))


class FileTeacher(TeacherKind):
    """Imported scores, streamed from any format of ``data/imports.py``."""

    def check(self, t, path):
        _need(bool(t.path), f"{path}.path", "a file teacher needs a path")
        _need(Path(t.path).exists(), f"{path}.path", f"teacher file not found: {t.path}")

    def key(self, t, root):
        return {"kind": t.kind, "file": file_digest(t.path, root), "format": t.format}

    def files(self, t):
        return [(t.path, t.format)] if t.path else []

    def must_cover(self, t):
        return t.on_missing != "drop"

    def score(self, t, ctx, corpus, queries, pools, work):
        table = file_table(t, ctx, corpus, queries)
        if table.info["records"] and not table.info["scored"]:
            raise TeacherError(f"teacher file {t.path} ({table.info['format']}) holds no scores, only ids: it can serve as "
                               "candidates (candidates.imported), not as a teacher")
        return table.lookup(pools)


class EnsembleTeacher(TeacherKind):
    """A weighted sum of per-query z-normalised member scores (``teacher_scores`` combines them)."""

    combines = True
    tokenized = True

    def check(self, t, path):
        _need(len(t.members) >= 1, f"{path}.members", "an ensemble teacher needs members")
        for i, m in enumerate(t.members):
            _need(not (m.kind in TEACHERS and (TEACHERS[m.kind].combines or not TEACHERS[m.kind].scores)),
                  f"{path}.members[{i}].kind", "members cannot be ensembles or none")
            check_teacher(m, f"{path}.members[{i}]")

    def key(self, t, root):
        return {"kind": "ensemble", "members": [{**teacher_key(m, root), "weight": m.weight} for m in t.members]}


class NoTeacher(TeacherKind):
    """No teacher: contrastive losses only."""

    scores = False


TEACHERS: Registry = Registry("teacher kind")
for _name, _kind in (("bi", BiTeacher()), ("cross", CrossTeacher()), ("bm25", BM25Teacher()), ("file", FileTeacher()),
                     ("ensemble", EnsembleTeacher()), ("none", NoTeacher())):
    TEACHERS.register(_name, _kind)


def check_teacher(t: "TeacherConfig", path: str = "teacher") -> None:
    """``ConfigError`` naming the key when ``t`` (or a member) is not a usable teacher."""
    if t.kind not in TEACHERS:
        raise ConfigError(f"{path}.kind: " + unknown_name_message("teacher kind", t.kind, list(TEACHERS)))
    _need(t.weight > 0, f"{path}.weight", f"must be > 0, got {t.weight}")
    kind = TEACHERS[t.kind]
    kind.check(t, path)
    if not kind.combines and t.members:
        raise ConfigError(f"{path}.members: only an ensemble teacher takes members")


def teacher_key(t: "TeacherConfig", root: Optional[Path] = None) -> dict:
    """What determines a teacher's scores (an ensemble: its members and weights)."""
    return TEACHERS[t.kind].key(t, root)


def ragged_hash(pools: Ragged) -> str:
    h = hashlib.sha256(np.ascontiguousarray(pools.indptr, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(pools.values, dtype=np.int32).tobytes())
    return h.hexdigest()[:20]


def raw_table(t: TeacherConfig, ctx: ScoringContext, corpus: Corpus, queries: QuerySet, pools: Ragged) -> ScoreTable:
    """Raw scores of one (non-ensemble) teacher for the pools (cached stage). NaN = not scored."""
    key = {"teacher": teacher_key(t, ctx.root), "corpus": corpus.key, "queries": queries.key, "pools": ragged_hash(pools),
           "max_query_length": ctx.max_query_length, "max_doc_length": ctx.max_doc_length}
    if not TEACHERS[t.kind].tokenized:
        key.pop("max_query_length")
        key.pop("max_doc_length")

    def build(tmp: Path) -> None:
        logger.info("teacher %s: scoring %d pairs for %d queries", t.kind, len(pools.values), len(pools))
        scores = TEACHERS[t.kind].score(t, ctx, corpus, queries, pools, tmp)
        ScoreTable(pools, scores).save(tmp)

    return ScoreTable.load(stage(ctx.root, "teacher_raw", key, build))


def _check_missing(t: TeacherConfig, table: ScoreTable, ctx: ScoringContext, corpus: Corpus, queries: QuerySet,
                   component: str) -> None:
    if not TEACHERS[t.kind].must_cover(t):
        return
    miss = np.isnan(np.asarray(table.scores))
    if miss.any():
        where = np.nonzero(miss)[0]
        rows = np.searchsorted(np.asarray(table.pools.indptr), where[:3], side="right") - 1
        store = corpus.store(ctx.root, ctx.executor)
        examples = [(queries.store.id(int(r)), store.id(int(table.pools.values[i]))) for r, i in zip(rows, where[:3])]
        raise TeacherError(
            f"teacher file {t.path} lacks {int(miss.sum())} of {miss.size} (query, doc) pairs the '{component}' "
            f"candidates need (e.g. {examples}); score them, or set teacher.on_missing: drop to train without them"
        )


def row_mean_std(pools: Ragged, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row mean and (population) standard deviation of the non-NaN scores; (0, 1) for an empty row."""
    s = np.asarray(scores, dtype=np.float64)
    ok = ~np.isnan(s)
    rows = np.repeat(np.arange(len(pools)), pools.lengths())
    n = np.bincount(rows, weights=ok, minlength=len(pools))
    total = np.bincount(rows, weights=np.where(ok, s, 0.0), minlength=len(pools))
    mean = np.divide(total, n, out=np.zeros(len(pools)), where=n > 0)
    dev = np.where(ok, s - mean[rows], 0.0)
    var = np.divide(np.bincount(rows, weights=dev * dev, minlength=len(pools)), n, out=np.ones(len(pools)), where=n > 0)
    return mean, np.maximum(np.sqrt(var), 1e-6)


def teacher_scores(
    t: TeacherConfig,
    ctx: ScoringContext,
    corpus: Corpus,
    queries: QuerySet,
    components: dict[str, Ragged],
) -> TeacherScores:
    """The teacher's scores for every component (``bm25`` must be among them: it is the reference set).

    Each component is a ``Ragged`` of document indices per query row of ``queries``.

    Raises:
        TeacherError: an imported file lacks pairs and ``on_missing`` is ``error``.
    """
    if "bm25" not in components:
        raise ValueError("teacher_scores: the 'bm25' component is required (z-normalisation reference)")
    # score tables look documents up by binary search: every pool is stored sorted and unique
    components = {name: Ragged.from_rows([np.unique(np.asarray(r, dtype=np.int64)) for r in pools.rows()])
                  for name, pools in components.items()}
    if not TEACHERS[t.kind].combines:
        tables = {}
        for name, pools in components.items():
            tables[name] = raw_table(t, ctx, corpus, queries, pools)
            _check_missing(t, tables[name], ctx, corpus, queries, name)
        return TeacherScores(tables)

    members = list(t.members)
    ref = [raw_table(m, ctx, corpus, queries, components["bm25"]) for m in members]
    for m, r in zip(members, ref):
        _check_missing(m, r, ctx, corpus, queries, "bm25")
    stats = [row_mean_std(r.pools, r.scores) for r in ref]
    tables = {}
    for name, pools in components.items():
        raws = ref if name == "bm25" else [raw_table(m, ctx, corpus, queries, pools) for m in members]
        for m, r in zip(members, raws):
            _check_missing(m, r, ctx, corpus, queries, name)
        key = {"ensemble": teacher_key(t, ctx.root), "corpus": corpus.key, "queries": queries.key, "pools": ragged_hash(pools),
               "ref": ragged_hash(components["bm25"]), "max_query_length": ctx.max_query_length,
               "max_doc_length": ctx.max_doc_length}

        def build(tmp: Path, raws=raws, pools=pools) -> None:
            rows = np.repeat(np.arange(len(pools)), pools.lengths())
            total = np.zeros(len(pools.values), dtype=np.float64)
            for m, r, (mu, sd) in zip(members, raws, stats):
                total += m.weight * (np.asarray(r.scores, dtype=np.float64) - mu[rows]) / sd[rows]
            ScoreTable(pools, total.astype(np.float32)).save(tmp)

        tables[name] = ScoreTable.load(stage(ctx.root, "teacher_ensemble", key, build))
    return TeacherScores(tables)


def rerank_run(scores: TeacherScores, docs, rows: np.ndarray, qids: list[str], pools: Sequence[np.ndarray]) -> dict[str, dict[str, float]]:
    """A run ranking each query's pool by the teacher (pairs without a score are left out).

    ``docs`` is the corpus ``TextStore`` (for document ids); ``qids[j]`` names query row ``rows[j]``
    whose pool is ``pools[j]``.
    """
    run = {}
    for q, r, p in zip(qids, rows, pools):
        s = scores.lookup([int(r)], np.asarray(p)[None, :])[0]
        keep = ~np.isnan(s)
        run[q] = dict(zip(docs.ids_of(np.asarray(p)[keep]), s[keep].astype(float).tolist()))
    return run
