"""BM25 engines side by side on one synthetic collection: index time, top-k time per query, pair scoring.

Engines (each measured only if importable, so the script runs in any environment):

- ``tantivy`` (what ranksweep uses): Rust inverted index, block-max WAND top-k, searches release the GIL;
  pair scores through a zero-weight filter on the document index.
- ``bm25s`` (what ranksweep used before): a sparse matrix of precomputed scores; every query fills a
  dense score array over the whole corpus and selects its top-k from it.
- ``pisa`` (``pyterrier-pisa``, what arXiv 2505.21058 used): block-max WAND, threads in C++; no API
  for scoring given (query, document) pairs. It needs PyTerrier and pandas, so it is usually run from
  an environment of its own: ``/path/to/pisa-venv/bin/python benchmarks/bm25_engines.py --engines pisa``.

All three use the same analysis where they can: the pattern ``(?u)\\b\\w\\w+\\b``, lowercasing and
Lucene's English stopwords (PISA: its own tokenizer, no stemming, Lucene stopwords).

Usage::

    python benchmarks/bm25_engines.py --docs 1000000 --queries 2000 --k 100
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _synthetic():
    """``core/data/synthetic.py`` loaded on its own (it needs only numpy), so no torch is imported."""
    spec = importlib.util.spec_from_file_location("synthetic", HERE.parent / "core" / "data" / "synthetic.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def read(folder: Path, n_queries: int) -> tuple[list[str], list[str]]:
    docs = [(lambda d: f"{d.get('title', '')} {d['text']}".strip())(json.loads(x)) for x in (folder / "corpus.jsonl").open()]
    queries = [json.loads(x)["text"] for x in (folder / "queries.jsonl").open()][:n_queries]
    return docs, queries


def _threads(fn, n: int, threads: int) -> None:
    if threads <= 1:
        for i in range(n):
            fn(i)
        return
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(fn, range(n), chunksize=max(1, n // (threads * 8))))


def bench_tantivy(docs, queries, k, threads, work: Path) -> dict:
    import tantivy

    ana = (tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.regex(r"(?u)\b\w\w+\b"))
           .filter(tantivy.Filter.lowercase()).filter(tantivy.Filter.stopword("english")).build())
    sb = tantivy.SchemaBuilder()
    sb.add_text_field("body", stored=False, tokenizer_name="bm25", index_option="freq")
    sb.add_unsigned_field("idx", stored=False, indexed=True, fast=True)
    schema = sb.build()
    path = work / "tantivy"
    path.mkdir()
    index = tantivy.Index(schema, path=str(path))
    index.register_tokenizer("bm25", ana)
    t0 = time.perf_counter()
    w = index.writer(heap_size=1 << 30, num_threads=threads)
    for i, text in enumerate(docs):
        d = tantivy.Document()
        d.add_text("body", text)
        d.add_unsigned("idx", i)
        w.add_document(d)
    w.commit()
    w.wait_merging_threads()
    index_s = time.perf_counter() - t0
    index.reload()
    s = index.searcher()

    def q(text):
        toks = ana.analyze(text)
        return tantivy.Query.boolean_query([(tantivy.Occur.Should, tantivy.Query.term_query(schema, "body", t, index_option="freq"))
                                            for t in toks]) if toks else None

    def search(i):
        qq = q(queries[i])
        if qq is not None:
            hits = s.search(qq, k, count=False).hits
            s.fast_field_values("idx", [a for _, a in hits])

    out = {"engine": "tantivy", "index_s": index_s}
    for t in sorted({1, threads}):
        t0 = time.perf_counter()
        _threads(search, len(queries), t)
        out[f"search_ms_{t}t"] = 1000 * (time.perf_counter() - t0) / len(queries)
    rng = np.random.default_rng(0)
    pools = [np.unique(rng.integers(0, len(docs), 100)) for _ in queries]

    def pairs(i):
        qq = q(queries[i])
        if qq is not None:
            only = tantivy.Query.const_score_query(tantivy.Query.term_set_query(schema, "idx", pools[i].tolist()), 0.0)
            s.search(tantivy.Query.boolean_query([(tantivy.Occur.Must, only), (tantivy.Occur.Should, qq)]), len(pools[i]), count=False)

    t0 = time.perf_counter()
    _threads(pairs, len(queries), 1)
    out["pairs_ms_per_100"] = 1000 * (time.perf_counter() - t0) / len(queries)
    return out


def bench_bm25s(docs, queries, k, threads, work: Path) -> dict:
    import bm25s

    t0 = time.perf_counter()
    tok = bm25s.tokenize(docs, stopwords="en", show_progress=False)
    r = bm25s.BM25(k1=1.5, b=0.75, method="lucene")
    r.index(tok, show_progress=False)
    out = {"engine": "bm25s", "index_s": time.perf_counter() - t0}
    qt = bm25s.tokenize(queries, stopwords="en", show_progress=False, return_ids=False)
    qt = [x for x in qt if x]
    for t in sorted({1, threads}):
        t0 = time.perf_counter()
        r.retrieve(qt, k=k, show_progress=False, n_threads=t)
        out[f"search_ms_{t}t"] = 1000 * (time.perf_counter() - t0) / len(qt)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for x in qt:  # bm25s scores a pair only by scoring the whole corpus for the query
        r.get_scores(x)[np.unique(rng.integers(0, len(docs), 100))]
    out["pairs_ms_per_100"] = 1000 * (time.perf_counter() - t0) / len(qt)
    return out


def bench_pisa(docs, queries, k, threads, work: Path) -> dict:
    import pandas as pd
    from pyterrier_pisa import PisaIndex

    idx = PisaIndex(str(work / "pisa"), stemmer="none", stops="lucene", threads=threads)
    t0 = time.perf_counter()
    idx.index({"docno": str(i), "text": t} for i, t in enumerate(docs))
    out = {"engine": "pisa", "index_s": time.perf_counter() - t0}
    df = pd.DataFrame({"qid": [str(i) for i in range(len(queries))], "query": queries})
    for t in sorted({1, threads}):
        r = idx.bm25(k1=1.2, b=0.75, num_results=k, threads=t)
        r(df[:5])
        t0 = time.perf_counter()
        r(df)
        out[f"search_ms_{t}t"] = 1000 * (time.perf_counter() - t0) / len(queries)
    out["pairs_ms_per_100"] = None  # no API to score given pairs
    return out


ENGINES = {"tantivy": bench_tantivy, "bm25s": bench_bm25s, "pisa": bench_pisa}
MODULES = {"tantivy": "tantivy", "bm25s": "bm25s", "pisa": "pyterrier_pisa"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--engines", nargs="+", default=list(ENGINES), choices=list(ENGINES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=None, help="where the collection is written and kept (default: a temporary folder)")
    a = ap.parse_args(argv)
    work = Path(a.work or tempfile.mkdtemp(prefix="bm25-engines-"))
    col = work / f"synthetic-{a.docs}-s{a.seed}"
    if not (col / "corpus.jsonl").exists():
        _synthetic().write_synthetic_beir(col, a.docs, n_queries=max(a.queries, a.docs // 16), seed=a.seed)
    docs, queries = read(col, a.queries)
    print(f"{len(docs):,} passages, {len(queries):,} queries, top-{a.k}, {a.threads} threads")
    print(f"{'engine':<8} {'index s':>8} {'ms/query 1t':>12} {f'ms/query {a.threads}t':>12} {'pairs ms/100':>13}")
    for name in a.engines:
        if importlib.util.find_spec(MODULES[name]) is None:
            print(f"{name:<8} (not installed)")
            continue
        scratch = Path(tempfile.mkdtemp(dir=work))
        try:
            r = ENGINES[name](docs, queries, a.k, a.threads, scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        pairs = "n/a" if r["pairs_ms_per_100"] is None else f"{r['pairs_ms_per_100']:.2f}"
        print(f"{name:<8} {r['index_s']:>8.1f} {r['search_ms_1t']:>12.3f} {r.get(f'search_ms_{a.threads}t', r['search_ms_1t']):>12.3f} "
              f"{pairs:>13}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
