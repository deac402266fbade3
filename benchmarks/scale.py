"""How shared preparation and trial start-up scale with the corpus, on synthetic BEIR collections.

For each corpus size N (queries Q = N / 16, as MS MARCO's ~500k judged training queries to 8.8M
passages), the script writes a deterministic synthetic collection (``write_synthetic_beir``,
seeded) and then, for each worker count, starts a fresh local Ray cluster (a head with 0 CPUs
and that many 1-CPU worker nodes, ``ray.cluster_utils.Cluster``) and prepares the data of a
sweep over the ``random`` and ``bm25`` samplers with a BM25 teacher, cold (an empty cache),
through the same ``RayExecutor`` a sweep uses. It prints:

- the time of every stage (from each stage's ``build.json``), the assembly of pools and
  reference metrics, and the total;
- the peak RSS (``VmHWM``) of the driver and of the largest worker process;
- the warm start-up of a trial (a fresh process: imports, ``Trial(cfg, prepared)``, the first
  optimizer step), its peak RSS, and how much of its memory is private and how much is pages of
  mapped files (torch's libraries and the memory-mapped stores, shared with every process of the
  node through the page cache).

It ends with each stage's fitted exponent (time ∝ N^e, least squares on log-log over the sizes,
one worker; in brackets the slope between the two largest sizes) and an extrapolation to MS MARCO
(8.8M passages, 550k queries at N/16) on one 16-core node: the one-worker time at the largest
size carried to 8.8M with the steeper of the two exponents, split by Amdahl's law into the part
that the two-worker run sped up and the part it did not, the former divided by 16.

Usage::

    python benchmarks/scale.py --sizes 20000 100000 400000 1000000
    python benchmarks/scale.py --sizes 5000 20000 --workers 1 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ranksweep.sweeps.prepare import peak_rss_mb

HERE = Path(__file__).resolve().parent
#: stages of a prepare with a BM25 teacher, in pipeline order; "assembly" is the rest of "prepared"
STAGES = ["corpus", "queries", "bm25_index", "bm25_candidates", "teacher_raw", "doc_tokens", "query_tokens", "assembly"]
NON_NEURAL = STAGES  # with a BM25 teacher nothing here runs a network
MSMARCO_DOCS, CORES = 8_800_000, 16


def tiny_student(folder: Path) -> str:
    """A 2-layer random BERT with the shipped MiniLM tokenizer (start-up does not depend on the weights)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from ranksweep.core.models import resolve_model

    if not (folder / "config.json").exists():
        import torch

        tok = AutoTokenizer.from_pretrained(resolve_model("minilm"))
        torch.manual_seed(0)
        BertModel(BertConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=128, max_position_embeddings=512)).save_pretrained(folder)
        tok.save_pretrained(folder)
    return str(folder)


def trial_config(collection: Path, cache: Path, student: str) -> dict:
    return {
        "data": {"train": f"local:{collection}:train", "eval": [f"local:{collection}:test"], "dev_fraction": 0.01,
                 "eval_max_queries": 100, "max_doc_length": 128, "cache_dir": str(cache)},
        "candidates": {"dense_depth": 0, "bm25_depth": 100, "random_pool": 100},
        "teacher": {"kind": "bm25"},
        "sampler": "bm25",
        "group_size": 8,
        "loss": "kl",
        "student": {"model": student, "num_layers": None},
        "optim": {"batch_size": 8},
        "budget_docs": 64,
        "eval_every_docs": 64,
        "eval": {"dev_depth": 20, "depth": 100, "probe_queries": 8},
    }


def stage_seconds(cache: Path) -> dict[str, float]:
    """Seconds per stage kind, from ``build.json``; the ``prepared`` build minus the stages built inside it."""
    out: dict[str, float] = {}
    for f in cache.glob("*/*/build.json"):
        b = json.loads(f.read_text())
        out[b["kind"]] = out.get(b["kind"], 0.0) + b["seconds"]
    total = out.pop("prepared", 0.0)
    out["assembly"] = max(0.0, total - sum(out.values()))
    out["total"] = total
    return out


