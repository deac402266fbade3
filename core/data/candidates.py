"""Candidate lists: BM25 top-k (``bm25.py``) and dense top-k (FAISS over bi-encoder embeddings).

A ``Candidates`` stage holds one row per query of a ``QuerySet`` (same order): document indices
``(Q, k)`` int32 (-1 padded) and scores ``(Q, k)`` float32, best first, memory-mapped.

Dense retrieval is sharded twice: document embeddings are computed by GPU tasks over document
ranges (cached as a stage of their own, shared with a bi-encoder teacher of the same model), and
the exact inner-product search runs per document range against every query, each shard keeping
its top-k, before the shards' lists are merged into one top-k per query. No process ever holds
the whole corpus's embeddings in memory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from ..executor import LOCAL
from ..progress import Progress
from ..models import BiEncoder, autocast, load_encoder, load_tokenizer, pinned_threads, resolve_device, resolve_model
from .batching import SpecialTokens
from .cache import stage
from .store import TextStore
from .tokens import TokenStore, doc_tokens, query_tokens, shard_ranges, tokenizer_key

if TYPE_CHECKING:
    from ..executor import Executor
    from .collections import Corpus, QuerySet

logger = logging.getLogger(__name__)


@dataclass
class Candidates:
    """Ranked candidates per query row: ``doc_idx[i]`` (-1 padded) with ``scores[i]``, best first."""

    doc_idx: np.ndarray  # (Q, k) int32
    scores: np.ndarray  # (Q, k) float32
    folder: Optional[Path] = None  # where it was opened from

    def __len__(self) -> int:
        return len(self.doc_idx)

    def ranked(self, row: int) -> np.ndarray:
        r = np.asarray(self.doc_idx[row])
        return r[r >= 0].astype(np.int64)

    def ranked_scores(self, row: int) -> np.ndarray:
        r = np.asarray(self.doc_idx[row])
        return np.asarray(self.scores[row])[r >= 0]

    def to_run(self, docs: TextStore, rows: np.ndarray, qids: list[str]) -> dict[str, dict[str, float]]:
        """``{qid: {doc_id: score}}`` of the given rows (``qids[j]`` names ``rows[j]``)."""
        out = {}
        for q, r in zip(qids, rows):
            d = self.ranked(int(r))
            out[q] = dict(zip(docs.ids_of(d), self.ranked_scores(int(r)).tolist()))
        return out

    def save(self, folder: Path) -> None:
        np.save(folder / "doc_idx.npy", np.asarray(self.doc_idx, dtype=np.int32))
        np.save(folder / "scores.npy", np.asarray(self.scores, dtype=np.float32))

    @classmethod
    def load(cls, folder: Path) -> "Candidates":
        return cls(np.load(folder / "doc_idx.npy", mmap_mode="r"), np.load(folder / "scores.npy", mmap_mode="r"), Path(folder))

    @staticmethod
    def merge(parts: list[Path], folder: Path, k: int) -> None:
        """Concatenate query-shard parts (``<part>.doc_idx.npy``/``.scores.npy``, in order) into the stage."""
        n = sum(len(np.load(f"{p}.doc_idx.npy", mmap_mode="r")) for p in parts)
        idx = np.lib.format.open_memmap(folder / "doc_idx.npy", mode="w+", dtype=np.int32, shape=(n, k))
        sc = np.lib.format.open_memmap(folder / "scores.npy", mode="w+", dtype=np.float32, shape=(n, k))
        pos = 0
        for p in parts:
            a, b = np.load(f"{p}.doc_idx.npy"), np.load(f"{p}.scores.npy")
            idx[pos : pos + len(a)] = a
            sc[pos : pos + len(a)] = b
            pos += len(a)
            Path(f"{p}.doc_idx.npy").unlink()
            Path(f"{p}.scores.npy").unlink()
        idx.flush()
        sc.flush()


# ---------------------------------------------------------------------------------------------
# Dense (FAISS over bi-encoder embeddings)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncoderSpec:
    """What determines a bi-encoder's embeddings."""

    model: str
    pooling: str = "mean"
    similarity: str = "cos"
    max_doc_length: int = 256
    max_query_length: int = 32


def _spec_key(spec: EncoderSpec, tok) -> dict:

    return {
        "model": resolve_model(spec.model) if spec.model != "minilm" else "minilm",
        "tokenizer": tokenizer_key(tok),
        "pooling": spec.pooling,
        "similarity": spec.similarity,
    }


@dataclass(frozen=True)
class EmbedShard:
    spec: EncoderSpec
    tokens: str  # TokenStore folder
    start: int
    stop: int
    batch_tokens: int
    out: str
    threads: int = 1
    device: str = "auto"


