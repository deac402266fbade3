"""Teacher scores: computed once per (teacher, collection, candidate component), read from disk.

A teacher scores (query, document) pairs. Kinds (registry ``TEACHERS``):

- ``bi``: any HF encoder, pooled embeddings, dot or cosine (document embeddings are cached and
  shared with dense candidates of the same model);
- ``cross``: any HF sequence-classification model with one logit;
- ``bm25``: the BM25 score itself;
- ``file``: imported scores, gzipped JSON ``{qid: {docid: score}}`` (the format of the reference
  code of arXiv 2505.21058) or a TREC run file;
- ``ensemble``: a weighted sum of per-query z-normalised member scores.

Pairs are grouped in *components*, one per candidate list (``bm25`` = BM25 top-k plus the
judged positives, ``dense``, ``random``), each a cached score table. A trial reads only the
components its sampler can emit, so an imported teacher that covers BM25 pairs serves a BM25
sampler without scoring anything else. Ensemble members are z-normalised per query with the mean
and standard deviation of their scores over that query's ``bm25`` component, so every component
of a query shares one scale.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .config import TeacherConfig
from .data.cache import stage
from .data.candidates import BM25Index, EncoderSpec, doc_embeddings, query_embeddings
from .data.collections import Collection
from .registry import Registry

logger = logging.getLogger(__name__)


class TeacherError(ValueError):
    """Teacher scores are missing or malformed."""


@dataclass
class ScoreTable:
    """Sparse (query × document) scores in CSR form: row i holds ``doc_idx[indptr[i]:indptr[i+1]]`` sorted."""

    query_ids: list[str]
    indptr: np.ndarray  # (Q+1,) int64
    doc_idx: np.ndarray  # (nnz,) int32, sorted within each row
    scores: np.ndarray  # (nnz,) float32, NaN = not scored

    def __post_init__(self) -> None:
        self.rows = {q: i for i, q in enumerate(self.query_ids)}

    @classmethod
    def from_pools(cls, query_ids: list[str], pools: Sequence[np.ndarray], scores: Sequence[np.ndarray]) -> "ScoreTable":
        indptr = np.zeros(len(pools) + 1, dtype=np.int64)
        np.cumsum([len(p) for p in pools], out=indptr[1:])
        docs = np.concatenate(pools).astype(np.int32) if pools else np.zeros(0, np.int32)
        sc = np.concatenate(scores).astype(np.float32) if scores else np.zeros(0, np.float32)
        return cls(list(query_ids), indptr, docs, sc)

    def save(self, folder: Path) -> None:
        (folder / "query_ids.json").write_text(json.dumps(self.query_ids))
        np.save(folder / "indptr.npy", self.indptr)
        np.save(folder / "doc_idx.npy", self.doc_idx)
        np.save(folder / "scores.npy", self.scores)

    @classmethod
    def load(cls, folder: Path) -> "ScoreTable":
        return cls(
            json.loads((folder / "query_ids.json").read_text()),
            np.load(folder / "indptr.npy"),
            np.load(folder / "doc_idx.npy", mmap_mode="r"),
            np.load(folder / "scores.npy", mmap_mode="r"),
        )

    def row(self, qid: str) -> tuple[np.ndarray, np.ndarray]:
        i = self.rows[qid]
        lo, hi = self.indptr[i], self.indptr[i + 1]
        return np.asarray(self.doc_idx[lo:hi]), np.asarray(self.scores[lo:hi])

    def lookup(self, qids: Sequence[str], docs: np.ndarray) -> np.ndarray:
        """Scores (B, G) of ``docs`` (B, G) for ``qids`` (B,); NaN where the pair is absent."""
        out = np.full(docs.shape, np.nan, dtype=np.float32)
        for b, q in enumerate(qids):
            i = self.rows.get(q)
            if i is None:
                continue
            d, s = self.row(q)
            pos = np.searchsorted(d, docs[b])
            pos_c = np.minimum(pos, len(d) - 1)
            hit = (pos < len(d)) & (d[pos_c] == docs[b]) if len(d) else np.zeros(docs.shape[1], bool)
            out[b, hit] = s[pos_c[hit]]
        return out


class TeacherScores:
    """A teacher's scores over several components, looked up in order (first hit wins)."""

    def __init__(self, tables: dict[str, ScoreTable]) -> None:
        self.tables = tables

    def lookup(self, qids: Sequence[str], docs: np.ndarray) -> np.ndarray:
        out = np.full(docs.shape, np.nan, dtype=np.float32)
        for t in self.tables.values():
            missing = np.isnan(out)
            if not missing.any():
                break
            found = t.lookup(qids, docs)
            out[missing] = found[missing]
        return out

    def scored(self, qid: str) -> np.ndarray:
        """Sorted unique documents with a (non-NaN) score for ``qid``."""
        parts = []
        for t in self.tables.values():
            if qid in t.rows:
                d, s = t.row(qid)
                parts.append(d[~np.isnan(s)])
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int32)


