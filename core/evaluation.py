"""Evaluating one trial's student: the probe (locality and fit to the teacher), dev re-ranking and
the eval collections.

``Evaluator`` reads the student and the prepared data and returns metrics and runs; it trains
nothing and writes nothing. What differs between a bi- and a cross-encoder is asked of the
student (``retrieves``, ``forward_groups``, ``score_pools``): a bi-encoder retrieves from a FAISS
index of its corpus, built once per evaluation for every eval set on that corpus by streaming
float16 embeddings into it; a cross-encoder re-ranks the first-stage candidates.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from .config import TrialConfig
from .data.batching import SpecialTokens, TrainBatch
from .data.candidates import flat_ip_index, index_search
from .data.samplers import Sampler, mix_negatives
from .data.tokens import TokenStore
from .metrics import diameter, evaluate, kl_divergence, listwise_entropy
from .models import autocast
from .preparation import EvalSet, Prepared

Run = dict[str, dict[str, float]]
PerQuery = dict[str, dict[str, float]]

#: locality: the diameter of the probe groups in the student's space (``eval_metric_keys`` lists every key)
DIAMETER = "probe/diameter"

#: corpus documents encoded per block while an index is built (the only float32 copy held at once)
ENCODE_BLOCK = 8192


def eval_metric_keys(cfg: TrialConfig, eval_names: list[str] = (), final: bool = False) -> list[str]:
    """Every key ``Evaluator`` reports: the probe and dev at every evaluation; with ``final`` (or
    ``eval.collections_every_eval``) each eval collection's measures, named ``<set>/<measure>``."""
    a = cfg.eval.diameter_alpha
    keys = [DIAMETER, f"{DIAMETER}_q{round(100 * a)}"]
    if cfg.teacher.scores:
        keys += ["probe/kl", "probe/teacher_entropy"]
    keys.append(f"dev/{cfg.eval.selection}")
    if final or cfg.eval.collections_every_eval:
        keys += [f"{name}/{m}" for name in eval_names for m in cfg.eval.measures]
    return keys


