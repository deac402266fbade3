"""Candidate lists: BM25 top-k (bm25s) and dense top-k (FAISS), computed once and cached.

Both are keyed by a content hash of what determines them: the corpus key, the query texts, the
depth and the retriever's settings (tokenizer vocabulary, model, pooling, max length). Document
embeddings are a stage of their own, shared by dense candidates and by a bi-encoder teacher that
uses the same model.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .cache import stage
from .collections import Corpus
from .tokens import doc_tokens, query_tokens, tokenizer_key

logger = logging.getLogger(__name__)

BM25_SETTINGS = {"stopwords": "en", "k1": 1.5, "b": 0.75, "method": "lucene"}


@dataclass
class Candidates:
    """Ranked candidates per query: ``doc_idx[i]`` (-1 padded) with ``scores[i]``, best first."""

    query_ids: list[str]
    doc_idx: np.ndarray  # (Q, k) int32
    scores: np.ndarray  # (Q, k) float32

    def row(self, qid: str) -> int:
        return self._rows[qid]

    def __post_init__(self) -> None:
        self._rows = {q: i for i, q in enumerate(self.query_ids)}

    def ranked(self, qid: str) -> np.ndarray:
        r = self.doc_idx[self._rows[qid]]
        return r[r >= 0]

    def to_run(self, corpus: Corpus, qids: list[str] | None = None) -> dict[str, dict[str, float]]:
        ids = corpus.doc_ids
        out = {}
        for q in qids if qids is not None else self.query_ids:
            i = self._rows[q]
            out[q] = {ids[d]: float(s) for d, s in zip(self.doc_idx[i], self.scores[i]) if d >= 0}
        return out

    def save(self, folder: Path) -> None:
        np.save(folder / "doc_idx.npy", self.doc_idx)
        np.save(folder / "scores.npy", self.scores)
        (folder / "query_ids.json").write_text(json.dumps(self.query_ids))

    @classmethod
    def load(cls, folder: Path) -> "Candidates":
        return cls(json.loads((folder / "query_ids.json").read_text()), np.load(folder / "doc_idx.npy"), np.load(folder / "scores.npy"))


def _texts_hash(qids: list[str], texts: list[str]) -> str:
    return hashlib.sha256(json.dumps([qids, texts]).encode()).hexdigest()[:20]


# ---------------------------------------------------------------------------------------------
# BM25 (bm25s)
# ---------------------------------------------------------------------------------------------


class BM25Index:
    """A bm25s index over a corpus, loaded from (or built into) the cache."""

    def __init__(self, root: Path, corpus: Corpus) -> None:
        import bm25s

        key = {"corpus": corpus.key, **BM25_SETTINGS, "bm25s": bm25s.__version__}

        def build(tmp: Path) -> None:
            texts = [t for _, t in corpus.iter_docs()]
            tokens = bm25s.tokenize(texts, stopwords=BM25_SETTINGS["stopwords"], show_progress=False)
            r = bm25s.BM25(k1=BM25_SETTINGS["k1"], b=BM25_SETTINGS["b"], method=BM25_SETTINGS["method"])
            r.index(tokens, show_progress=False)
            r.save(str(tmp / "index"), show_progress=False)

        self.folder = stage(root, "bm25_index", key, build)
        self.retriever = bm25s.BM25.load(str(self.folder / "index"), show_progress=False, verbosity=0)
        self.corpus = corpus

    def _tok(self, texts: list[str], ids: bool):
        import bm25s

        return bm25s.tokenize(texts, stopwords=BM25_SETTINGS["stopwords"], show_progress=False, return_ids=ids)

    def retrieve(self, texts: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k document indices and BM25 scores (Q, k) for each query text."""
        k = min(k, self.corpus.count)
        q_tokens = self._tok(texts, ids=False)
        idx = np.full((len(texts), k), -1, dtype=np.int32)
        sc = np.zeros((len(texts), k), dtype=np.float32)
        nonempty = [i for i, t in enumerate(q_tokens) if t]
        if nonempty:
            res, scores = self.retriever.retrieve([q_tokens[i] for i in nonempty], k=k, show_progress=False, n_threads=1)
            idx[nonempty] = res
            sc[nonempty] = scores
        return idx, sc

    def pair_scores(self, text: str, doc_idx: np.ndarray) -> np.ndarray:
        """BM25 scores of one query against the given documents."""
        tokens = self._tok([text], ids=False)[0]
        if not tokens:
            return np.zeros(len(doc_idx), dtype=np.float32)
        return self.retriever.get_scores(tokens)[doc_idx].astype(np.float32)


