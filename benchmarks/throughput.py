"""Docs/s of the trial's own training step next to a plain HF-style loop, measured in one run.

The trial's step is ``Trainer.train_until`` (what ``Trial.train_until`` runs): its sampler call,
teacher lookup, length-sorted chunks padded to their own longest sequence, SDPA attention, bf16
autocast and fused AdamW on CUDA, the linear warmup schedule, and loss sums kept on the device.
The baseline is the loop most training scripts write: every sequence padded to ``--max-length``
(what a tokenizer call with ``padding="max_length"`` produces), one forward over the batch, the
same loss (``kl``), AdamW and autocast. Both train the same architecture from the same random
weights (throughput does not depend on the weights) on the same sampled groups.

The data is synthetic at MS MARCO's shape: query and passage token counts drawn from log-normal
fits (queries: median 8 tokens; passages: median 70, long tail cut at the maximum), a random
teacher score per (query, passage). On CUDA ``--compile`` also times both loops with the encoder
under ``torch.compile`` (dynamic shapes for the trial's variable-length chunks).

``--packing`` times the trial once per way a step's sequences reach the encoder (``student.packing``):
``chunked`` (length-sorted chunks), ``padded`` (one chunk padded to the step's longest), ``packed`` (one
unpadded row, varlen attention: flash-attn on CUDA when installed) and ``auto`` (what the trial would
choose). Each row also gives tokens/s (real tokens, padding not counted) and the achieved TFLOP/s with
its MFU against the device's dense bf16 peak (``--peak-tflops``, else known for A100/H100/H200): training
FLOPs per real token ~ 6 x non-embedding parameters + 12 x layers x hidden x the sequence's length
(Kaplan et al., 2020).

Usage::

    python benchmarks/throughput.py --compile --packing chunked padded packed   # bert-base, cross and bi, on a GPU
    python benchmarks/throughput.py --arch minilm --queries 8 --steps 4 --warmup 1 --packing chunked packed   # a CPU check
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.special import erfinv

from ranksweep.core.config import TrialConfig
from ranksweep.core.data import batching
from ranksweep.core.data.batching import SpecialTokens
from ranksweep.core.data.synthetic import write_synthetic_beir
from ranksweep.core.losses import kl
from ranksweep.core.models import STUDENTS, autocast, pool
from ranksweep.core.training import Trainer

ARCHS = {
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "bert-large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
    "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
}
SPECIAL = SpecialTokens(cls=101, sep=102, pad=0)


class Tokens:
    """Token sequences by row (what a prepared ``TokenStore`` gives the trainer)."""

    def __init__(self, lengths: np.ndarray, rng: np.random.Generator) -> None:
        self.seqs = [rng.integers(1000, 29000, size=int(n)).astype(np.int32) for n in lengths]
        self.lengths = np.asarray(lengths)

    def get(self, i: int) -> np.ndarray:
        return self.seqs[i]

    def __len__(self) -> int:
        return len(self.seqs)


class RandomTeacher:
    """A fixed teacher score per (query, passage): a hash of the pair, standard normal."""

    def lookup(self, rows, groups) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.uint64)[:, None]
        h = (rows * np.uint64(0x9E3779B97F4A7C15) ^ np.asarray(groups, dtype=np.uint64) * np.uint64(0xBF58476D1CE4E5B9)) >> np.uint64(11)
        u = (h.astype(np.float64) + 0.5) / float(1 << 53)
        return np.sqrt(2) * erfinv(2 * u - 1)


class UniformSampler:
    """Groups of ``g`` passages per query, uniformly at random (the random sampler's cost, without pools)."""

    fills = 0

    def __init__(self, n_docs: int) -> None:
        self.n_docs = n_docs

    def sample(self, rows: np.ndarray, g: int, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(0, self.n_docs, size=(len(rows), g))


class Synthetic:
    """The prepared data a ``Trainer`` reads: training rows and a teacher."""

    def __init__(self, n_queries: int) -> None:
        self.train_rows = np.arange(n_queries)
        self.teacher = RandomTeacher()
        self.pools = None


def lengths(n: int, rng: np.random.Generator, median: float, sigma: float, lo: int, hi: int) -> np.ndarray:
    return np.clip(np.round(rng.lognormal(np.log(median), sigma, n)), lo, hi).astype(int)


def student(kind: str, arch: str, device: torch.device, cfg: TrialConfig) -> torch.nn.Module:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, max_position_embeddings=512, **ARCHS[arch])
    config._attn_implementation = "sdpa"  # as load_encoder asks for it
    enc = BertModel(config, add_pooling_layer=False)
    return STUDENTS[kind].from_config(enc, cfg.student, 0).to(device).train()


def padded(seqs: list[np.ndarray], max_len: int, pair_with: list[np.ndarray] | None = None):
    """Input ids, token types and mask of ``[CLS] q [SEP] (d [SEP])`` padded to ``max_len``."""
    n = len(seqs)
    ids = torch.full((n, max_len), SPECIAL.pad, dtype=torch.long)
    tt = torch.zeros((n, max_len), dtype=torch.long)
    mask = torch.zeros((n, max_len), dtype=torch.long)
    for i, q in enumerate(seqs):
        row = [SPECIAL.cls, *q, SPECIAL.sep]
        if pair_with is not None:
            row += [*pair_with[i], SPECIAL.sep]
        row = np.asarray(row[:max_len], dtype=np.int64)
        ids[i, : len(row)] = torch.from_numpy(row)
        mask[i, : len(row)] = 1
        if pair_with is not None:
            tt[i, len(q) + 2 : len(row)] = 1
    return ids, tt, mask


class Baseline:
    """The plain loop: fixed padding, one forward per batch, AdamW, the same groups as the trainer."""

    def __init__(self, model, cfg: TrialConfig, data: Synthetic, queries: Tokens, docs: Tokens, sampler, device, max_len: int) -> None:
        self.model, self.cfg, self.data, self.queries, self.docs, self.sampler = model, cfg, data, queries, docs, sampler
        self.device, self.max_len = device, max_len
        self.rng = np.random.default_rng(cfg.seed)
        self.order = data.train_rows[self.rng.permutation(len(data.train_rows))]
        self.cursor = 0
        self.opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, **({"fused": True} if device.type == "cuda" else {}))

    def step(self) -> None:
        b, g = self.cfg.optim.batch_size, self.cfg.group_size
        rows = self.order[self.cursor : self.cursor + b]
        self.cursor += b
        groups = self.sampler.sample(rows, g, self.rng)
        teacher = torch.from_numpy(self.data.teacher.lookup(rows, groups)).to(self.device)
        q = [self.queries.get(int(r)) for r in rows]
        d = [self.docs.get(int(x)) for x in groups.reshape(-1)]
        m, dev = self.model, self.device
        with autocast(dev):
            if m.kind == "cross":
                ids, tt, mask = (x.to(dev) for x in padded([q[i // g] for i in range(b * g)], self.max_len, d))
                h = m.encoder(input_ids=ids, attention_mask=mask, token_type_ids=tt).last_hidden_state
                s = m.head(h[:, 0]).float().view(b, g)
            else:
                qi, qt, qm = (x.to(dev) for x in padded(q, 32))
                di, dt, dm = (x.to(dev) for x in padded(d, self.max_len))
                qe = _pool(m, qi, qt, qm)
                de = _pool(m, di, dt, dm).view(b, g, -1)
                s = m.score_groups(qe, de)
        kl(s.float(), teacher, self.cfg.temperature).backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def train_docs(self, docs: int) -> None:
        for _ in range(docs // (self.cfg.optim.batch_size * self.cfg.group_size)):
            self.step()


def _pool(m, ids, tt, mask):
    h = m.encoder(input_ids=ids, attention_mask=mask, token_type_ids=tt).last_hidden_state
    e = pool(h, mask, m.pooling).float()
    return torch.nn.functional.normalize(e, dim=-1) if m.similarity == "cos" else e


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


#: dense bf16 peak TFLOP/s (no sparsity) by device name
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "L4": 121.0}


def peak_tflops(name: str, given: float | None) -> float | None:
    if given:
        return given
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def flops_per_token(arch: str, mean_len: float) -> float:
    """Training FLOPs per real token: 6 N (N: non-embedding parameters) plus attention, 12 n_layer d_model n_ctx."""
    c = ARCHS[arch]
    d, L, ff = c["hidden_size"], c["num_hidden_layers"], c["intermediate_size"]
    n = L * (4 * d * d + 2 * d * ff)
    return 6 * n + 12 * L * d * mean_len


def tokens_per_doc(kind: str, group: int, queries, docs) -> tuple[float, float]:
    """(real tokens per training document, mean sequence length) from the data's length distribution."""
    q = float(np.mean(queries.lengths)) + 2
    d = float(np.mean(docs.lengths)) + 2
    if kind == "cross":
        return q + d - 1, q + d - 1
    return d + q / group, (d * group + q) / (group + 1)


def measure(kind: str, loop: str, compiled: bool, a, device, data, queries, docs) -> float:
    """Docs/s of ``loop`` (``baseline``, or ``trial`` / ``trial-<packing>``) over ``a.steps`` timed steps after ``a.warmup``."""
    col = Path(tempfile.gettempdir()) / "ranksweep-throughput-collection"  # names a collection; the step reads none
    if not (col / "qrels" / "test.tsv").exists():
        write_synthetic_beir(col, 200, seed=0)
    cfg = TrialConfig.from_dict({"data": {"train": f"local:{col}:train", "eval": [f"local:{col}:test"]},
                                 "student": {"kind": kind, "packing": loop.split("-", 1)[1] if "-" in loop else "chunked"}, "loss": "kl", "group_size": a.group, "teacher": "bm25",
                                 "optim": {"batch_size": a.queries, "lr": 1e-5, "warmup_fraction": 0.0},
                                 "budget_docs": (a.steps + a.warmup + 1) * a.queries * a.group})
    model = student(kind, a.arch, device, cfg)
    if compiled:
        model.encoder = torch.compile(model.encoder, dynamic=(loop == "trial"))
    sampler = UniformSampler(len(docs))
    per_step = a.queries * a.group
    if loop.startswith("trial"):
        t = Trainer(cfg, data, model, queries, docs, SPECIAL, device, sampler)
        run = lambda n: t.train_until(t.docs_seen + n * per_step)  # noqa: E731
    else:
        bl = Baseline(model, cfg, data, queries, docs, sampler, device, a.max_length)
        run = lambda n: bl.train_docs(n * per_step)  # noqa: E731
    run(a.warmup)
    sync(device)
    t0 = time.perf_counter()
    run(a.steps)
    sync(device)
    secs = time.perf_counter() - t0
    if loop.startswith("trial") and t.packing_times:
        print(f"  auto measured {t.packing_times} -> {t.packing}", flush=True)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return a.steps * per_step / secs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="bert-base", choices=sorted(ARCHS))
    p.add_argument("--kinds", nargs="+", default=["cross", "bi"], choices=["cross", "bi"])
    p.add_argument("--queries", type=int, default=32, help="B: queries per batch")
    p.add_argument("--group", type=int, default=8, help="G: documents per query")
    p.add_argument("--max-length", type=int, default=256, help="baseline padding length (and passage truncation)")
    p.add_argument("--steps", type=int, default=20, help="timed optimizer steps per loop")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (with --compile: the compilation)")
    p.add_argument("--compile", action="store_true", help="also time both loops under torch.compile (CUDA)")
    p.add_argument("--one-chunk", action="store_true", help="the trial pads each batch to its longest pair, in one chunk (no length sorting)")
    p.add_argument("--loops", nargs="+", default=["baseline", "trial"], choices=["baseline", "trial"])
    p.add_argument("--packing", nargs="+", default=None, choices=["chunked", "padded", "packed", "auto"],
                   help="time the trial under each of these (student.packing); default: chunked only")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak, for the MFU (default: by name)")
    p.add_argument("--profile", type=int, default=0, help="then profile this many eager trial steps (torch.profiler, top CPU ops)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", help="write the numbers to this file (rewritten after every measurement)")
    a = p.parse_args(argv)
    device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else ("cpu" if a.device == "auto" else a.device))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    if a.one_chunk:
        batching.plan_chunks = functools.partial(batching.plan_chunks, min_rows=1 << 30)
    rng = np.random.default_rng(0)
    n_q = (a.steps + a.warmup + 2) * a.queries
    queries = Tokens(lengths(n_q, rng, 8, 0.35, 2, 30), rng)
    docs = Tokens(lengths(50_000, rng, 70, 0.45, 8, a.max_length - 35), rng)
    data = Synthetic(n_q)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    info = {"device": name, "torch": torch.__version__, "arch": a.arch, "B": a.queries, "G": a.group, "max_length": a.max_length,
            "steps": a.steps, "rows": []}
    print(f"device={name} arch={a.arch} B={a.queries} G={a.group} max_length={a.max_length} steps={a.steps}", flush=True)
    peak = peak_tflops(name, a.peak_tflops)
    loops = [lp for lp in a.loops if lp == "baseline"] + ([f"trial-{k}" for k in a.packing] if a.packing and "trial" in a.loops
                                                         else [lp for lp in a.loops if lp == "trial"])
    for kind in a.kinds:
        per_doc, mean_len = tokens_per_doc(kind, a.group, queries, docs)
        fpt = flops_per_token(a.arch, mean_len)
        for compiled in ([False, True] if a.compile else [False]):
            for loop in loops:
                dps = measure(kind, loop, compiled, a, device, data, queries, docs)
                tflops = dps * per_doc * fpt / 1e12
                r = {"kind": kind, "compiled": compiled, "loop": loop, "docs_per_s": round(dps, 1), "tokens_per_s": round(dps * per_doc),
                     "tflops": round(tflops, 2), "mfu": round(tflops / peak, 4) if peak else None}
                base = next((x["docs_per_s"] for x in info["rows"] if x["kind"] == kind and x["compiled"] == compiled
                             and x["loop"] == "baseline"), None)
                r["vs_baseline"] = round(dps / base, 2) if base and loop != "baseline" else None
                info["rows"].append(r)
                print(f"{kind:5s} {'compiled' if compiled else 'eager':8s} {loop:14s} {r['docs_per_s']:>9,.1f} docs/s "
                      f"{r['tokens_per_s']:>11,} tokens/s {tflops:8.2f} TFLOP/s" + (f"  MFU {r['mfu']:.1%}" if peak else "")
                      + (f"  {r['vs_baseline']:.2f}x the plain loop" if r["vs_baseline"] else ""), flush=True)
                if a.json:
                    Path(a.json).write_text(json.dumps(info, indent=1))
    if a.profile:
        profile(a, device, data, queries, docs)
    return 0


def profile(a, device, data, queries, docs) -> None:
    """The CPU and device time of ``a.profile`` eager trial steps of the first kind, by operator."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    steps, a.steps = a.steps, a.profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=acts) as prof:
        measure(a.kinds[0], "trial", False, a, device, data, queries, docs)
    a.steps = steps
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=25), flush=True)


if __name__ == "__main__":
    sys.exit(main())
