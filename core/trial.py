"""One distillation trial end to end: train the student on prepared data, evaluate.

Data flows one way: collection → candidates → sampler → teacher scores → batches → student →
loss → metrics. ``prepare`` (``preparation.py``) builds everything trials share; ``Trial`` opens it
and trains one student; ``run_trial`` is the plain-function entry point that the sweeper wraps.
Queries are rows of the prepared query set throughout. Side effects stay at the edges: metrics
go to the ``report`` hook and, when an output directory is configured, to files written by the
writers in ``metrics``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import yaml
from transformers import get_linear_schedule_with_warmup

from .config import TrialConfig
from .data.batching import SpecialTokens, pair_chunks
from .data.candidates import flat_ip_index, index_search
from .data.samplers import SAMPLERS, Sampler, mix_negatives
from .data.tokens import TokenStore
from .losses import WeightedLoss
from .metrics import diameter, evaluate, kl_divergence, listwise_entropy, pairwise_entropy, summarize, write_per_query, write_trec_run
from .models import autocast, build_student, load_tokenizer, resolve_device, run_chunks
from .preparation import EvalSet, Prepared, prepare
from .teachers import TeacherError

logger = logging.getLogger(__name__)

Report = Callable[[dict[str, float], int], None]


def _no_report(metrics: dict[str, float], step_docs: int) -> None:
    return None


# ---------------------------------------------------------------------------------------------
# The trial
# ---------------------------------------------------------------------------------------------


class Trial:
    """Trains one student on prepared data; ``train_until``/``evaluate`` are the sweeper's verbs."""

    def __init__(self, cfg: TrialConfig, prepared: Prepared | str | Path | None = None, report: Optional[Report] = None) -> None:
        """``prepared``: the shared data (or its folder); ``None`` prepares it here, in this process.

        A sweep passes the folder its driver prepared: the trial then only opens memory maps and
        raises ``NotPrepared`` if something it needs is missing; it never builds shared data.
        """
        self.cfg = cfg
        self.report = report or _no_report
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.device = resolve_device(cfg.device)
        if prepared is None:
            prepared = prepare(cfg)
        self.p = prepared if isinstance(prepared, Prepared) else Prepared.open(prepared)
        self.p.check(cfg)
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        self.tokenizer = load_tokenizer(cfg.student.model)
        self.special = SpecialTokens.of(self.tokenizer)
        d = cfg.data
        self.docs = self.p.doc_tokens(self.tokenizer, self.p.corpus_key, d.max_doc_length)
        self.queries = self.p.query_tokens(self.tokenizer, "train", d.max_query_length)
        self.model = build_student(cfg.student, cfg.seed).to(self.device)
        self.losses = [WeightedLoss(t.name, t.weight, t.params) for t in cfg.loss]
        self.sampler: Sampler = SAMPLERS[cfg.sampler.name](cfg.sampler, self.p.pools)
        self.train_rows = self._training_rows()
        self.probe_rows, self.probe_groups = self._probe()
        o = cfg.optim
        self.docs_per_step = o.batch_size * cfg.group_size * o.grad_accum
        self.total_steps = math.ceil(cfg.budget_docs / self.docs_per_step)
        decay, no_decay = [], []
        for n, prm in self.model.named_parameters():
            (no_decay if prm.dim() < 2 or "LayerNorm" in n or "norm" in n.lower() else decay).append(prm)
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                                      {"params": no_decay, "weight_decay": 0.0}], lr=o.lr,
                                     **({"fused": True} if self.device.type == "cuda" else {}))
        self.sched = get_linear_schedule_with_warmup(self.opt, int(o.warmup_fraction * self.total_steps), self.total_steps)
        # progress
        self.docs_seen = 0
        self.random_fills = 0  # training negatives the sampler took from the random pool: its window ran short
        self._indexes: dict[str, Any] = {}  # corpus key -> FAISS index of the student's embeddings, within one evaluation
        self.steps = 0
        self.epoch = 0
        self.order = np.zeros(0, dtype=np.int64)
        self.cursor = 0
        self.train_time = 0.0
        self.loss_sums: dict[str, float] = {}
        self.loss_count = 0
        self.entropies: list[np.ndarray] = []
        self.pair_entropies: list[np.ndarray] = []
        self.history: list[dict[str, float]] = []
        self._entropy: dict[str, dict[str, float]] = {}
        self.out = Path(cfg.output_dir) if cfg.output_dir else None
        if self.out:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    # -- data ------------------------------------------------------------------------------
    def _training_rows(self) -> np.ndarray:
        rows = self.p.train_rows
        band = self.cfg.augment.entropy_band
        if band is None:
            return rows
        # Entropy of each query's reference group: the group this sampler emits with a fixed
        # seed, scored by the teacher at the trial's temperature (what the loss would see).
        rng = np.random.default_rng(0)
        groups = self.sampler.sample(rows, self.cfg.group_size, rng)
        t = torch.from_numpy(self.p.teacher.lookup(rows, groups))
        fn = listwise_entropy if self.cfg.augment.entropy_kind == "listwise" else pairwise_entropy
        h = fn(t, self.cfg.temperature).double().numpy()
        # empirical CDF position of each query (ties share the mean rank), in [0, 1]
        ranks = _average_ranks(h)
        q = (ranks - 1) / max(len(h) - 1, 1)
        lo, hi = band
        kept = rows[(q >= lo - 1e-12) & (q <= hi + 1e-12)]
        logger.info("entropy band %s keeps %d of %d training queries", band, len(kept), len(rows))
        if not len(kept):
            raise ValueError(f"augment.entropy_band {list(band)} keeps no training query")
        return kept

    def _probe(self) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(self.cfg.data.split_seed + 7919)
        base = self.p.train_rows
        n = min(self.cfg.eval.probe_queries, len(base))
        rows = base[np.sort(rng.choice(len(base), size=n, replace=False))]
        groups = self.sampler.sample(rows, self.cfg.group_size, np.random.default_rng(0))
        if self.cfg.augment.negatives_mix > 0:
            groups = mix_negatives(groups, self.cfg.augment.negatives_mix, self.p.pools, rows, np.random.default_rng(1))
        return rows, groups

    def _next_rows(self, n: int) -> np.ndarray:
        out = []
        left = n
        while left > 0:
            if self.cursor >= len(self.order):
                self.order = self.train_rows[self.rng.permutation(len(self.train_rows))]
                self.cursor = 0
                self.epoch += 1
            take = self.order[self.cursor : self.cursor + left]
            self.cursor += len(take)
            left -= len(take)
            out.append(take)
        return np.concatenate(out)

    def _teacher(self, rows: np.ndarray, groups: np.ndarray) -> Optional[torch.Tensor]:
        if self.p.teacher is None:
            return None
        t = self.p.teacher.lookup(rows, groups)
        if np.isnan(t).any():
            raise TeacherError(f"{int(np.isnan(t).sum())} (query, doc) pairs of a training batch have no teacher score")
        return torch.from_numpy(t)

    # -- student forward ---------------------------------------------------------------------
    def _forward(self, rows: np.ndarray, groups: np.ndarray, batch_tokens: int) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """Scores (B, G), group embeddings (B, G, H) and, with in-batch negatives, scores (B, B*G)."""
        b, g = groups.shape
        flat = groups.reshape(-1)
        q_seqs = [self.queries.get(int(r)) for r in rows]
        d_seqs = [self.docs.get(int(x)) for x in flat]
        m = self.model
        if m.kind == "bi":
            q_emb = m.encode(q_seqs, self.special, batch_tokens, self.device)
            d_emb = m.encode(d_seqs, self.special, batch_tokens, self.device)
            d3 = d_emb.view(b, g, -1)
            scores = m.score_groups(q_emb, d3)
            full = m.score_all(q_emb, d_emb) if self.cfg.augment.in_batch else None
            return scores, d3, full
        pair_q = [q_seqs[i // g] for i in range(b * g)]
        out = run_chunks(m.forward_pairs, pair_chunks(pair_q, d_seqs, self.special, batch_tokens), b * g, self.device)
        return out[:, 0].view(b, g), out[:, 1:].view(b, g, -1), None

    # -- training ----------------------------------------------------------------------------
    def _micro_step(self, n_queries: int) -> None:
        cfg = self.cfg
        rows = self._next_rows(n_queries)
        before = self.sampler.fills
        groups = self.sampler.sample(rows, cfg.group_size, self.rng)
        self.random_fills += self.sampler.fills - before
        if cfg.augment.negatives_mix > 0:
            groups = mix_negatives(groups, cfg.augment.negatives_mix, self.p.pools, rows, self.rng)
        teacher = self._teacher(rows, groups)
        if teacher is not None:
            self.entropies.append(listwise_entropy(teacher, cfg.temperature).numpy())
            self.pair_entropies.append(pairwise_entropy(teacher, cfg.temperature).numpy())
            teacher = teacher.to(self.device)
        with autocast(self.device):
            scores, _, full = self._forward(rows, groups, 1 << 30)
        scores = scores.float()
        total = scores.new_zeros(())
        for term in self.losses:
            if term.name == "lce" and full is not None:
                continue  # replaced by the in-batch version below
            v = term(scores, teacher, cfg.temperature)
            self.loss_sums[f"train/{term.name}"] = self.loss_sums.get(f"train/{term.name}", 0.0) + float(v.detach())
            total = total + term.weight * v
        if full is not None:
            target = torch.arange(len(rows), device=self.device) * cfg.group_size
            w = cfg.augment.in_batch_weight * (sum(t.weight for t in self.losses if t.name == "lce") or 1.0)
            v = torch.nn.functional.cross_entropy(full.float(), target)
            self.loss_sums["train/in_batch_lce"] = self.loss_sums.get("train/in_batch_lce", 0.0) + float(v.detach())
            total = total + w * v
        if not torch.isfinite(total):
            raise FloatingPointError(
                f"non-finite training loss ({float(total.detach())}) at docs_seen={self.docs_seen} "
                f"(losses {[t.name for t in self.losses]}, T={cfg.temperature}, lr={cfg.optim.lr}); "
                "lower optim.lr or check the teacher scores"
            )
        self.loss_sums["train/loss"] = self.loss_sums.get("train/loss", 0.0) + float(total.detach())
        self.loss_count += 1
        (total / cfg.optim.grad_accum).backward()
        self.docs_seen += len(rows) * cfg.group_size

    def _opt_step(self) -> None:
        o = self.cfg.optim
        if o.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), o.max_grad_norm)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        self.steps += 1

    def train_until(self, docs: int) -> None:
        """Train until ``docs`` documents (capped by the budget) have been seen."""
        cfg = self.cfg
        target = min(docs, cfg.budget_docs)
        self.model.train()
        t0 = time.perf_counter()
        while self.docs_seen < target:
            for _ in range(cfg.optim.grad_accum):
                left = cfg.budget_docs - self.docs_seen
                if left <= 0:
                    break
                self._micro_step(min(cfg.optim.batch_size, left // cfg.group_size))
            self._opt_step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.train_time += time.perf_counter() - t0

    # -- evaluation --------------------------------------------------------------------------
    def _doc_store(self, es: EvalSet) -> TokenStore:
        """The student's tokens of ``es``'s corpus (the training corpus is already open)."""
        if es.corpus_key == self.p.corpus_key:
            return self.docs
        return self.p.doc_tokens(self.tokenizer, es.corpus_key, self.cfg.data.max_doc_length)

    def _query_seqs(self, es: EvalSet) -> list[np.ndarray]:
        """The student's tokens of ``es``'s queries, in ``es.qids`` order."""
        if es.name == "dev":
            return [self.queries.get(int(r)) for r in es.rows]
        qs = self.p.query_tokens(self.tokenizer, es.name, self.cfg.data.max_query_length)
        return [qs.get(int(r)) for r in es.rows]

    @torch.inference_mode()
    def _rerank(self, es: EvalSet, depth: int) -> dict[str, dict[str, float]]:
        pools = es.pools(depth)
        bt = self.cfg.eval.batch_tokens
        docs = self._doc_store(es)
        q_seqs = self._query_seqs(es)
        m = self.model
        run: dict[str, dict[str, float]] = {}
        with autocast(self.device):
            if m.kind == "bi":
                uniq = np.unique(np.concatenate(pools)) if pools else np.zeros(0, np.int64)
                d_emb = m.encode([docs.get(int(x)) for x in uniq], self.special, bt, self.device).float()
                q_emb = m.encode(q_seqs, self.special, bt, self.device).float()
                for i, (q, pool) in enumerate(zip(es.qids, pools)):
                    rows = torch.from_numpy(np.searchsorted(uniq, pool)).to(self.device)
                    s = (m.scale * d_emb[rows] @ q_emb[i]).cpu().numpy()
                    run[q] = dict(zip(es.docs.ids_of(pool), s.astype(float).tolist()))
            else:
                pq, pd, owner = [], [], []
                for q, seq, pool in zip(es.qids, q_seqs, pools):
                    for x in pool:
                        pq.append(seq)
                        pd.append(docs.get(int(x)))
                    owner.extend((q, did) for did in es.docs.ids_of(pool))
                s = m.score_pairs(pq, pd, self.special, bt, self.device)[0].cpu().numpy()
                for (q, did), v in zip(owner, s):
                    run.setdefault(q, {})[did] = float(v)
        return run

    @torch.inference_mode()
    def _corpus_index(self, es: EvalSet):
        """The student's embeddings of ``es``'s corpus in a FAISS index, streamed in as they are encoded (no
        other copy of the corpus's embeddings is held), built once per evaluation for every eval set on that corpus."""
        if es.corpus_key in self._indexes:
            return self._indexes[es.corpus_key]
        bt = self.cfg.eval.batch_tokens
        docs = self._doc_store(es)
        index, step = None, 8192
        with autocast(self.device):
            for s in range(0, len(docs), step):
                emb = self.model.encode([docs.get(i) for i in range(s, min(s + step, len(docs)))], self.special, bt, self.device)
                emb = emb.float().cpu().numpy()
                if index is None:
                    index = flat_ip_index(emb.shape[1])
                index.add(emb)
        self._indexes[es.corpus_key] = index
        return index

    @torch.inference_mode()
    def _retrieve(self, es: EvalSet, depth: int) -> dict[str, dict[str, float]]:
        """Bi-encoder full retrieval over the collection's corpus with FAISS."""
        m = self.model
        index = self._corpus_index(es)
        with autocast(self.device):
            q_emb = m.encode(self._query_seqs(es), self.special, self.cfg.eval.batch_tokens, self.device).float().cpu().numpy()
        idx, sc = index_search(index, q_emb, depth)
        out = {}
        for i, q in enumerate(es.qids):
            keep = idx[i] >= 0
            out[q] = dict(zip(es.docs.ids_of(idx[i][keep]), (m.scale * sc[i][keep]).astype(float).tolist()))
        return out

    @torch.inference_mode()
    def _probe_metrics(self) -> dict[str, float]:
        cfg = self.cfg
        with autocast(self.device):
            scores, emb, _ = self._forward(self.probe_rows, self.probe_groups, cfg.eval.batch_tokens)
        out = {}
        diam = diameter(emb.float().cpu(), cfg.eval.diameter_alpha)
        a = cfg.eval.diameter_alpha
        out["probe/diameter"] = float(diam.mean())
        out[f"probe/diameter_q{round(100 * a)}"] = float(torch.quantile(diam.double(), a))
        if self.p.teacher is not None:
            t = torch.from_numpy(self.p.teacher.lookup(self.probe_rows, self.probe_groups))
            out["probe/kl"] = float(kl_divergence(t, scores.float().cpu(), cfg.temperature).mean())
            out["probe/teacher_entropy"] = float(listwise_entropy(t, cfg.temperature).mean())
        return out

    def evaluate(self, final: bool = False) -> dict[str, float]:
        """Evaluate now; report and return the metrics. ``final`` adds every eval collection."""
        cfg = self.cfg
        self.model.eval()
        t0 = time.perf_counter()
        metrics: dict[str, float] = {"docs_seen": float(self.docs_seen), "steps": float(self.steps), "epoch": float(self.epoch)}
        if self.loss_count:
            metrics.update({k: v / self.loss_count for k, v in self.loss_sums.items()})
            self.loss_sums, self.loss_count = {}, 0
        if self.train_time > 0:
            metrics["train/docs_per_s"] = self.docs_seen / self.train_time
        metrics["train/lr"] = float(self.sched.get_last_lr()[0])
        metrics["train/random_fills"] = float(self.random_fills)
        if self.entropies:
            metrics.update(summarize(torch.from_numpy(np.concatenate(self.entropies)), "train/teacher_entropy"))
            metrics.update(summarize(torch.from_numpy(np.concatenate(self.pair_entropies)), "train/teacher_pairwise_entropy"))
        metrics.update(self._probe_metrics())
        dev_run = self._rerank(self.p.dev, cfg.eval.dev_depth)
        dev_agg, dev_pq = evaluate(dev_run, self.p.dev.qrels, (cfg.eval.selection,))
        metrics.update({f"dev/{m}": v for m, v in dev_agg.items()})
        self._write("dev", dev_run, self._with_entropy(self.p.dev, dev_pq))
        if final or cfg.eval.collections_every_eval:
            try:
                for es in self.p.evals:
                    run = self._retrieve(es, cfg.eval.depth) if self.model.kind == "bi" else self._rerank(es, cfg.eval.depth)
                    agg, pq = evaluate(run, es.qrels, cfg.eval.measures)
                    metrics.update({f"{es.name}/{m}": v for m, v in agg.items()})
                    self._write(es.name, run, self._with_entropy(es, pq))
            finally:
                self._indexes.clear()  # this evaluation's corpus indexes: the model changes before the next
        if final or self.docs_seen == 0:
            metrics.update(self.p.reference_metrics)
        metrics["eval_seconds"] = time.perf_counter() - t0
        self.history.append(metrics)
        if self.out:
            with (self.out / "metrics.jsonl").open("a") as f:
                f.write(json.dumps(metrics) + "\n")
            if final and self.docs_seen >= cfg.budget_docs:  # before the report: a scheduler may stop us there
                (self.out / "final.json").write_text(json.dumps(metrics, indent=1))
        self.report(metrics, self.docs_seen)
        self.model.train()
        return metrics

    def query_entropy(self, es: EvalSet) -> dict[str, float]:
        """The teacher's listwise entropy per query of ``es``, over the query's BM25 top-``group_size``.

        The evaluation-side counterpart of ``train/teacher_entropy``: same temperature, same group
        size, with the first-stage ranking in place of the sampler (an evaluation query has no
        sampled group). Paired with the student's per-query effectiveness it gives the
        entropy–performance correlation of Parry, Ganguly and MacAvaney (arXiv 2505.21058).
        Queries with fewer than two scored candidates are left out; no teacher gives ``{}``.
        """
        if es.teacher is None:
            return {}
        if es.name not in self._entropy:
            g = self.cfg.group_size
            out = {}
            for q, r in zip(es.qids, es.rows):
                pool = es.bm25.ranked(int(r))[:g]
                s = es.teacher.lookup([int(r)], pool[None, :])[0]
                s = s[~np.isnan(s)]
                if len(s) >= 2:
                    out[q] = float(listwise_entropy(torch.from_numpy(s[None, :].astype(np.float64)), self.cfg.temperature)[0])
            self._entropy[es.name] = out
        return self._entropy[es.name]

    def _with_entropy(self, es: EvalSet, per_query: dict) -> dict:
        h = self.query_entropy(es)
        return {q: ({**v, "teacher_entropy": h[q]} if q in h else v) for q, v in per_query.items()}

    def _write(self, name: str, run: dict, per_query: dict) -> None:
        if not self.out:
            return
        tag = f"{name}.docs{self.docs_seen}"
        write_trec_run(self.out / "runs" / f"{name}.run", run, tag=self.cfg.name or "ranksweep")
        write_per_query(self.out / "per_query" / f"{name}.tsv", per_query)
        logger.debug("wrote %s", tag)

    def run(self) -> dict[str, float]:
        """Train for the whole budget, evaluating every ``eval_every_docs``; return the final metrics."""
        cfg = self.cfg
        if cfg.eval.at_start and self.docs_seen == 0:
            self.evaluate(final=True)
        while self.docs_seen < cfg.budget_docs:
            nxt = (self.docs_seen // cfg.eval_every_docs + 1) * cfg.eval_every_docs
            self.train_until(nxt)
            if self.docs_seen < cfg.budget_docs:
                self.evaluate()
        return self.evaluate(final=True)

    # -- checkpoints (used by the sweeper) ---------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(), "opt": self.opt.state_dict(), "sched": self.sched.state_dict(),
            "rng": self.rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
            "progress": {"docs_seen": self.docs_seen, "steps": self.steps, "epoch": self.epoch, "order": self.order,
                         "cursor": self.cursor, "train_time": self.train_time, "random_fills": self.random_fills},
            "entropies": self.entropies, "pair_entropies": self.pair_entropies, "history": self.history,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        self.rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        for k, v in state["progress"].items():
            setattr(self, k, v)
        self.entropies, self.pair_entropies, self.history = state["entropies"], state["pair_entropies"], state["history"]
        if self.out:  # a trial resumed elsewhere starts from an empty folder: its evaluations so far come with the state
            with (self.out / "metrics.jsonl").open("w") as f:
                f.writelines(json.dumps(m) + "\n" for m in self.history)


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` with ties sharing their mean rank."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(1, len(x) + 1)
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    return sums[inv] / counts[inv]


def run_trial(config: TrialConfig | dict, report: Optional[Report] = None, prepared: Prepared | str | Path | None = None) -> dict[str, float]:
    """Run one trial and return its final metrics.

    Args:
        config: a ``TrialConfig`` or a raw dict (validated with ``TrialConfig.from_dict``).
        report: ``callback(metrics: dict[str, float], step_docs: int)`` called at every
            evaluation (the sweeper plugs Ray Tune and MLflow in here). Defaults to a no-op.
        prepared: shared data from ``prepare`` (built and cached on demand when omitted).

    Example::

        from ranksweep.core import TrialConfig, run_trial
        cfg = TrialConfig.from_yaml("trial.yaml")
        final = run_trial(cfg, report=lambda m, docs: print(docs, m["dev/nDCG@10"]))
    """
    cfg = config if isinstance(config, TrialConfig) else TrialConfig.from_dict(config)
    return Trial(cfg, prepared, report).run()