def bm25_candidates(root: Path, corpus: Corpus, qids: list[str], texts: list[str], k: int) -> Candidates:
    """BM25 top-k for the queries (cached)."""
    import bm25s

    key = {"corpus": corpus.key, "queries": _texts_hash(qids, texts), "k": k, **BM25_SETTINGS, "bm25s": bm25s.__version__}

    def build(tmp: Path) -> None:
        idx, sc = BM25Index(root, corpus).retrieve(texts, k)
        Candidates(qids, idx, sc).save(tmp)

    return Candidates.load(stage(root, "bm25_candidates", key, build))


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


def _load_bi(spec: EncoderSpec, device: torch.device):
    from ..models import BiEncoder, load_encoder, load_tokenizer

    tok = load_tokenizer(spec.model)
    model = BiEncoder(load_encoder(spec.model), spec.pooling, spec.similarity, 1.0).to(device).eval()
    return tok, model


def _spec_key(spec: EncoderSpec, tok) -> dict:
    from ..models import resolve_model

    return {
        "model": resolve_model(spec.model) if spec.model != "minilm" else "minilm",
        "tokenizer": tokenizer_key(tok),
        "pooling": spec.pooling,
        "similarity": spec.similarity,
    }


def doc_embeddings(root: Path, corpus: Corpus, spec: EncoderSpec, device: torch.device, batch_tokens: int = 16384) -> np.ndarray:
    """(N, H) float16 embeddings of every document (memory-mapped, cached)."""
    from ..models import autocast, load_tokenizer
    from .batching import SpecialTokens

    tok = load_tokenizer(spec.model)
    key = {"corpus": corpus.key, **_spec_key(spec, tok), "max_length": spec.max_doc_length}

    def build(tmp: Path) -> None:
        _, model = _load_bi(spec, device)
        store = doc_tokens(root, corpus, tok, spec.max_doc_length)
        special = SpecialTokens.of(tok)
        out = np.lib.format.open_memmap(tmp / "emb.npy", mode="w+", dtype=np.float16, shape=(len(store), model.hidden_size))
        step = 8192
        with torch.inference_mode(), autocast(device):
            for start in range(0, len(store), step):
                seqs = [store.get(i) for i in range(start, min(start + step, len(store)))]
                out[start : start + len(seqs)] = model.encode(seqs, special, batch_tokens, device).cpu().numpy()
        out.flush()
        del out

    return np.load(stage(root, "doc_embeddings", key, build) / "emb.npy", mmap_mode="r")


def query_embeddings(root: Path, texts: list[str], spec: EncoderSpec, device: torch.device, batch_tokens: int = 16384) -> np.ndarray:
    """(Q, H) float32 embeddings of query texts (not cached: cheap)."""
    from ..models import autocast
    from .batching import SpecialTokens

    tok, model = _load_bi(spec, device)
    store = query_tokens(root, texts, tok, spec.max_query_length)
    with torch.inference_mode(), autocast(device):
        e = model.encode([store.get(i) for i in range(len(store))], SpecialTokens.of(tok), batch_tokens, device)
    return e.float().cpu().numpy()


def faiss_search(doc_emb: np.ndarray, q_emb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k with FAISS; on the GPU when faiss-gpu and a GPU are present."""
    import faiss

    d = doc_emb.shape[1]
    index = faiss.IndexFlatIP(d)
    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:  # pragma: no cover (GPU only)
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    step = 1 << 18
    for start in range(0, doc_emb.shape[0], step):
        index.add(np.ascontiguousarray(doc_emb[start : start + step], dtype=np.float32))
    k = min(k, doc_emb.shape[0])
    scores, idx = index.search(np.ascontiguousarray(q_emb, dtype=np.float32), k)
    return idx.astype(np.int32), scores.astype(np.float32)


def dense_candidates(
    root: Path, corpus: Corpus, qids: list[str], texts: list[str], k: int, spec: EncoderSpec, device: torch.device
) -> Candidates:
    """Dense top-k for the queries (cached)."""
    from ..models import load_tokenizer

    tok = load_tokenizer(spec.model)
    key = {"corpus": corpus.key, "queries": _texts_hash(qids, texts), "k": k, **_spec_key(spec, tok),
           "max_doc_length": spec.max_doc_length, "max_query_length": spec.max_query_length}

    def build(tmp: Path) -> None:
        emb = doc_embeddings(root, corpus, spec, device)
        q = query_embeddings(root, texts, spec, device)
        idx, sc = faiss_search(emb, q, k)
        Candidates(qids, idx, sc).save(tmp)

    return Candidates.load(stage(root, "dense_candidates", key, build))