# ---------------------------------------------------------------------------------------------
# Scorers: raw scores of one teacher (not an ensemble) for pools of documents
# ---------------------------------------------------------------------------------------------


@dataclass
class ScoringContext:
    root: Path
    device: torch.device
    max_query_length: int
    max_doc_length: int
    batch_tokens: int = 16384


def _bi_scores(t: TeacherConfig, ctx: ScoringContext, col: Collection, qids: list[str], pools: Sequence[np.ndarray]) -> list[np.ndarray]:
    spec = EncoderSpec(t.model, t.pooling, t.similarity, ctx.max_doc_length, ctx.max_query_length)
    emb = doc_embeddings(ctx.root, col.corpus, spec, ctx.device, ctx.batch_tokens)
    q = query_embeddings(ctx.root, [col.queries[x] for x in qids], spec, ctx.device, ctx.batch_tokens)
    return [(np.asarray(emb[p], dtype=np.float32) @ q[i]).astype(np.float32) for i, p in enumerate(pools)]


def _cross_scores(t: TeacherConfig, ctx: ScoringContext, col: Collection, qids: list[str], pools: Sequence[np.ndarray]) -> list[np.ndarray]:
    from .data.batching import SpecialTokens, pair_chunks
    from .data.tokens import doc_tokens, query_tokens
    from .models import SequenceClassifier, autocast, load_tokenizer, run_chunks

    tok = load_tokenizer(t.model)
    docs = doc_tokens(ctx.root, col.corpus, tok, ctx.max_doc_length)
    queries = query_tokens(ctx.root, [col.queries[x] for x in qids], tok, ctx.max_query_length)
    model = SequenceClassifier(t.model).to(ctx.device).eval()
    special = SpecialTokens.of(tok)
    q_of = np.repeat(np.arange(len(pools)), [len(p) for p in pools])
    d_all = np.concatenate(pools) if pools else np.zeros(0, np.int64)
    flat = np.zeros(len(d_all), dtype=np.float32)
    step = 1 << 16
    with torch.inference_mode(), autocast(ctx.device):
        for s in range(0, len(d_all), step):
            qs = [queries.get(i) for i in q_of[s : s + step]]
            ds = [docs.get(int(d)) for d in d_all[s : s + step]]
            chunks = pair_chunks(qs, ds, special, ctx.batch_tokens)
            flat[s : s + len(qs)] = run_chunks(model.forward_pairs, chunks, len(qs), ctx.device)[:, 0].float().cpu().numpy()
    return np.split(flat, np.cumsum([len(p) for p in pools])[:-1]) if pools else []


def _bm25_scores(t: TeacherConfig, ctx: ScoringContext, col: Collection, qids: list[str], pools: Sequence[np.ndarray]) -> list[np.ndarray]:
    index = BM25Index(ctx.root, col.corpus)
    return [index.pair_scores(col.queries[q], p) for q, p in zip(qids, pools)]