def cold_prepare(cfg_dict: dict, workers: int, shard_docs: int, shard_queries: int) -> dict:
    import ray
    from ray.cluster_utils import Cluster

    from ranksweep.core import PrepareOptions, TrialConfig, prepare
    from ranksweep.sweeps.prepare import RayExecutor

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(workers):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {k: v for k, v in os.environ.items() if k in ("HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM")}})
    try:
        ex = RayExecutor()
        cfg = TrialConfig.from_dict(cfg_dict)
        t0 = time.perf_counter()
        p = prepare(cfg, samplers=["random", "bm25"], executor=ex,
                    options=PrepareOptions(cpus=1, shard_docs=shard_docs, shard_queries=shard_queries))
        wall = time.perf_counter() - t0
        nodes = {x["node_id"] for x in ex.placements}
        worker_rss = max((x["peak_rss_mb"] for x in ex.placements), default=0.0)
    finally:
        ray.shutdown()
        cluster.shutdown()
    return {"wall": wall, "folder": str(p.folder), "nodes_used": len(nodes), "worker_peak_rss_mb": worker_rss,
            "shards": len(ex.placements)}


START_CODE = r"""
import json, sys, time
t0 = time.perf_counter()
from ranksweep.core import Trial, TrialConfig
cfg = TrialConfig.from_dict(json.loads(sys.argv[1]))
t1 = time.perf_counter()
trial = Trial(cfg, sys.argv[2])
t2 = time.perf_counter()
trial.train_until(cfg.group_size * cfg.optim.batch_size)
t3 = time.perf_counter()
status = {x.split(":")[0]: int(x.split()[1]) / 1024 for x in open("/proc/self/status") if x.startswith(("VmHWM", "RssAnon", "RssFile"))}
# VmHWM: this process's peak; RssAnon: its private memory; RssFile: pages of mapped files (the memory-mapped stores
# among them), shared with every process of the node through the page cache
print(json.dumps({"imports": t1 - t0, "trial_init": t2 - t1, "first_step": t3 - t2, "start": t3 - t0, "peak_rss_mb": status["VmHWM"],
                  "private_mb": status["RssAnon"], "file_mb": status["RssFile"]}))
"""


