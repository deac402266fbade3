"""One distillation trial end to end: train the student on prepared data, evaluate.

Data flows one way: collection → candidates → sampler → teacher scores → batches → student →
loss → metrics. ``prepare`` (``preparation.py``) builds everything trials share; ``Trial`` opens it
and composes three parts, one job each: ``Trainer`` (``training.py``) trains, ``Evaluator``
(``evaluation.py``) measures, ``TrialWriter`` (``writers.py``) writes files. ``run_trial`` is the
plain-function entry point that the sweeper wraps. Metrics go to the ``report`` hook;
``metric_keys`` lists every key a trial of a config emits.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import torch

from .config import TrialConfig
from .data.batching import SpecialTokens
from .evaluation import Evaluator, eval_metric_keys
from .export import save_student
from .losses import LOSSES
from .metrics import listwise_entropy
from .models import build_student, load_tokenizer, resolve_device
from .preparation import Prepared, prepare
from .training import ENTROPY, PAIRWISE_ENTROPY, PROGRESS, Trainer, build_sampler, objective, train_metric_keys
from .writers import TrialWriter

logger = logging.getLogger(__name__)

Report = Callable[[dict[str, float], int], None]

#: where a trial keeps its final weights, inside its output folder
MODEL_DIR = "model"


def _no_report(metrics: dict[str, float], step_docs: int) -> None:
    return None


#: the keys without a ``<scope>/`` prefix: what else a trial reports is ``train/…``, ``probe/…``, ``dev/…``,
#: ``<eval set>/…`` or a reference ``teacher/…``, ``bm25/…``
UNSCOPED = (*PROGRESS, "eval_seconds")


def metric_keys(cfg: TrialConfig, eval_names: list[str] = (), final: bool = False) -> list[str]:
    """The keys a trial of ``cfg`` reports at every evaluation after it has trained (what a scheduler
    can act on); ``final`` adds the eval collections' measures (``eval_names``: the sets' names).
    The final evaluation (and one before any training) also carries the prepared data's reference
    metrics (``teacher/…``, ``bm25/…``)."""
    return [*train_metric_keys(cfg), *eval_metric_keys(cfg, eval_names, final), "eval_seconds"]


def start_metric_keys(cfg: TrialConfig) -> list[str]:
    """The keys of the evaluation before the first step (``eval.at_start``): progress, the learning rate and
    random fills, the probe, dev and ``eval_seconds`` (no loss, throughput or entropy yet: nothing has trained),
    plus the prepared data's reference metrics."""
    trained_only = {"train/loss", "train/docs_per_s", *(t.key for t in objective(cfg))}
    return [k for k in metric_keys(cfg) if k not in trained_only and not k.startswith((ENTROPY, PAIRWISE_ENTROPY))]


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
        self.tokenizer = tokenizer = load_tokenizer(cfg.student.model)
        special = SpecialTokens.of(tokenizer)
        d = cfg.data
        docs = self.p.doc_tokens(tokenizer, self.p.corpus_key, d.max_doc_length)
        queries = self.p.query_tokens(tokenizer, "train", d.max_query_length)
        self.model = build_student(cfg.student, cfg.seed).to(self.device)
        if cfg.student.compile:
            if self.device.type == "cuda":  # in place (checkpoints keep their keys); chunks vary in shape: dynamic shapes
                self.model.encoder.compile(dynamic=True)
            else:
                logger.warning("student.compile applies on CUDA only; %s runs eagerly", self.device)
        self.sampler = build_sampler(cfg, self.p)
        self.trainer = Trainer(cfg, self.p, self.model, queries, docs, special, self.device, self.sampler)
        self.evaluator = Evaluator(cfg, self.p, self.model, tokenizer, special, queries, docs, self.device, self.sampler)
        self._warn_if_flat_teacher()
        self.writer = TrialWriter(cfg.output_dir, tag=cfg.name or "ranksweep")
        self.writer.config(cfg)
        self.history: list[dict[str, float]] = []

    def _warn_if_flat_teacher(self) -> None:
        """Warn when the teacher's tempered distribution over the probe groups is almost uniform (mean entropy
        above 95% of ln G): raw cosine scores of a ``bi`` teacher at T = 1 are, and distilling them unlearns."""
        if self.p.teacher is None or not any(LOSSES[t.name].needs_teacher for t in self.cfg.loss):
            return
        ev = self.evaluator
        t = torch.from_numpy(self.p.teacher.lookup(ev.probe_rows, ev.probe_groups))
        h = float(listwise_entropy(t, self.cfg.temperature).mean())
        top = math.log(self.cfg.group_size)
        if h > 0.95 * top:
            logger.warning("the teacher's distribution over a group is almost uniform: mean entropy %.3f of at most ln %d = %.3f nats "
                           "at T = %g; the loss has little to distil. Sharpen it: a lower temperature, or an ensemble teacher "
                           "(z-scored per query) instead of raw %s scores", h, self.cfg.group_size, top, self.cfg.temperature,
                           self.cfg.teacher.kind)

    @property
    def docs_seen(self) -> int:
        return self.trainer.docs_seen

    def train_until(self, docs: int) -> None:
        """Train until ``docs`` documents (capped by the budget) have been seen."""
        self.trainer.train_until(docs)

    def evaluate(self, final: bool = False) -> dict[str, float]:
        """Evaluate now; write, report and return the metrics. ``final`` adds every eval collection."""
        cfg = self.cfg
        self.model.eval()
        t0 = time.perf_counter()
        metrics = self.trainer.metrics()
        metrics.update(self.evaluator.probe())
        dev, run, per_query = self.evaluator.dev()
        metrics.update(dev)
        self.writer.evaluation("dev", run, per_query)
        if final or cfg.eval.collections_every_eval:
            for es, measures, run, per_query in self.evaluator.collections():
                metrics.update(measures)
                self.writer.evaluation(es.name, run, per_query)
        if final or self.docs_seen == 0:
            metrics.update(self.p.reference_metrics)
        metrics["eval_seconds"] = time.perf_counter() - t0
        self.history.append(metrics)
        # before the report: a scheduler may stop the trial there
        self.writer.metrics(metrics, final=final and self.docs_seen >= cfg.budget_docs)
        self.report(metrics, self.docs_seen)
        self.model.train()
        return metrics

    def run(self) -> dict[str, float]:
        """Train for the whole budget, evaluating every ``eval_every_docs``; return the final metrics."""
        cfg = self.cfg
        if cfg.eval.at_start and self.docs_seen == 0 and not self.history:  # not again when resumed from the docs-0 checkpoint
            self.evaluate()  # the student's start: probe, dev and the reference metrics (collections only with collections_every_eval)
        while self.docs_seen < cfg.budget_docs:
            nxt = (self.docs_seen // cfg.eval_every_docs + 1) * cfg.eval_every_docs
            self.train_until(nxt)
            if self.docs_seen < cfg.budget_docs:
                self.evaluate()
        if self.writer.folder is not None:  # the final weights, before the final report (a sweep syncs the files at a report)
            save_student(self.model, cfg, self.tokenizer, self.writer.folder / MODEL_DIR)
        return self.evaluate(final=True)

    # -- checkpoints (used by the sweeper) ---------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**self.trainer.state_dict(), "history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trainer.load_state_dict(state)
        self.history = state["history"]
        self.writer.history(self.history)


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