def read_teacher_file(path: str | Path, fmt: str = "auto") -> dict[str, dict[str, float]]:
    """Read ``{qid: {docid: score}}`` from gzipped/plain JSON or a TREC run file."""
    p = Path(path)
    if not p.exists():
        raise TeacherError(f"teacher file not found: {p}")
    opener = gzip.open if p.suffix == ".gz" else open
    if fmt == "auto":
        with opener(p, "rt") as f:
            head = f.read(1).lstrip()
        fmt = "json" if head in ("{", "") else "trec"
    with opener(p, "rt") as f:
        if fmt == "json":
            try:
                raw = json.load(f)
            except json.JSONDecodeError as e:
                raise TeacherError(f"{p}: not valid JSON ({e.msg}); expected {{qid: {{docid: score}}}}") from None
            if not isinstance(raw, dict):
                raise TeacherError(f"{p}: expected a JSON object {{qid: {{docid: score}}}}")
            return {str(q): {str(d): float(s) for d, s in docs.items()} for q, docs in raw.items()}
        out: dict[str, dict[str, float]] = {}
        for n, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 6:
                raise TeacherError(f"{p}:{n}: expected a TREC run line 'qid Q0 docid rank score tag'")
            out.setdefault(parts[0], {})[parts[2]] = float(parts[4])
        return out


def _file_scores(t: TeacherConfig, ctx: ScoringContext, col: Collection, qids: list[str], pools: Sequence[np.ndarray]) -> list[np.ndarray]:
    table = read_teacher_file(t.path, t.format)
    ids = col.corpus.doc_ids
    out = []
    for q, p in zip(qids, pools):
        row = table.get(q, {})
        out.append(np.array([row.get(ids[d], np.nan) for d in p], dtype=np.float32))
    return out


TEACHERS: Registry = Registry("teacher kind")
TEACHERS.register("bi", _bi_scores)
TEACHERS.register("cross", _cross_scores)
TEACHERS.register("bm25", _bm25_scores)
TEACHERS.register("file", _file_scores)


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:20]


def _teacher_key(t: TeacherConfig) -> dict:
    d = {"kind": t.kind}
    if t.kind in ("bi", "cross"):
        d["model"] = t.model
    if t.kind == "bi":
        d.update(pooling=t.pooling, similarity=t.similarity)
    if t.kind == "file":
        d.update(file=_file_digest(t.path), format=t.format)
    return d


def _pools_hash(qids: list[str], pools: Sequence[np.ndarray]) -> str:
    h = hashlib.sha256(json.dumps(qids).encode())
    for p in pools:
        h.update(np.asarray(p, dtype=np.int64).tobytes())
        h.update(b"|")
    return h.hexdigest()[:20]


def raw_table(t: TeacherConfig, ctx: ScoringContext, col: Collection, qids: list[str], pools: Sequence[np.ndarray]) -> ScoreTable:
    """Raw scores of one (non-ensemble) teacher for the pools (cached stage). NaN = not scored."""
    key = {"teacher": _teacher_key(t), "corpus": col.corpus.key, "pools": _pools_hash(qids, pools),
           "max_query_length": ctx.max_query_length, "max_doc_length": ctx.max_doc_length}
    if t.kind == "file":
        key.pop("max_query_length")
        key.pop("max_doc_length")

    def build(tmp: Path) -> None:
        logger.info("teacher %s: scoring %d pairs for %d queries of %s", t.kind, sum(len(p) for p in pools), len(qids), col.dataset_id)
        scores = TEACHERS[t.kind](t, ctx, col, qids, pools)
        ScoreTable.from_pools(qids, pools, scores).save(tmp)

    return ScoreTable.load(stage(ctx.root, "teacher_raw", key, build))


def _check_missing(t: TeacherConfig, table: ScoreTable, col: Collection, component: str) -> None:
    if t.kind != "file" or t.on_missing == "drop":
        return
    miss = np.isnan(np.asarray(table.scores))
    if miss.any():
        ids = col.corpus.doc_ids
        rows = np.searchsorted(table.indptr, np.nonzero(miss)[0], side="right") - 1
        examples = [(table.query_ids[r], ids[table.doc_idx[i]]) for r, i in zip(rows[:3], np.nonzero(miss)[0][:3])]
        raise TeacherError(
            f"teacher file {t.path} lacks {int(miss.sum())} of {miss.size} (query, doc) pairs the '{component}' "
            f"candidates need (e.g. {examples}); score them, or set teacher.on_missing: drop to train without them"
        )


