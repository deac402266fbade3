"""The training loop of one trial: sampled groups → teacher scores → student → loss → optimizer.

``Trainer`` owns everything that changes while the student trains: the epoch order of the training
queries, the sampler, the optimizer, the learning-rate schedule (``transformers``' linear warmup
and decay) and the running sums of what it reports. The objective is a list of weighted terms
(``Term``); in-batch negatives are one more term over the student's all-pairs scores.

Nothing here synchronizes with the device per step: the loss terms are summed on the device and
read once per ``train_until`` call, which is also where a non-finite loss is caught.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from scipy.stats import rankdata
from torch import Tensor
from torch.nn import functional as F
from transformers import get_linear_schedule_with_warmup

from .config import TrialConfig
from .data.batching import SpecialTokens, TrainBatch
from .data.samplers import SAMPLERS, Sampler, mix_negatives
from .data.tokens import TokenStore
from .losses import WeightedLoss
from .metrics import listwise_entropy, pairwise_entropy, summarize
from .models import GroupScores, autocast, use_flash_attention
from .preparation import Prepared
from .teachers import TeacherError

logger = logging.getLogger(__name__)

#: what the learning rate, entropy and progress are reported as (``train_metric_keys`` lists them all)
ENTROPY = "train/teacher_entropy"
PAIRWISE_ENTROPY = "train/teacher_pairwise_entropy"
QUARTILES = ("", "_q25", "_q50", "_q75")
#: progress counters, reported at every evaluation (every other key a trial reports is ``<scope>/<name>``)
PROGRESS = ("docs_seen", "steps", "epoch")


@dataclass(frozen=True)
class Term:
    """One weighted term of the objective; ``key`` is the metric its mean is reported as."""

    key: str
    weight: float
    fn: Callable[[GroupScores, Optional[Tensor]], Tensor]


def objective(cfg: TrialConfig) -> list[Term]:
    """The trial's loss terms. With ``augment.in_batch`` the listwise CE ``lce`` is computed over every
    document of the batch (each query's positive against all B*G documents) instead of its own group,
    weighted ``in_batch_weight`` times the ``lce`` weight (or 1 without an ``lce`` term)."""
    terms = []
    lce_weight = 0.0
    for t in cfg.loss:
        loss = WeightedLoss(t.name, t.weight, t.params)
        if cfg.augment.in_batch and t.name == "lce":
            lce_weight += t.weight
            continue
        terms.append(Term(f"train/{t.name}", t.weight, lambda out, teacher, loss=loss: loss(out.scores.float(), teacher, cfg.temperature)))
    if cfg.augment.in_batch:
        g = cfg.group_size
        if lce_weight:
            logger.info("augment.in_batch: the lce term (weight %g) is computed over every document of the batch and reported as "
                        "train/in_batch_lce", lce_weight)

        def in_batch_lce(out: GroupScores, teacher: Optional[Tensor]) -> Tensor:
            assert out.all_pairs is not None
            target = torch.arange(out.all_pairs.shape[0], device=out.all_pairs.device) * g  # each query's positive
            return F.cross_entropy(out.all_pairs.float(), target)

        terms.append(Term("train/in_batch_lce", cfg.augment.in_batch_weight * (lce_weight or 1.0), in_batch_lce))
    return terms


def train_metric_keys(cfg: TrialConfig) -> list[str]:
    """Every key ``Trainer.metrics`` returns once the trial has trained (what ``metric_keys`` builds on)."""
    keys = [*PROGRESS, "train/loss", *(t.key for t in objective(cfg)), "train/docs_per_s", "train/lr", "train/random_fills"]
    if cfg.teacher.scores:
        keys += [f"{k}{q}" for k in (ENTROPY, PAIRWISE_ENTROPY) for q in QUARTILES]
    return keys


class Trainer:
    """Trains ``model`` on the prepared data of one trial; ``train_until`` is its only verb."""

    def __init__(self, cfg: TrialConfig, p: Prepared, model: torch.nn.Module, queries: TokenStore, docs: TokenStore,
                 special: SpecialTokens, device: torch.device, sampler: Sampler) -> None:
        self.cfg, self.p, self.model, self.device = cfg, p, model, device
        self.queries, self.docs, self.special = queries, docs, special
        self.sampler = sampler
        self.terms = objective(cfg)
        self.rng = np.random.default_rng(cfg.seed)
        self.rows = entropy_band(cfg, p, sampler)
        check_fills_scored(cfg, p, sampler)
        o = cfg.optim
        self.docs_per_step = o.batch_size * cfg.group_size * o.grad_accum
        self.total_steps = math.ceil(cfg.budget_docs / self.docs_per_step)
        decay, no_decay = [], []
        for n, prm in model.named_parameters():
            (no_decay if prm.dim() < 2 or "norm" in n.lower() else decay).append(prm)
        # fused AdamW on CPU and CUDA: one kernel over all parameters (on 2 CPU cores a 1-layer MiniLM's step spent
        # 19% of its time in the unfused update of the 11.7M-parameter embedding table; fused: 6x faster, same update)
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                                     lr=o.lr, fused=True)
        self.sched = get_linear_schedule_with_warmup(self.opt, int(o.warmup_fraction * self.total_steps), self.total_steps)
        # progress (checkpointed)
        self.docs_seen = self.steps = self.epoch = self.cursor = self.random_fills = 0
        self.order = np.zeros(0, dtype=np.int64)
        self.train_time = 0.0
        self.entropies: list[np.ndarray] = []
        self.pair_entropies: list[np.ndarray] = []
        # since the last report, on the device
        self._sums: Optional[Tensor] = None  # (1 + len(terms),): total, then each term
        self._count = 0
        #: ``student.packing`` as resolved on the first batch (``choose_packing``); with its timings when measured
        self.packing: Optional[str] = None
        self.packing_times: dict[str, float] = {}

    # -- data --------------------------------------------------------------------------------------
    def _next_rows(self, n: int) -> np.ndarray:
        out, left = [], n
        while left > 0:
            if self.cursor >= len(self.order):
                self.order = self.rows[self.rng.permutation(len(self.rows))]
                self.cursor = 0
                self.epoch += 1
            take = self.order[self.cursor : self.cursor + left]
            self.cursor += len(take)
            left -= len(take)
            out.append(take)
        return np.concatenate(out)

    def next_batch(self, n_queries: int) -> TrainBatch:
        """The next ``n_queries`` training queries of the epoch order, their groups drawn by the sampler (and mixed with
        random negatives by ``augment.negatives_mix``), tokens and teacher scores."""
        cfg = self.cfg
        rows = self._next_rows(n_queries)
        before = self.sampler.fills
        groups = self.sampler.sample(rows, cfg.group_size, self.rng)
        self.random_fills += self.sampler.fills - before
        if cfg.augment.negatives_mix > 0:
            groups = mix_negatives(groups, cfg.augment.negatives_mix, self.p.pools, rows, self.rng)
        return TrainBatch.build(rows, groups, self.queries, self.docs, self.p.teacher)

    # -- steps -------------------------------------------------------------------------------------
    def _forward(self, batch: TrainBatch, packing: str):
        with autocast(self.device):
            return self.model.forward_groups(batch.queries, batch.docs, self.special, 1 << 30, self.device,
                                             all_pairs=self.cfg.augment.in_batch, packing=packing)

    def choose_packing(self, batch: TrainBatch) -> str:
        """``student.packing``, ``auto`` resolved: on the CPU ``chunked`` (padding costs compute there in proportion:
        4x the padded loop in ``benchmarks/throughput.py``); on CUDA the fastest of chunked, padded and packed on this
        batch, each timed over two forward and backward passes after one to warm up. Gradients and random state are
        restored afterwards, so the choice does not change what is trained."""
        want = self.cfg.student.packing
        encoder = getattr(self.model, "encoder", None)
        if want == "packed" or (want == "auto" and self.device.type == "cuda"):
            flash = encoder is not None and use_flash_attention(encoder, self.device)
        if want != "auto":
            return want
        if self.device.type != "cuda":
            return "chunked"
        candidates = ["chunked", "padded", "packed"] if flash else ["chunked", "padded"]
        cpu_rng, cuda_rng = torch.random.get_rng_state(), torch.cuda.get_rng_state(self.device)
        for packing in candidates:
            for rep in range(3):
                if rep == 1:
                    torch.cuda.synchronize(self.device)
                    t0 = time.perf_counter()
                out = self._forward(batch, packing)
                out.scores.float().sum().backward()
            torch.cuda.synchronize(self.device)
            self.packing_times[packing] = (time.perf_counter() - t0) / 2
        self.model.zero_grad(set_to_none=True)
        torch.random.set_rng_state(cpu_rng)
        torch.cuda.set_rng_state(cuda_rng, self.device)
        best = min(self.packing_times, key=self.packing_times.get)
        logger.info("student.packing auto: %s per micro-batch of %d documents -> %s",
                    ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in self.packing_times.items()), batch.groups.size, best)
        return best

    def _micro_step(self, n_queries: int) -> None:
        cfg = self.cfg
        batch = self.next_batch(n_queries)
        if self.packing is None:
            self.packing = self.choose_packing(batch)
        teacher = None
        if batch.teacher is not None:
            self.entropies.append(listwise_entropy(batch.teacher, cfg.temperature).numpy())
            self.pair_entropies.append(pairwise_entropy(batch.teacher, cfg.temperature).numpy())
            teacher = batch.teacher.to(self.device, non_blocking=True)
        out = self._forward(batch, self.packing)
        values = [t.fn(out, teacher) for t in self.terms]
        total = sum(t.weight * v for t, v in zip(self.terms, values))
        step = torch.stack([total, *values]).detach()
        self._sums = step if self._sums is None else self._sums + step
        self._count += 1
        (total / cfg.optim.grad_accum).backward()
        self.docs_seen += len(batch.rows) * cfg.group_size

    def _opt_step(self) -> None:
        if self.cfg.optim.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.max_grad_norm)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        self.steps += 1

    def train_until(self, docs: int) -> None:
        """Train until ``docs`` documents (capped by the budget) have been seen.

        Raises:
            FloatingPointError: the loss was not finite in this stretch of training.
        """
        cfg = self.cfg
        target = min(docs, cfg.budget_docs)
        self.model.train()
        start = self.docs_seen
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
        if self._sums is not None and not bool(torch.isfinite(self._sums).all()):  # one read per stretch, not per step
            raise FloatingPointError(
                f"non-finite training loss between docs_seen={start} and {self.docs_seen} "
                f"(losses {[t.name for t in cfg.loss]}, T={cfg.temperature}, lr={cfg.optim.lr}); lower optim.lr or check the teacher scores")

    # -- reporting ---------------------------------------------------------------------------------
    def metrics(self) -> dict[str, float]:
        """Progress, and the mean of each loss term since the last call (``train_metric_keys``)."""
        out = {"docs_seen": float(self.docs_seen), "steps": float(self.steps), "epoch": float(self.epoch)}
        if self._count:
            means = (self._sums / self._count).tolist()
            out.update(zip(["train/loss", *(t.key for t in self.terms)], means))
            self._sums, self._count = None, 0
        if self.train_time > 0:
            out["train/docs_per_s"] = self.docs_seen / self.train_time
        out["train/lr"] = float(self.sched.get_last_lr()[0])
        out["train/random_fills"] = float(self.random_fills)
        if self.entropies:
            out.update(summarize(torch.from_numpy(np.concatenate(self.entropies)), ENTROPY))
            out.update(summarize(torch.from_numpy(np.concatenate(self.pair_entropies)), PAIRWISE_ENTROPY))
        return out

    # -- checkpoints -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(), "opt": self.opt.state_dict(), "sched": self.sched.state_dict(),
            "rng": self.rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
            "progress": {"docs_seen": self.docs_seen, "steps": self.steps, "epoch": self.epoch, "order": self.order,
                         "cursor": self.cursor, "train_time": self.train_time, "random_fills": self.random_fills},
            "entropies": self.entropies, "pair_entropies": self.pair_entropies,
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
        self.entropies, self.pair_entropies = state["entropies"], state["pair_entropies"]


def entropy_band(cfg: TrialConfig, p: Prepared, sampler: Sampler) -> np.ndarray:
    """The training queries of the trial: all, or those whose teacher entropy lies in ``augment.entropy_band``.

    A query's entropy is that of its reference group: the group this sampler emits with a fixed
    seed, scored by the teacher at the trial's temperature (what the loss would see). The band is
    in quantiles of that entropy over the training queries (ties share their mean rank).
    """
    rows = p.train_rows
    band = cfg.augment.entropy_band
    if band is None:
        return rows
    groups = sampler.sample(rows, cfg.group_size, np.random.default_rng(0))
    t = torch.from_numpy(p.teacher.lookup(rows, groups))
    fn = listwise_entropy if cfg.augment.entropy_kind == "listwise" else pairwise_entropy
    h = fn(t, cfg.temperature).double().numpy()
    q = (rankdata(h, method="average") - 1) / max(len(h) - 1, 1)  # empirical CDF position in [0, 1]
    lo, hi = band
    kept = rows[(q >= lo - 1e-12) & (q <= hi + 1e-12)]
    logger.info("entropy band %s keeps %d of %d training queries", band, len(kept), len(rows))
    if not len(kept):
        raise ValueError(f"augment.entropy_band {list(band)} keeps no training query")
    return kept


def check_fills_scored(cfg: TrialConfig, p: Prepared, sampler: Sampler) -> None:
    """Raise ``TeacherError`` before training when a group would need a teacher score that does not exist.

    A training query whose sampler window holds fewer than ``group_size - 1`` negatives has its group
    filled from its random pool, and the preparation scored that pool only for queries whose BM25
    list ran short; a window near the end of the list (``sampler.depth`` close to
    ``candidates.bm25_depth``) runs short for other queries too.
    """
    if p.teacher is None:
        return
    need = cfg.group_size - 1
    short = [int(r) for r in p.train_rows if len(sampler.window(int(r))) < need]
    unscored = [r for r in short if np.isnan(p.teacher.lookup([r], p.pools.random.row(r)[None, :])).any()]
    if unscored:
        raise TeacherError(
            f"sampler {cfg.sampler.name!r} with depth {list(cfg.sampler.depth)}: {len(unscored)} training queries have fewer than "
            f"{need} negatives in that window, so their groups would be filled from their random pool, which the teacher did not "
            f"score; lower sampler.depth, raise candidates.bm25_depth (now {cfg.candidates.bm25_depth}), or use teacher kind none")


def build_sampler(cfg: TrialConfig, p: Prepared) -> Sampler:
    return SAMPLERS[cfg.sampler.name](cfg.sampler, p.pools)
