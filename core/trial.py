"""One distillation trial end to end: prepare the shared data, train the student, evaluate.

Data flows one way: collection → candidates → sampler → teacher scores → batches → student →
loss → metrics. ``prepare`` builds (or loads from the cache) everything trials share;
``Trial`` trains one student on it; ``run_trial`` is the plain-function entry point that the
sweeper wraps. Side effects stay at the edges: metrics go to the ``report`` hook and, when an
output directory is configured, to files written by the writers in ``metrics``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import yaml

from .config import TrialConfig
from .data.batching import SpecialTokens, pair_chunks
from .data.cache import cache_root
from .data.candidates import Candidates, EncoderSpec, bm25_candidates, dense_candidates, faiss_search
from .data.collections import Collection, Split, load_collection, sample_queries, split_train_dev
from .data.samplers import SAMPLERS, Sampler, SamplingPools, mix_negatives, random_pools
from .data.tokens import TokenStore, doc_tokens, query_tokens
from .losses import WeightedLoss
from .metrics import diameter, evaluate, kl_divergence, listwise_entropy, pairwise_entropy, summarize, write_per_query, write_trec_run
from .models import autocast, build_student, load_tokenizer, resolve_device, run_chunks
from .teachers import ScoringContext, TeacherError, TeacherScores, rerank_run, teacher_scores

logger = logging.getLogger(__name__)

Report = Callable[[dict[str, float], int], None]


def _no_report(metrics: dict[str, float], step_docs: int) -> None:
    return None


# ---------------------------------------------------------------------------------------------
# Shared preparation
# ---------------------------------------------------------------------------------------------


@dataclass
class EvalSet:
    """An evaluation collection with its BM25 re-ranking pools."""

    name: str
    collection: Collection
    query_ids: list[str]
    bm25: Candidates
    teacher: Optional[TeacherScores] = None

    def pools(self, depth: int) -> dict[str, np.ndarray]:
        return {q: self.bm25.ranked(q)[:depth] for q in self.query_ids}


@dataclass
class Prepared:
    """Everything trials of one data configuration share (all of it cached on disk)."""

    root: Path
    train: Collection
    split: Split
    bm25: Candidates
    dense: Optional[Candidates]
    pools: SamplingPools
    teacher: Optional[TeacherScores]
    dev: EvalSet
    evals: list[EvalSet]
    reference_metrics: dict[str, float] = field(default_factory=dict)


def _components(samplers: Iterable[str], negatives_mix: bool) -> set[str]:
    comps = {"bm25"}
    for s in samplers:
        comps |= set(SAMPLERS[s].components)
    if negatives_mix:
        comps.add("random")
    return comps


def prepare(
    cfg: TrialConfig,
    samplers: Optional[Iterable[str]] = None,
    negatives_mix: Optional[bool] = None,
    device: Optional[torch.device] = None,
) -> Prepared:
    """Build or load the shared data of ``cfg``: splits, candidates, pools, teacher scores, eval pools.

    ``samplers``/``negatives_mix`` widen what is prepared beyond ``cfg`` (a sweep passes every
    sampler of its space so that one preparation serves all trials).
    """
    root = cache_root(cfg.data.cache_dir)
    device = device or resolve_device(cfg.device)
    d = cfg.data
    samplers = set(samplers or ()) | {cfg.sampler.name}
    mix = bool(cfg.augment.negatives_mix > 0) if negatives_mix is None else negatives_mix
    comps = _components(samplers, mix)
    if "dense" in comps and cfg.candidates.dense_depth <= 0:
        raise ValueError(f"samplers {sorted(samplers)} need dense candidates but candidates.dense_depth is 0")

    train = load_collection(d.train)
    split = split_train_dev(train, d.dev_fraction, d.split_seed)
    all_q = split.train + split.dev
    texts = [train.queries[q] for q in all_q]
    bm25 = bm25_candidates(root, train.corpus, all_q, texts, cfg.candidates.bm25_depth)
    dense = None
    spec = EncoderSpec(cfg.candidates.dense_model, "mean", "cos", d.max_doc_length, d.max_query_length)
    if "dense" in comps:
        dense = dense_candidates(root, train.corpus, split.train, [train.queries[q] for q in split.train],
                                 cfg.candidates.dense_depth, spec, device)

    doc_index = train.corpus.doc_index
    positives, relevant = {}, {}
    for q in all_q:
        rel = [doc_index[x] for x, r in train.qrels.get(q, {}).items() if r > 0 and x in doc_index]
        positives[q] = np.array(sorted(rel), dtype=np.int64)
        relevant[q] = set(rel)
    rand = random_pools(split.train, relevant, train.corpus.count, cfg.candidates.random_pool, cfg.candidates.seed)
    pools = SamplingPools(
        positives={q: positives[q] for q in split.train},
        bm25={q: bm25.ranked(q).astype(np.int64) for q in split.train},
        random=rand,
        dense={q: dense.ranked(q).astype(np.int64) for q in split.train} if dense is not None else None,
        relevant={q: relevant[q] for q in split.train},
    )
    dev = EvalSet("dev", train.subset(split.dev), split.dev, bm25)

    teacher = None
    ctx = ScoringContext(root, device, d.max_query_length, d.max_doc_length, cfg.eval.batch_tokens)
    if cfg.teacher.kind != "none":
        empty = np.zeros(0, dtype=np.int64)
        components: dict[str, list[np.ndarray]] = {
            "bm25": [np.union1d(bm25.ranked(q), positives[q]) for q in all_q]
        }
        if "dense" in comps:
            components["dense"] = [np.unique(pools.dense[q]) if q in pools.dense else empty for q in all_q]
        if "random" in comps:
            components["random"] = [rand[q] if q in rand else empty for q in all_q]
        teacher = teacher_scores(cfg.teacher, ctx, train, all_q, components)
        pools = _restrict_to_scored(pools, teacher, comps)
        dev.teacher = teacher

    evals = []
    for did in d.eval:
        col = load_collection(did)
        qids = sample_queries(col.judged_queries(), d.eval_max_queries, seed=d.split_seed)
        cand = bm25_candidates(root, col.corpus, qids, [col.queries[q] for q in qids], cfg.eval.depth)
        es = EvalSet(col.name, col.subset(qids), qids, cand)
        if cfg.teacher.kind != "none":
            es.teacher = teacher_scores(cfg.teacher, ctx, col, qids, {"bm25": [cand.ranked(q) for q in qids]})
        evals.append(es)

    prepared = Prepared(root, train, split, bm25, dense, pools, teacher, dev, evals)
    prepared.reference_metrics = _reference_metrics(cfg, prepared)
    return prepared


def _restrict_to_scored(pools: SamplingPools, teacher: TeacherScores, comps: set[str]) -> SamplingPools:
    """Drop documents without a teacher score (an imported teacher with ``on_missing: drop``)."""
    keep_pos, keep_bm25, keep_dense, keep_rand, dropped = {}, {}, {}, {}, 0
    for q in pools.positives:
        scored = teacher.scored(q)
        ok = lambda a: a[np.isin(a, scored)]  # noqa: E731
        pos = ok(pools.positives[q])
        if len(pos) == 0:
            dropped += 1
            continue
        keep_pos[q] = pos
        keep_bm25[q] = ok(pools.bm25[q])
        if pools.dense is not None:
            keep_dense[q] = ok(pools.dense[q]) if "dense" in comps else pools.dense[q]
        keep_rand[q] = ok(pools.random[q]) if "random" in comps else pools.random[q]
    if dropped:
        logger.warning("%d training queries dropped: the teacher scores none of their positives", dropped)
    if not keep_pos:
        raise TeacherError("no training query has a teacher-scored positive; check the teacher file's query ids")
    return SamplingPools(keep_pos, keep_bm25, keep_rand, keep_dense if pools.dense is not None else None,
                         {q: pools.relevant[q] for q in keep_pos})


def _reference_metrics(cfg: TrialConfig, p: Prepared) -> dict[str, float]:
    """BM25 and teacher effectiveness on dev and every eval set (re-ranking the same pools)."""
    out: dict[str, float] = {}
    sel = cfg.eval.selection
    for es, depth, measures in [(p.dev, cfg.eval.dev_depth, (sel,))] + [(e, cfg.eval.depth, cfg.eval.measures) for e in p.evals]:
        pools = es.pools(depth)
        bm25_run = {q: {es.collection.corpus.doc_ids[dd]: float(-r) for r, dd in enumerate(pools[q])} for q in es.query_ids}
        agg, _ = evaluate(bm25_run, es.collection.qrels, measures)
        out.update({f"bm25/{es.name}/{m}": v for m, v in agg.items()})
        if es.teacher is not None:
            agg, _ = evaluate(rerank_run(es.teacher, es.collection, es.query_ids, pools), es.collection.qrels, measures)
            out.update({f"teacher/{es.name}/{m}": v for m, v in agg.items()})
    return out


# ---------------------------------------------------------------------------------------------
# The trial
# ---------------------------------------------------------------------------------------------


class Trial:
    """Trains one student on prepared data; ``train_until``/``evaluate`` are the sweeper's verbs."""

    def __init__(self, cfg: TrialConfig, prepared: Optional[Prepared] = None, report: Optional[Report] = None) -> None:
        self.cfg = cfg
        self.report = report or _no_report
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.device = resolve_device(cfg.device)
        self.p = prepared or prepare(cfg, device=self.device)
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        self.tokenizer = load_tokenizer(cfg.student.model)
        self.special = SpecialTokens.of(self.tokenizer)
        d = cfg.data
        self.docs = doc_tokens(self.p.root, self.p.train.corpus, self.tokenizer, d.max_doc_length)
        qids = self.p.split.train + self.p.split.dev
        self.qrow = {q: i for i, q in enumerate(qids)}
        self.queries = query_tokens(self.p.root, [self.p.train.queries[q] for q in qids], self.tokenizer, d.max_query_length)
        self.model = build_student(cfg.student, cfg.seed).to(self.device)
        self.losses = [WeightedLoss(t.name, t.weight, t.params) for t in cfg.loss]
        self.sampler: Sampler = SAMPLERS[cfg.sampler.name](cfg.sampler, self.p.pools, self.p.teacher)
        self.train_qids = self._training_queries()
        self.probe_qids, self.probe_groups = self._probe()
        o = cfg.optim
        self.docs_per_step = o.batch_size * cfg.group_size * o.grad_accum
        self.total_steps = math.ceil(cfg.budget_docs / self.docs_per_step)
        decay, no_decay = [], []
        for n, prm in self.model.named_parameters():
            (no_decay if prm.dim() < 2 or "LayerNorm" in n or "norm" in n.lower() else decay).append(prm)
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                                      {"params": no_decay, "weight_decay": 0.0}], lr=o.lr,
                                     **({"fused": True} if self.device.type == "cuda" else {}))
        warm = int(o.warmup_fraction * self.total_steps)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: (s + 1) / max(1, warm) if s < warm else max(0.0, (self.total_steps - s) / max(1, self.total_steps - warm)))
        # progress
        self.docs_seen = 0
        self.steps = 0
        self.epoch = 0
        self.order: list[str] = []
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
    def _training_queries(self) -> list[str]:
        qids = [q for q in self.p.split.train if q in self.p.pools.positives]
        band = self.cfg.augment.entropy_band
        if band is None:
            return qids
        # Entropy of each query's reference group: the group this sampler emits with a fixed
        # seed, scored by the teacher at the trial's temperature (what the loss would see).
        rng = np.random.default_rng(0)
        groups = self.sampler.sample(qids, self.cfg.group_size, rng)
        t = torch.from_numpy(self.p.teacher.lookup(qids, groups))
        fn = listwise_entropy if self.cfg.augment.entropy_kind == "listwise" else pairwise_entropy
        h = fn(t, self.cfg.temperature).double().numpy()
        # empirical CDF position of each query (ties share the mean rank), in [0, 1]
        ranks = _average_ranks(h)
        q = (ranks - 1) / max(len(h) - 1, 1)
        lo, hi = band
        kept = [x for x, qq in zip(qids, q) if lo - 1e-12 <= qq <= hi + 1e-12]
        logger.info("entropy band %s keeps %d of %d training queries", band, len(kept), len(qids))
        if not kept:
            raise ValueError(f"augment.entropy_band {list(band)} keeps no training query")
        return kept

    def _probe(self) -> tuple[list[str], np.ndarray]:
        rng = np.random.default_rng(self.cfg.data.split_seed + 7919)
        base = [q for q in self.p.split.train if q in self.p.pools.positives]
        n = min(self.cfg.eval.probe_queries, len(base))
        qids = [base[i] for i in sorted(rng.choice(len(base), size=n, replace=False))]
        groups = self.sampler.sample(qids, self.cfg.group_size, np.random.default_rng(0))
        if self.cfg.augment.negatives_mix > 0:
            groups = mix_negatives(groups, self.cfg.augment.negatives_mix, self.p.pools, qids, np.random.default_rng(1))
        return qids, groups

    def _next_queries(self, n: int) -> list[str]:
        out = []
        while len(out) < n:
            if self.cursor >= len(self.order):
                self.order = [self.train_qids[i] for i in self.rng.permutation(len(self.train_qids))]
                self.cursor = 0
                self.epoch += 1
            take = self.order[self.cursor : self.cursor + n - len(out)]
            self.cursor += len(take)
            out.extend(take)
        return out

    def _teacher(self, qids: Sequence[str], groups: np.ndarray) -> Optional[torch.Tensor]:
        if self.p.teacher is None:
            return None
        t = self.p.teacher.lookup(qids, groups)
        if np.isnan(t).any():
            raise TeacherError(f"{int(np.isnan(t).sum())} (query, doc) pairs of a training batch have no teacher score")
        return torch.from_numpy(t)

    # -- student forward ---------------------------------------------------------------------
    def _forward(self, qids: Sequence[str], groups: np.ndarray, batch_tokens: int) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """Scores (B, G), group embeddings (B, G, H) and, with in-batch negatives, scores (B, B*G)."""
        b, g = groups.shape
        flat = groups.reshape(-1)
        q_seqs = [self.queries.get(self.qrow[q]) for q in qids]
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
        qids = self._next_queries(n_queries)
        groups = self.sampler.sample(qids, cfg.group_size, self.rng)
        if cfg.augment.negatives_mix > 0:
            groups = mix_negatives(groups, cfg.augment.negatives_mix, self.p.pools, qids, self.rng)
        teacher = self._teacher(qids, groups)
        if teacher is not None:
            self.entropies.append(listwise_entropy(teacher, cfg.temperature).numpy())
            self.pair_entropies.append(pairwise_entropy(teacher, cfg.temperature).numpy())
            teacher = teacher.to(self.device)
        with autocast(self.device):
            scores, _, full = self._forward(qids, groups, 1 << 30)
        scores = scores.float()
        total = scores.new_zeros(())
        for term in self.losses:
            if term.name == "lce" and full is not None:
                continue  # replaced by the in-batch version below
            v = term(scores, teacher, cfg.temperature)
            self.loss_sums[f"train/{term.name}"] = self.loss_sums.get(f"train/{term.name}", 0.0) + float(v.detach())
            total = total + term.weight * v
        if full is not None:
            target = torch.arange(len(qids), device=self.device) * cfg.group_size
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
        self.docs_seen += len(qids) * cfg.group_size

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
    def _doc_store(self, col: Collection) -> TokenStore:
        """The student's tokens of ``col``'s corpus (the training corpus is already loaded)."""
        if col.corpus.key == self.p.train.corpus.key:
            return self.docs
        return doc_tokens(self.p.root, col.corpus, self.tokenizer, self.cfg.data.max_doc_length)

    def _query_store(self, es: EvalSet) -> TokenStore:
        col = es.collection
        return query_tokens(self.p.root, [col.queries[q] for q in es.query_ids], self.tokenizer, self.cfg.data.max_query_length)

    @torch.inference_mode()
    def _rerank(self, es: EvalSet, depth: int) -> dict[str, dict[str, float]]:
        col = es.collection
        ids = col.corpus.doc_ids
        pools = es.pools(depth)
        bt = self.cfg.eval.batch_tokens
        docs = self._doc_store(col)
        if es.name == "dev":
            q_seqs = {q: self.queries.get(self.qrow[q]) for q in es.query_ids}
        else:
            qs = self._query_store(es)
            q_seqs = {q: qs.get(i) for i, q in enumerate(es.query_ids)}
        m = self.model
        run: dict[str, dict[str, float]] = {}
        with autocast(self.device):
            if m.kind == "bi":
                uniq = np.unique(np.concatenate([pools[q] for q in es.query_ids]))
                pos = {int(x): i for i, x in enumerate(uniq)}
                d_emb = m.encode([docs.get(int(x)) for x in uniq], self.special, bt, self.device).float()
                q_emb = m.encode([q_seqs[q] for q in es.query_ids], self.special, bt, self.device).float()
                for i, q in enumerate(es.query_ids):
                    rows = torch.tensor([pos[int(x)] for x in pools[q]], device=self.device)
                    s = (m.scale * d_emb[rows] @ q_emb[i]).cpu().numpy()
                    run[q] = {ids[x]: float(v) for x, v in zip(pools[q], s)}
            else:
                pq, pd, owner = [], [], []
                for q in es.query_ids:
                    for x in pools[q]:
                        pq.append(q_seqs[q]); pd.append(docs.get(int(x))); owner.append((q, ids[x]))
                s = m.score_pairs(pq, pd, self.special, bt, self.device)[0].cpu().numpy()
                for (q, did), v in zip(owner, s):
                    run.setdefault(q, {})[did] = float(v)
        return run

    @torch.inference_mode()
    def _retrieve(self, es: EvalSet, depth: int) -> dict[str, dict[str, float]]:
        """Bi-encoder full retrieval over the collection's corpus with FAISS."""
        col = es.collection
        bt = self.cfg.eval.batch_tokens
        docs = self._doc_store(col)
        qs = self._query_store(es)
        m = self.model
        with autocast(self.device):
            chunks = []
            step = 8192
            for s in range(0, len(docs), step):
                chunks.append(m.encode([docs.get(i) for i in range(s, min(s + step, len(docs)))], self.special, bt, self.device).float().cpu())
            d_emb = torch.cat(chunks).numpy()
            q_emb = m.encode([qs.get(i) for i in range(len(qs))], self.special, bt, self.device).float().cpu().numpy()
        idx, sc = faiss_search(d_emb, q_emb, depth)
        ids = col.corpus.doc_ids
        return {q: {ids[d]: float(m.scale * v) for d, v in zip(idx[i], sc[i]) if d >= 0} for i, q in enumerate(es.query_ids)}

    @torch.inference_mode()
    def _probe_metrics(self) -> dict[str, float]:
        cfg = self.cfg
        with autocast(self.device):
            scores, emb, _ = self._forward(self.probe_qids, self.probe_groups, cfg.eval.batch_tokens)
        out = {}
        diam = diameter(emb.float().cpu(), cfg.eval.diameter_alpha)
        a = cfg.eval.diameter_alpha
        out["probe/diameter"] = float(diam.mean())
        out[f"probe/diameter_q{round(100 * a)}"] = float(torch.quantile(diam.double(), a))
        if self.p.teacher is not None:
            t = torch.from_numpy(self.p.teacher.lookup(self.probe_qids, self.probe_groups))
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
        if self.entropies:
            metrics.update(summarize(torch.from_numpy(np.concatenate(self.entropies)), "train/teacher_entropy"))
            metrics.update(summarize(torch.from_numpy(np.concatenate(self.pair_entropies)), "train/teacher_pairwise_entropy"))
        metrics.update(self._probe_metrics())
        dev_run = self._rerank(self.p.dev, cfg.eval.dev_depth)
        dev_agg, dev_pq = evaluate(dev_run, self.p.dev.collection.qrels, (cfg.eval.selection,))
        metrics.update({f"dev/{m}": v for m, v in dev_agg.items()})
        self._write("dev", dev_run, self._with_entropy(self.p.dev, dev_pq))
        if final or cfg.eval.collections_every_eval:
            for es in self.p.evals:
                run = self._retrieve(es, cfg.eval.depth) if self.model.kind == "bi" else self._rerank(es, cfg.eval.depth)
                agg, pq = evaluate(run, es.collection.qrels, cfg.eval.measures)
                metrics.update({f"{es.name}/{m}": v for m, v in agg.items()})
                self._write(es.name, run, self._with_entropy(es, pq))
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
            for q in es.query_ids:
                pool = es.bm25.ranked(q)[:g].astype(np.int64)
                s = es.teacher.lookup([q], pool[None, :])[0]
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
            "progress": {"docs_seen": self.docs_seen, "steps": self.steps, "epoch": self.epoch, "order": self.order,
                         "cursor": self.cursor, "train_time": self.train_time},
            "entropies": self.entropies, "pair_entropies": self.pair_entropies, "history": self.history,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        self.rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        for k, v in state["progress"].items():
            setattr(self, k, v)
        self.entropies, self.pair_entropies, self.history = state["entropies"], state["pair_entropies"], state["history"]


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` with ties sharing their mean rank."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(1, len(x) + 1)
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    return sums[inv] / counts[inv]


def run_trial(config: TrialConfig | dict, report: Optional[Report] = None, prepared: Optional[Prepared] = None) -> dict[str, float]:
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
