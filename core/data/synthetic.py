"""Synthetic BEIR-format collections of any size, for scale tests and benchmarks.

Real collections of MS MARCO's size cannot be downloaded in a test, yet every stage of the data
path must be measured at such sizes. ``write_synthetic_beir`` writes a collection that behaves
like a passage corpus where it matters for cost: a Zipf–Mandelbrot vocabulary whose head is
the English stopwords, log-normal passage lengths around MS MARCO's mean of ~56 words, and
queries of 2–8 words drawn from one relevant passage (weighted towards its rarer words, as real
queries are), so that BM25 has real work to do and real answers to find. Everything is a
function of ``seed``: the same arguments write byte-identical files.

Layout (what ``local:<folder>:<split>`` reads): ``corpus.jsonl``, ``queries.jsonl``,
``qrels/train.tsv`` and ``qrels/test.tsv``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

#: the head of the vocabulary: frequent English function words (most of them stopwords)
HEAD = ("the of and to a in is for that on with as by are was it be this from or at an which its "
        "not but have has were can also their one they more these all other been such when than "
        "into most two only about used may some use each first between both many any during").split()
_CONSONANTS = "bcdfghjklmnprstvwz"
_VOWELS = "aeiou"
_SYLLABLES = [c + v for c in _CONSONANTS for v in _VOWELS]


def word(rank: int) -> str:
    """The ``rank``-th word of the synthetic vocabulary (0 = most frequent); distinct ranks give distinct words."""
    if rank < len(HEAD):
        return HEAD[rank]
    r = rank - len(HEAD)
    parts = []
    while True:
        parts.append(_SYLLABLES[r % len(_SYLLABLES)])
        r //= len(_SYLLABLES)
        if r == 0:
            break
        r -= 1  # bijective numeration: every rank has exactly one spelling
    return "".join(parts)


def _zipf_cdf(vocab: int, s: float = 1.07, q: float = 2.7) -> np.ndarray:
    p = 1.0 / (np.arange(vocab, dtype=np.float64) + q) ** s
    c = np.cumsum(p)
    return c / c[-1]


def write_synthetic_beir(
    folder: str | Path,
    n_docs: int,
    n_queries: Optional[int] = None,
    n_test: Optional[int] = None,
    seed: int = 0,
    vocab: int = 2_000_000,
    mean_words: float = 56.0,
) -> Path:
    """Write a synthetic BEIR collection of ``n_docs`` passages; return ``folder``.

    Args:
        n_docs: passages in ``corpus.jsonl``.
        n_queries: training queries (``qrels/train.tsv``); default ``n_docs // 16`` (MS MARCO's
            ratio of judged training queries to passages is about 1:17).
        n_test: held-out queries (``qrels/test.tsv``); default ``min(200, n_queries // 4)``.
        seed: everything written is a function of it.
        vocab: size of the Zipf–Mandelbrot vocabulary the words are drawn from.
        mean_words: mean passage length in words (log-normal, clipped to [5, 256]).
    """
    folder = Path(folder)
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    n_queries = max(2, n_docs // 16) if n_queries is None else n_queries
    n_test = min(200, max(1, n_queries // 4)) if n_test is None else n_test
    rng = np.random.default_rng(seed)
    cdf = _zipf_cdf(vocab)
    lengths = np.clip(np.round(rng.lognormal(np.log(mean_words) - 0.1, 0.45, n_docs)), 5, 256).astype(np.int64)
    offsets = np.zeros(n_docs + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = rng.permutation(n_docs)  # doc ids are not in index order: nothing may assume they are
    total = n_queries + n_test
    rel = rng.choice(n_docs, size=total, replace=total > n_docs)
    qlen = rng.integers(2, 9, size=total)
    wanted = set(rel.tolist())
    kept: dict[int, np.ndarray] = {}  # word ranks of the passages that queries are drawn from
    words: dict[int, str] = {}

    def spell(ranks: np.ndarray) -> list[str]:
        out = []
        for r in ranks.tolist():
            w = words.get(r)
            if w is None:
                w = words[r] = word(r)
            out.append(w)
        return out

    step = 1 << 16
    with (folder / "corpus.jsonl").open("w") as f:
        for start in range(0, n_docs, step):
            stop = min(start + step, n_docs)
            lo, hi = offsets[start], offsets[stop]
            ranks = np.searchsorted(cdf, rng.random(hi - lo), side="right")
            text = spell(ranks)
            for i in range(start, stop):
                a, b = offsets[i] - lo, offsets[i + 1] - lo
                if i in wanted:
                    kept[i] = ranks[a:b]
                f.write(json.dumps({"_id": str(ids[i]), "title": "", "text": " ".join(text[a:b])}) + "\n")

    # query words: drawn from the relevant passage, weighted towards rarer words (rank as a proxy for idf)
    with (folder / "queries.jsonl").open("w") as fq, (folder / "qrels" / "train.tsv").open("w") as ft, \
            (folder / "qrels" / "test.tsv").open("w") as fe:
        ft.write("query-id\tcorpus-id\tscore\n")
        fe.write("query-id\tcorpus-id\tscore\n")
        for j in range(total):
            d = int(rel[j])
            ranks = kept[d]
            w = np.log1p(ranks.astype(np.float64))
            pick = rng.choice(len(ranks), size=min(int(qlen[j]), len(ranks)), replace=False, p=w / w.sum())
            qid = f"q{j}"
            fq.write(json.dumps({"_id": qid, "text": " ".join(spell(ranks[np.sort(pick)]))}) + "\n")
            (ft if j < n_queries else fe).write(f"{qid}\t{ids[d]}\t1\n")
    return folder