@pinned_threads
def embed_shard(job: EmbedShard) -> int:
    """Embeddings (float16) of sequences ``[start, stop)`` of a token store, on the task's device."""
    import torch


    device = resolve_device(job.device)
    tok = load_tokenizer(job.spec.model)
    model = BiEncoder(load_encoder(job.spec.model), job.spec.pooling, job.spec.similarity, 1.0).to(device).eval()
    store = TokenStore.load(Path(job.tokens))
    special = SpecialTokens.of(tok)
    out = np.lib.format.open_memmap(f"{job.out}.npy", mode="w+", dtype=np.float16, shape=(job.stop - job.start, model.hidden_size))
    step = 2048  # a progress line per step at most; length-sorted chunks within it
    progress = Progress(f"encoding [{job.start:,}, {job.stop:,}) with {job.spec.model}", job.stop - job.start, "sequences")
    with torch.inference_mode(), autocast(device):
        for a in range(job.start, job.stop, step):
            b = min(a + step, job.stop)
            out[a - job.start : b - job.start] = model.encode([store.get(i) for i in range(a, b)], special, job.batch_tokens,
                                                              device).cpu().numpy()
            progress.update(b - a)
    out.flush()
    return job.stop - job.start


def _embed(root: Path, kind: str, key: dict, tokens: TokenStore, spec: EncoderSpec, executor: "Executor", gpus: float,
           cpus: int, shard: int, batch_tokens: int) -> np.ndarray:
    def build(tmp: Path) -> None:
        jobs = [EmbedShard(spec, str(tokens.folder), a, b, batch_tokens, str(tmp / f"part-{i:05d}"), cpus)
                for i, (a, b) in enumerate(shard_ranges(len(tokens), shard))]
        executor.map(embed_shard, jobs, cpus=cpus, gpus=gpus, label=f"{kind} ({len(jobs)} shards)")
        parts = [np.load(f"{j.out}.npy", mmap_mode="r") for j in jobs]
        h = parts[0].shape[1] if parts and parts[0].ndim == 2 else 0
        emb = np.lib.format.open_memmap(tmp / "emb.npy", mode="w+", dtype=np.float16, shape=(len(tokens), h))
        for j, p in zip(jobs, parts):
            emb[j.start : j.stop] = p
        emb.flush()
        del emb, parts
        for j in jobs:
            Path(f"{j.out}.npy").unlink()

    return np.load(stage(root, kind, key, build) / "emb.npy", mmap_mode="r")


def doc_embeddings(root: Path, corpus: "Corpus", spec: EncoderSpec, executor: Optional["Executor"] = None, gpus: float = 0,
                   cpus: int = 1, shard_docs: int = 500_000, batch_tokens: int = 16384) -> np.ndarray:
    """(N, H) float16 embeddings of every document (memory-mapped, cached; GPU tasks over document ranges)."""
    executor = executor or LOCAL
    tok = load_tokenizer(spec.model)
    tokens = doc_tokens(root, corpus, spec.model, tok, spec.max_doc_length, executor, shard_docs)
    key = {"corpus": corpus.key, **_spec_key(spec, tok), "max_length": spec.max_doc_length}
    return _embed(root, "doc_embeddings", key, tokens, spec, executor, gpus, cpus, shard_docs, batch_tokens)


def query_embeddings(root: Path, queries: "QuerySet", spec: EncoderSpec, executor: Optional["Executor"] = None, gpus: float = 0,
                     cpus: int = 1, shard_queries: int = 500_000, batch_tokens: int = 16384) -> np.ndarray:
    """(Q, H) float16 embeddings of a ``QuerySet`` (cached)."""
    executor = executor or LOCAL
    tok = load_tokenizer(spec.model)
    tokens = query_tokens(root, queries, spec.model, tok, spec.max_query_length, executor, shard_queries)
    key = {"queries": queries.key, **_spec_key(spec, tok), "max_length": spec.max_query_length}
    return _embed(root, "query_embeddings", key, tokens, spec, executor, gpus, cpus, shard_queries, batch_tokens)


def flat_ip_index(dim: int, fp16: bool = False):
    """An exact inner-product FAISS index (on the GPU when faiss-gpu and a GPU are present); add float32 blocks to it.

    ``fp16`` stores the vectors as float16 (``IndexScalarQuantizer`` with ``QT_fp16``; on the GPU a flat
    index with ``useFloat16``): half the memory, scores exact up to float16 rounding of the vectors.
    """
    import faiss

    gpu = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    if gpu:  # pragma: no cover (GPU only)
        config = faiss.GpuIndexFlatConfig()
        config.useFloat16 = fp16
        res = faiss.StandardGpuResources()
        index = faiss.GpuIndexFlatIP(res, dim, config)
        index.referenced_objects = [res]  # the resources live as long as the index
        return index
    if fp16:
        return faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    return faiss.IndexFlatIP(dim)