class Evaluator:
    """Evaluates ``model`` on the prepared dev set, probe groups and eval collections of one trial."""

    def __init__(self, cfg: TrialConfig, p: Prepared, model: torch.nn.Module, tokenizer, special: SpecialTokens,
                 queries: TokenStore, docs: TokenStore, device: torch.device, sampler: Sampler) -> None:
        self.cfg, self.p, self.model, self.device = cfg, p, model, device
        self.tokenizer, self.special = tokenizer, special
        self.queries, self.docs = queries, docs
        self.probe_rows, self.probe_groups = self._probe(sampler)
        self._entropy: dict[str, dict[str, float]] = {}

    def _probe(self, sampler: Sampler) -> tuple[np.ndarray, np.ndarray]:
        """Fixed probe groups: ``eval.probe_queries`` training queries and this sampler's groups for them, fixed seeds."""
        rng = np.random.default_rng(self.cfg.data.split_seed + 7919)
        base = self.p.train_rows
        rows = base[np.sort(rng.choice(len(base), size=min(self.cfg.eval.probe_queries, len(base)), replace=False))]
        groups = sampler.sample(rows, self.cfg.group_size, np.random.default_rng(0))
        if self.cfg.augment.negatives_mix > 0:
            groups = mix_negatives(groups, self.cfg.augment.negatives_mix, self.p.pools, rows, np.random.default_rng(1))
        return rows, groups

    # -- token access ------------------------------------------------------------------------------
    def _doc_store(self, es: EvalSet) -> TokenStore:
        """The student's tokens of ``es``'s corpus (the training corpus is already open)."""
        if es.corpus_key == self.p.corpus_key:
            return self.docs
        return self.p.doc_tokens(self.tokenizer, es.corpus_key, self.cfg.data.max_doc_length)

    def _query_seqs(self, es: EvalSet) -> list[np.ndarray]:
        """The student's tokens of ``es``'s queries, in ``es.qids`` order."""
        qs = self.queries if es.name == "dev" else self.p.query_tokens(self.tokenizer, es.name, self.cfg.data.max_query_length)
        return [qs.get(int(r)) for r in es.rows]

    # -- the three evaluations -------------------------------------------------------------------
    @torch.inference_mode()
    def probe(self) -> dict[str, float]:
        """Locality (diameter of the probe groups in the student's space) and, with a teacher, the KL of the
        student's distribution from the teacher's and the teacher's entropy on those groups."""
        cfg = self.cfg
        batch = TrainBatch.build(self.probe_rows, self.probe_groups, self.queries, self.docs, self.p.teacher)
        with autocast(self.device):
            out = self.model.forward_groups(batch.queries, batch.docs, self.special, cfg.eval.batch_tokens, self.device)
        a = cfg.eval.diameter_alpha
        diam = diameter(out.embeddings.float().cpu(), a)
        m = {DIAMETER: float(diam.mean()), f"{DIAMETER}_q{round(100 * a)}": float(torch.quantile(diam.double(), a))}
        if batch.teacher is not None:
            t = batch.teacher
            m["probe/kl"] = float(kl_divergence(t, out.scores.float().cpu(), cfg.temperature).mean())
            m["probe/teacher_entropy"] = float(listwise_entropy(t, cfg.temperature).mean())
        return m

    def dev(self) -> tuple[dict[str, float], Run, PerQuery]:
        """The model-selection measure on dev, re-ranking dev's candidates to ``eval.dev_depth``."""
        run = self.rerank(self.p.dev, self.cfg.eval.dev_depth)
        agg, pq = evaluate(run, self.p.dev.qrels, (self.cfg.eval.selection,))
        return {f"dev/{k}": v for k, v in agg.items()}, run, self.with_entropy(self.p.dev, pq)

    def collections(self) -> Iterator[tuple[EvalSet, dict[str, float], Run, PerQuery]]:
        """Each eval collection's measures (``eval.measures``), its run and per-query values: a bi-encoder
        retrieves from its corpus's index, a cross-encoder re-ranks to ``eval.depth``."""
        indexes: dict[str, Any] = {}  # corpus key -> index, for this evaluation only: the model changes before the next
        for es in self.p.evals:
            if self.model.retrieves:
                if es.corpus_key not in indexes:
                    indexes[es.corpus_key] = self.corpus_index(es)
                run = self.retrieve(es, indexes[es.corpus_key], self.cfg.eval.depth)
            else:
                run = self.rerank(es, self.cfg.eval.depth)
            agg, pq = evaluate(run, es.qrels, self.cfg.eval.measures)
            yield es, {f"{es.name}/{k}": v for k, v in agg.items()}, run, self.with_entropy(es, pq)

    # -- runs ------------------------------------------------------------------------------------
    @torch.inference_mode()
    def rerank(self, es: EvalSet, depth: int) -> Run:
        """The student's scores of each query's first-stage top-``depth``."""
        pools = es.pools(depth)
        docs = self._doc_store(es)
        with autocast(self.device):
            scores = self.model.score_pools(self._query_seqs(es), pools, docs.get, self.special, self.cfg.eval.batch_tokens, self.device)
        return {q: dict(zip(es.docs.ids_of(pool), s.astype(float).tolist())) for q, pool, s in zip(es.qids, pools, scores)}

    @torch.inference_mode()
    def corpus_index(self, es: EvalSet):
        """A FAISS inner-product index of the student's embeddings of ``es``'s corpus, stored as float16.

        The corpus is encoded in blocks of ``ENCODE_BLOCK`` documents, each cast to float16 on the device
        and added to the index at once, so no full-corpus copy of the embeddings exists besides the
        index (8.8M x 768 float16: 13.5 GB, half of a float32 flat index).
        """
        docs = self._doc_store(es)
        index = None
        with autocast(self.device):
            for s in range(0, len(docs), ENCODE_BLOCK):
                block = [docs.get(i) for i in range(s, min(s + ENCODE_BLOCK, len(docs)))]
                emb = self.model.encode(block, self.special, self.cfg.eval.batch_tokens, self.device).half().cpu().numpy()
                if index is None:
                    index = flat_ip_index(emb.shape[1], fp16=True)
                index.add(emb.astype(np.float32))
        return index

    @torch.inference_mode()
    def retrieve(self, es: EvalSet, index, depth: int) -> Run:
        """Top-``depth`` of ``index`` (``es``'s corpus) for each of ``es``'s queries."""
        with autocast(self.device):
            q = self.model.encode(self._query_seqs(es), self.special, self.cfg.eval.batch_tokens, self.device).float().cpu().numpy()
        idx, sc = index_search(index, q, depth)
        out = {}
        for i, qid in enumerate(es.qids):
            keep = idx[i] >= 0
            out[qid] = dict(zip(es.docs.ids_of(idx[i][keep]), (self.model.scale * sc[i][keep]).astype(float).tolist()))
        return out

    # -- the teacher's entropy per evaluation query ----------------------------------------------------
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

    def with_entropy(self, es: EvalSet, per_query: PerQuery) -> PerQuery:
        h = self.query_entropy(es)
        return {q: ({**v, "teacher_entropy": h[q]} if q in h else v) for q, v in per_query.items()}