def _zstats(table: ScoreTable) -> dict[str, tuple[float, float]]:
    out = {}
    for q in table.query_ids:
        _, s = table.row(q)
        s = s[~np.isnan(s)]
        if len(s) == 0:
            out[q] = (0.0, 1.0)
        else:
            out[q] = (float(s.mean()), float(max(s.std(), 1e-6)))
    return out


def teacher_scores(
    t: TeacherConfig,
    ctx: ScoringContext,
    col: Collection,
    qids: list[str],
    components: dict[str, Sequence[np.ndarray]],
) -> TeacherScores:
    """The teacher's scores for every component (``bm25`` must be among them: it is the reference set).

    Raises:
        TeacherError: an imported file lacks pairs and ``on_missing`` is ``error``.
    """
    if "bm25" not in components:
        raise ValueError("teacher_scores: the 'bm25' component is required (z-normalisation reference)")
    # score tables look documents up by binary search: every pool is stored sorted and unique
    components = {name: [np.unique(np.asarray(p, dtype=np.int64)) for p in pools] for name, pools in components.items()}
    if t.kind != "ensemble":
        tables = {}
        for name, pools in components.items():
            tables[name] = raw_table(t, ctx, col, qids, pools)
            _check_missing(t, tables[name], col, name)
        return TeacherScores(tables)

    members = list(t.members)
    key_members = [{**_teacher_key(m), "weight": m.weight} for m in members]
    tables = {}
    ref = [raw_table(m, ctx, col, qids, components["bm25"]) for m in members]
    for m, r in zip(members, ref):
        _check_missing(m, r, col, "bm25")
    stats = [_zstats(r) for r in ref]
    for name, pools in components.items():
        raws = ref if name == "bm25" else [raw_table(m, ctx, col, qids, pools) for m in members]
        for m, r in zip(members, raws):
            _check_missing(m, r, col, name)
        key = {"ensemble": key_members, "corpus": col.corpus.key, "pools": _pools_hash(qids, pools),
               "ref": _pools_hash(qids, components["bm25"]), "max_query_length": ctx.max_query_length,
               "max_doc_length": ctx.max_doc_length}

        def build(tmp: Path, raws=raws, pools=pools) -> None:
            scores = []
            for i, q in enumerate(qids):
                total = np.zeros(len(pools[i]), dtype=np.float64)
                for m, r, st in zip(members, raws, stats):
                    _, s = r.row(q)
                    mu, sd = st[q]
                    total += m.weight * (s.astype(np.float64) - mu) / sd
                scores.append(total.astype(np.float32))
            ScoreTable.from_pools(qids, pools, scores).save(tmp)

        tables[name] = ScoreTable.load(stage(ctx.root, "teacher_ensemble", key, build))
    return TeacherScores(tables)


def rerank_run(scores: TeacherScores, col: Collection, qids: list[str], pools: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """A run ranking each query's pool by the teacher (pairs without a score are left out)."""
    ids = col.corpus.doc_ids
    run = {}
    for q in qids:
        p = pools[q]
        s = scores.lookup([q], p[None, :])[0]
        run[q] = {ids[d]: float(v) for d, v in zip(p, s) if not np.isnan(v)}
    return run


def teacher_name(t: TeacherConfig) -> str:
    if t.kind == "ensemble":
        return "+".join(teacher_name(m) for m in t.members)
    if t.kind in ("bi", "cross"):
        return f"{t.kind}:{Path(t.model).name if t.model else '?'}"
    if t.kind == "file":
        return f"file:{Path(t.path).name}"
    return t.kind


def teacher_optional(t: TeacherConfig) -> Optional[TeacherConfig]:
    return None if t.kind == "none" else t