def index_search(index, q_emb: np.ndarray, k: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of ``index`` for each query; indices shifted by ``offset`` (the first document's index of a shard)."""
    k = min(k, index.ntotal)
    scores, idx = index.search(np.ascontiguousarray(q_emb, dtype=np.float32), k)
    idx = np.where(idx >= 0, idx + offset, -1)
    return idx.astype(np.int32), scores.astype(np.float32)


def faiss_search(doc_emb: np.ndarray, q_emb: np.ndarray, k: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k with FAISS. ``doc_emb`` may be a memory map: it is added to the index in
    blocks, as float32."""
    index = flat_ip_index(doc_emb.shape[1])
    step = 1 << 18
    for start in range(0, doc_emb.shape[0], step):
        index.add(np.ascontiguousarray(doc_emb[start : start + step], dtype=np.float32))
    return index_search(index, q_emb, k, offset)


@dataclass(frozen=True)
class DenseShard:
    docs: str  # doc embeddings .npy
    queries: str  # query embeddings .npy
    start: int
    stop: int
    k: int
    out: str
    threads: int = 1


def dense_shard(job: DenseShard) -> int:
    """Top-k of every query among documents ``[start, stop)``."""
    import faiss

    faiss.omp_set_num_threads(max(1, job.threads))
    docs = np.load(job.docs, mmap_mode="r")[job.start : job.stop]
    idx, sc = faiss_search(docs, np.load(job.queries, mmap_mode="r"), job.k, offset=job.start)
    np.save(f"{job.out}.doc_idx.npy", idx)
    np.save(f"{job.out}.scores.npy", sc)
    return job.stop - job.start


def merge_topk(parts: list[Path], folder: Path, n_queries: int, k: int, block: int = 65536) -> None:
    """Merge per-document-shard top-k lists into one top-k per query (by score, then document index)."""
    idx_out = np.lib.format.open_memmap(folder / "doc_idx.npy", mode="w+", dtype=np.int32, shape=(n_queries, k))
    sc_out = np.lib.format.open_memmap(folder / "scores.npy", mode="w+", dtype=np.float32, shape=(n_queries, k))
    idx_parts = [np.load(f"{p}.doc_idx.npy", mmap_mode="r") for p in parts]
    sc_parts = [np.load(f"{p}.scores.npy", mmap_mode="r") for p in parts]
    for a in range(0, n_queries, block):
        b = min(a + block, n_queries)
        idx = np.concatenate([np.asarray(x[a:b]) for x in idx_parts], axis=1).astype(np.int64)
        sc = np.concatenate([np.asarray(x[a:b]) for x in sc_parts], axis=1).astype(np.float32)
        sc = np.where(idx >= 0, sc, -np.inf)
        # best first: score descending, ties by document index ascending; padding (-1) last
        order = np.lexsort((np.where(idx >= 0, idx, np.iinfo(np.int64).max), -sc), axis=1)[:, :k]
        top_i = np.take_along_axis(idx, order, axis=1)
        top_s = np.take_along_axis(sc, order, axis=1)
        width = top_i.shape[1]
        idx_out[a:b, :width] = np.where(np.isfinite(top_s), top_i, -1)
        sc_out[a:b, :width] = np.where(np.isfinite(top_s), top_s, 0.0)
        if width < k:
            idx_out[a:b, width:] = -1
            sc_out[a:b, width:] = 0.0
    idx_out.flush()
    sc_out.flush()
    del idx_parts, sc_parts
    for p in parts:
        Path(f"{p}.doc_idx.npy").unlink()
        Path(f"{p}.scores.npy").unlink()


def dense_candidates(root: Path, corpus: "Corpus", queries: "QuerySet", k: int, spec: EncoderSpec,
                     executor: Optional["Executor"] = None, gpus: float = 0, cpus: int = 1, shard_docs: int = 500_000,
                     shard_queries: int = 500_000) -> Candidates:
    """Dense top-k of every query of ``queries`` (cached; embedding and search sharded by document range)."""
    executor = executor or LOCAL
    tok = load_tokenizer(spec.model)
    k = min(k, corpus.count)
    key = {"corpus": corpus.key, "queries": queries.key, "n": len(queries), "k": k, **_spec_key(spec, tok),
           "max_doc_length": spec.max_doc_length, "max_query_length": spec.max_query_length}

    def build(tmp: Path) -> None:
        emb = doc_embeddings(root, corpus, spec, executor, gpus, cpus, shard_docs)
        q = query_embeddings(root, queries, spec, executor, gpus, cpus, shard_queries)
        jobs = [DenseShard(str(emb.filename), str(q.filename), a, b, k, str(tmp / f"part-{i:05d}"), cpus)
                for i, (a, b) in enumerate(shard_ranges(corpus.count, shard_docs))]
        executor.map(dense_shard, jobs, cpus=cpus, gpus=gpus, label=f"dense search ({len(jobs)} shards)")
        merge_topk([Path(j.out) for j in jobs], tmp, len(queries), k)

    return Candidates.load(stage(root, "dense_candidates", key, build))