def warm_start(cfg_dict: dict, folder: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", START_CODE, json.dumps({**cfg_dict, "num_threads": 1, "device": "cpu"}), folder],
                         capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def fit(sizes: list[int], times: list[float]) -> tuple[float, float]:
    """``(e, c)`` of ``time = c · N^e`` by least squares on log-log."""
    x, y = np.log(np.asarray(sizes, float)), np.log(np.maximum(np.asarray(times, float), 1e-3))
    e, logc = np.polyfit(x, y, 1)
    return float(e), float(np.exp(logc))

CRITICAL = ("corpus", "queries", "bm25_index", "bm25_candidates", "doc_tokens", "query_tokens", "assembly")


def summarize(rows: list[dict], sizes: list[int], one: int, many: int) -> tuple[dict, float, float]:
    """Print the per-stage exponents and the MS MARCO extrapolation; return them."""
    print(f"\nstage             exponent e (last step)   {one} worker @{sizes[-1]:,}   {many} vs {one} worker   8.8M docs on 16 cores")
    summary: dict[str, dict] = {}
    critical = everything = 0.0
    for stage in STAGES + ["total"]:
        t1 = [next(r for r in rows if r["n_docs"] == n and r["workers"] == one)["stages"].get(stage, 0.0) for n in sizes]
        tw = next(r for r in rows if r["n_docs"] == sizes[-1] and r["workers"] == many)["stages"].get(stage, 0.0)
        e, c = fit(sizes, t1) if len(sizes) > 1 else (float("nan"), 0.0)
        # extrapolate with the steeper of the fitted exponent and the slope between the two largest sizes
        tail = np.log(max(t1[-1], 1e-3) / max(t1[-2], 1e-3)) / np.log(sizes[-1] / sizes[-2]) if len(sizes) > 1 else e
        at_msmarco = t1[-1] * (MSMARCO_DOCS / sizes[-1]) ** max(e, tail)
        # Amdahl: the fraction p of the one-worker time that more workers divide
        speedup = t1[-1] / tw if tw > 0 else 1.0
        p = 0.0 if many == one else min(1.0, max(0.0, (1 - 1 / speedup) / (1 - one / many)))
        extrap = at_msmarco * ((1 - p) + p * one / CORES)
        summary[stage] = {"exponent": e, "tail_exponent": tail, "seconds_at_max": t1[-1], "speedup": speedup,
                          "parallel_fraction": p, "extrapolated_seconds": extrap}
        if stage in CRITICAL:
            critical += extrap
        if stage != "total":
            everything += extrap
        print(f"{stage:<17} {e:>10.2f} ({tail:>5.2f})   {t1[-1]:>14.1f} s   {speedup:>13.2f}x   {extrap / 60:>10.1f} min")
    print(f"\ncritical path (corpus, BM25 index and retrieval, tokens, pools) at MS MARCO on one 16-core node: {critical / 60:.1f} min")
    print(f"all of this preparation, the BM25 teacher's pair scores included: {everything / 60:.1f} min")
    starts = [(r["n_docs"], r["trial_start"]) for r in rows if "trial_start" in r]
    if starts:
        print("warm trial start (process start to first optimizer step): "
              + "; ".join(f"N={n:,}: {t['start']:.1f} s, peak RSS {t['peak_rss_mb']:.0f} MB"
                          + (f" ({t['private_mb']:.0f} private, {t['file_mb']:.0f} mapped files)" if "private_mb" in t else "")
                          for n, t in starts))
    return summary, critical, everything



def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000, 400_000, 1_000_000])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=None, help="folder for collections and caches (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the caches (collections are always kept in --work)")
    ap.add_argument("--json", default=None, help="also write every number as JSON here")
    ap.add_argument("--summary-from", default=None, help="print the summary of an earlier run's --json, run nothing")
    a = ap.parse_args(argv)
    if a.summary_from:
        rows = json.loads(Path(a.summary_from).read_text())["rows"]
        workers = sorted({r["workers"] for r in rows})
        summarize(rows, sorted({r["n_docs"] for r in rows}), workers[0], workers[-1])
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from ranksweep.core.data.synthetic import write_synthetic_beir

    work = Path(a.work or tempfile.mkdtemp(prefix="ranksweep-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["RANKSWEEP_CACHE"] = str(work / "fingerprints-cache")  # memos of local corpora, outside the timed caches
    student = tiny_student(work / "student")
    rows = []
    for n in sorted(a.sizes):
        col = work / f"synthetic-{n}-s{a.seed}"
        if not (col / "qrels" / "test.tsv").exists():
            t0 = time.perf_counter()
            write_synthetic_beir(col, n, seed=a.seed)
            print(f"# wrote {col.name} in {time.perf_counter() - t0:.1f} s", flush=True)
        for w in a.workers:
            cache = work / f"cache-{n}-w{w}"
            shutil.rmtree(cache, ignore_errors=True)
            cfg = trial_config(col, cache, student)
            shard_docs = max(1000, -(-n // (4 * max(a.workers))))
            shard_queries = max(100, -(-(n // 16) // (4 * max(a.workers))))
            prep = cold_prepare(cfg, w, shard_docs, shard_queries)
            row = {"n_docs": n, "n_queries": n // 16, "workers": w, **prep, "stages": stage_seconds(cache),
                   "driver_peak_rss_mb": peak_rss_mb()}
            if w == max(a.workers):
                row["trial_start"] = warm_start(cfg, prep["folder"])
            rows.append(row)
            st = row["stages"]
            print(f"N={n:>9,} workers={w}: " + "  ".join(f"{k} {st.get(k, 0):.1f}s" for k in STAGES + ["total"])
                  + f"  | peak RSS driver {row['driver_peak_rss_mb']:.0f} MB, worker {row['worker_peak_rss_mb']:.0f} MB"
                  + (f"  | trial start {row['trial_start']['start']:.1f} s ({row['trial_start']['trial_init']:.2f} s in Trial()), "
                     f"peak {row['trial_start']['peak_rss_mb']:.0f} MB: {row['trial_start']['private_mb']:.0f} private, "
                     f"{row['trial_start']['file_mb']:.0f} mapped files" if "trial_start" in row else ""), flush=True)
            if not a.keep:
                shutil.rmtree(cache, ignore_errors=True)

    summary, critical, everything = summarize(rows, sorted(a.sizes), min(a.workers), max(a.workers))
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "summary": summary, "critical_path_seconds": critical,
                                            "all_stages_seconds": everything}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
