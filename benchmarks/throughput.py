"""Docs/s of the core's cross-encoder train step next to a plain HF-style loop, measured in one run.

Both loops train the same model (random weights of the named architecture: throughput does not
depend on the weights) on the same groups of ``B`` queries x ``G`` documents with the same loss
(``kl``) and AdamW, bf16 autocast on CUDA:

- baseline: every (query, document) pair padded to ``--max-length`` (what a tokenizer call with
  ``padding="max_length"`` produces), one forward over the whole batch;
- core: the trial's path: pre-tokenized inputs, length-sorted chunks padded only to their own
  longest sequence (multiple of 8), SDPA attention, fused AdamW on CUDA.

Lengths follow MS MARCO passage ranking: query and passage token counts are drawn from
log-normal fits (queries: median 8 tokens; passages: median 70, long tail cut at the maximum).

Usage::

    python benchmarks/throughput.py                       # bert-base, GPU if present
    python benchmarks/throughput.py --arch minilm --steps 3   # a quick CPU check
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ranksweep.core.data.batching import SpecialTokens, pair_chunks  # noqa: E402
from ranksweep.core.losses import kl  # noqa: E402
from ranksweep.core.models import CrossEncoder, autocast, run_chunks  # noqa: E402

ARCHS = {
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "bert-large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
    "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
}


def msmarco_lengths(n: int, rng: np.random.Generator, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    q = np.clip(np.round(rng.lognormal(np.log(8), 0.35, n)), 2, 32).astype(int)
    d = np.clip(np.round(rng.lognormal(np.log(70), 0.45, n)), 8, max_len - 35).astype(int)
    return q, d


def build(arch: str, device: torch.device):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, max_position_embeddings=512, **ARCHS[arch])
    enc = BertModel(cfg, add_pooling_layer=False)
    return CrossEncoder(enc).to(device)


def optimizer(model, device):
    kw = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(model.parameters(), lr=1e-5, **kw)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_groups(steps: int, b: int, g: int, max_len: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        ql, dl = msmarco_lengths(b * g, rng, max_len)
        qs = [rng.integers(1000, 29000, size=ql[i // g * g]).astype(np.int32) for i in range(b * g)]  # one query per group
        ds = [rng.integers(1000, 29000, size=n).astype(np.int32) for n in dl]
        teacher = torch.randn(b, g)
        out.append((qs, ds, teacher))
    return out


def baseline_step(model, opt, qs, ds, teacher, special, max_len, device, b, g):
    n = len(qs)
    ids = torch.full((n, max_len), special.pad, dtype=torch.long)
    tt = torch.zeros((n, max_len), dtype=torch.long)
    mask = torch.zeros((n, max_len), dtype=torch.long)
    for i, (q, d) in enumerate(zip(qs, ds)):
        row = np.concatenate(([special.cls], q, [special.sep], d, [special.sep]))[:max_len]
        ids[i, : len(row)] = torch.from_numpy(row.astype(np.int64))
        mask[i, : len(row)] = 1
        tt[i, len(q) + 2 : len(row)] = 1
    ids, tt, mask = ids.to(device), tt.to(device), mask.to(device)
    with autocast(device):
        h = model.encoder(input_ids=ids, attention_mask=mask, token_type_ids=tt).last_hidden_state
        s = model.head(h[:, 0]).float().view(b, g)
    loss = kl(s, teacher.to(device), 1.0)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def core_step(model, opt, qs, ds, teacher, special, device, b, g, batch_tokens):
    chunks = pair_chunks(qs, ds, special, batch_tokens)
    with autocast(device):
        out = run_chunks(model.forward_pairs, chunks, len(qs), device)
    loss = kl(out[:, 0].view(b, g), teacher.to(device), 1.0)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def timed(fn, batches, warmup: int, device) -> float:
    for args in batches[:warmup]:
        fn(*args)
    sync(device)
    t0 = time.perf_counter()
    for args in batches[warmup:]:
        fn(*args)
    sync(device)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="bert-base", choices=sorted(ARCHS))
    p.add_argument("--queries", type=int, default=32, help="B: queries per batch")
    p.add_argument("--group", type=int, default=8, help="G: documents per query")
    p.add_argument("--max-length", type=int, default=256, help="baseline padding length (and truncation)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per loop")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch-tokens", type=int, default=1 << 30, help="core: token budget per chunk")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", help="also write the numbers to this file")
    a = p.parse_args(argv)
    device = torch.device("cuda" if (a.device == "auto" and torch.cuda.is_available()) else ("cpu" if a.device == "auto" else a.device))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    special = SpecialTokens(101, 102, 0)
    b, g = a.queries, a.group
    batches = make_groups(a.steps + a.warmup, b, g, a.max_length)
    docs = a.steps * b * g
    results = {}
    for name in ("baseline", "core"):
        model = build(a.arch, device).train()
        opt = optimizer(model, device)
        if name == "baseline":
            fn = lambda qs, ds, t: baseline_step(model, opt, qs, ds, t, special, a.max_length, device, b, g)  # noqa: E731
        else:
            fn = lambda qs, ds, t: core_step(model, opt, qs, ds, t, special, device, b, g, a.batch_tokens)  # noqa: E731
        secs = timed(fn, batches, a.warmup, device)
        results[name] = docs / secs
        fn = model = opt = None  # free the first model before building the second
        if device.type == "cuda":
            torch.cuda.empty_cache()
    real = np.mean([len(q) + len(d) + 3 for qs, ds, _ in batches for q, d in zip(qs, ds)])
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    info = {"device": gpu, "arch": a.arch, "B": b, "G": g, "max_length": a.max_length, "mean_pair_tokens": round(float(real), 1),
            "baseline_docs_per_s": round(results["baseline"], 1), "core_docs_per_s": round(results["core"], 1),
            "ratio": round(results["core"] / results["baseline"], 2), "torch": torch.__version__}
    print(f"device={gpu} arch={a.arch} B={b} G={g} max_length={a.max_length} mean pair tokens={real:.1f}")
    print(f"baseline (fixed padding): {results['baseline']:9.1f} docs/s")
    print(f"core (length-sorted):     {results['core']:9.1f} docs/s")
    print(f"ratio core/baseline:      {results['core'] / results['baseline']:9.2f}x")
    if a.json:
        Path(a.json).write_text(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
