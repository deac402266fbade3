"""Importing the field's files at real size: time and peak memory of streaming ≥ 20M pairs into an imported table.

A synthetic corpus with MS MARCO's 8.8M passage ids and 500k training queries, and files of the
real formats at ``--pairs`` (query, passage) pairs:

- ``pickle``: the cross-encoder score pickle ``{qid: {pid: score}}`` with int keys (the public
  file holds ~160M pairs);
- ``sbert``: sentence-transformers' hard negatives, ``{"qid", "pos", "neg": {system: [pid]}}`` lines, gzipped.

Each import runs in a fresh process (the executor in-process, as one node would run it), which
reports its wall time and peak RSS (``ru_maxrss``). The table's lookups are then checked against
the file on a sample. The extrapolation to 160M pairs is linear in time; memory is bounded by the
chunk and row-block sizes, not the file (compare the peak at two sizes to see it):

    python benchmarks/imports.py --pairs 20000000             # both formats, ~10 minutes on 2 cores
    python benchmarks/imports.py --pairs 2000000 --formats pickle
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

N_DOCS = 8_841_823
N_QUERIES = 502_939
SYSTEMS = ["bm25", "msmarco-distilbert-base-tas-b", "msmarco-MiniLM-L-6-v3", "bert-base-uncased-mnrl", "distilbert-margin_mse-cls-dot-v2"]


def write_collection(folder: Path) -> None:
    """Stores of 8.8M passage ids (one-character texts: the importer reads ids only) and 500k query ids."""
    from ranksweep.core.data.store import TextStore

    TextStore.write(folder / "corpus", ((str(i), "p") for i in range(N_DOCS)))
    TextStore.write(folder / "queries", ((str(i), "q") for i in range(N_QUERIES)))
    TextStore.write(folder / "known", ((str(i), "q") for i in range(N_QUERIES)))


def _pairs_of(pairs: int, seed: int = 0):
    """Per query: a positive and negatives, ``pairs`` in all, over every training query."""
    rng = np.random.default_rng(seed)
    per_query = max(2, pairs // N_QUERIES)
    left = pairs
    for q in range(N_QUERIES):
        n = min(per_query + (1 if q < pairs % N_QUERIES else 0), left)
        if n <= 0:
            return
        left -= n
        docs = rng.choice(N_DOCS, size=n, replace=False)
        yield q, docs, rng.normal(0, 3, size=n).astype(np.float32)


def write_pickle(path: Path, pairs: int) -> None:
    with gzip.open(path, "wb", compresslevel=1) as f:
        pickle.dump({q: dict(zip(d.tolist(), s.tolist())) for q, d, s in _pairs_of(pairs)}, f, protocol=4)


def write_sbert(path: Path, pairs: int) -> None:
    with gzip.open(path, "wt", compresslevel=1) as f:
        for q, d, _ in _pairs_of(pairs):
            d = d.tolist()
            per = max(1, (len(d) - 1) // len(SYSTEMS))
            neg = {s: d[1 + i * per:1 + (i + 1) * per] for i, s in enumerate(SYSTEMS)}
            f.write(json.dumps({"qid": q, "pos": d[:1], "neg": neg}) + "\n")


def child(folder: Path, path: Path, fmt: str) -> None:
    """Import ``path`` into a table (this process's peak RSS is the measurement)."""
    from ranksweep.core.data.collections import QuerySet
    from ranksweep.core.data.imports import import_table
    from ranksweep.core.data.store import TextStore

    class _Corpus:  # what import_table reads of a corpus: its key and store
        key = "synthetic-msmarco"

        def store(self, root, executor=None):
            return TextStore.load(folder / "corpus")

    queries = QuerySet("synthetic-train", TextStore.load(folder / "queries"))
    known = QuerySet("synthetic-all", TextStore.load(folder / "known"))
    t0 = time.perf_counter()
    table = import_table(folder / "cache", str(path), fmt, f"{path.name}-{path.stat().st_size}", _Corpus(), queries, known)
    wall = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB
    print(json.dumps({"format": fmt, "pairs": table.info["pairs"], "records": table.info["records"], "seconds": round(wall, 1),
                      "peak_rss_mib": round(rss), "table": str(table.folder)}))


def check(folder: Path, table_folder: str, fmt: str, pairs: int) -> int:
    """Lookups of a sample of the generator's pairs equal the file's scores (sbert: listed, no score)."""
    from ranksweep.core.data.imports import ImportedTable
    from ranksweep.core.data.store import Ragged

    table = ImportedTable.load(Path(table_folder))
    rows, want = [], []
    for q, d, s in _pairs_of(pairs):
        if q % 997 == 0:
            rows.append(np.sort(d))
            want.append(s[np.argsort(d)])
        if len(rows) >= 200:
            break
    pools = Ragged.from_rows([rows[i] if i < len(rows) else np.zeros(0, np.int64) for i in range(len(rows))])
    # query rows are 0, 997, 1994, ...: shift the sample to those rows
    full = Ragged.from_rows([rows[i // 997] if i % 997 == 0 and i // 997 < len(rows) else np.zeros(0, np.int64)
                             for i in range(997 * len(rows))])
    got = table.lookup(full)
    if fmt == "pickle":
        assert np.allclose(got, np.concatenate(want), atol=1e-6), "pickle scores differ from the file"
    else:
        assert np.isnan(got).all() and table.pairs.lengths()[:997 * len(rows):997].sum() == len(pools.values)
    return len(pools.values)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=20_000_000)
    ap.add_argument("--formats", nargs="+", default=["pickle", "sbert"], choices=["pickle", "sbert"])
    ap.add_argument("--dir", default=None, help="work folder (default: a temporary one, removed)")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(Path(a.child[0]), Path(a.child[1]), a.child[2])
        return
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        write_collection(folder)
        print(f"synthetic collection: {N_DOCS:,} passages, {N_QUERIES:,} queries ({time.perf_counter() - t0:.0f} s)", flush=True)
        for fmt in a.formats:
            path = folder / f"{fmt}.gz"
            t0 = time.perf_counter()
            (write_pickle if fmt == "pickle" else write_sbert)(path, a.pairs)
            print(f"{fmt}: wrote {a.pairs:,} pairs, {path.stat().st_size / 2**20:,.0f} MiB gzipped ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
            out = subprocess.run([sys.executable, __file__, "--child", str(folder), str(path), fmt], capture_output=True, text=True,
                                 env={**os.environ, "PYTHONUNBUFFERED": "1"})
            if out.returncode:
                sys.exit(out.stderr)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            n = check(folder, r.pop("table"), fmt, a.pairs)
            per_m = r["seconds"] / (r["records"] / 1e6)
            print(json.dumps({**r, "checked_pairs": n, "seconds_per_million_records": round(per_m, 2),
                              "extrapolated_160M_minutes": round(per_m * 160 / 60, 1)}), flush=True)
            path.unlink()


if __name__ == "__main__":
    main()
