"""Scheduler settings, how each fares over replayed arrival orders, and the one recommended (or why none is)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from ..schedulers import early_stopping
from ..stats import seed_noise
from .curves import Curves, PlanError
from .replay import Replay, replay

KEYS = ("scheduler", "params", "compute_fraction", "best_kept", "regret", "topk_kept")


@dataclass(frozen=True)
class Setting:
    """One scheduler setting: ``name`` and ``params`` as in a sweep spec's ``scheduler:`` (grace in docs)."""

    name: str  # none | asha | hyperband | median
    params: dict

    def build(self, metric: str, mode: str, budget: int):
        """The scheduler a sweep with this setting runs (``schedulers.early_stopping``), fresh."""
        name = "asha" if self.name == "hyperband" else self.name  # asynchronous HyperBand: ASHA with brackets
        p = self.params
        return early_stopping(name, p.get("grace_docs", 1), p.get("reduction_factor", 2.0), p.get("brackets", 1), budget, metric, mode)

    def spec(self, budget: int, target_budget: Optional[int] = None) -> dict:
        """The ``scheduler:`` mapping of a sweep spec, grace scaled to ``target_budget`` (same fraction of the budget)."""
        if self.name == "none":
            return {"name": "none"}
        grace = self.params["grace_docs"]
        if target_budget:
            grace = max(1, round(grace * target_budget / budget))
        out = {"name": "asha" if self.name == "hyperband" else self.name, "grace_docs": grace}
        if self.name in ("asha", "hyperband"):
            out["reduction_factor"] = self.params["reduction_factor"]
        if self.name == "hyperband":
            out["brackets"] = self.params["brackets"]
        return out


def settings_grid(steps: list[int], budget: int, reduction_factors: tuple[float, ...] = (2, 3, 4)) -> list[Setting]:
    """No scheduler, then ASHA and asynchronous HyperBand over grace × reduction factor, then the median rule.

    Grace periods are evaluation steps after the start (docs 0) up to half the budget, at most four of
    them, spaced geometrically (a scheduler only decides at evaluations).
    """
    trained = [s for s in steps if s > 0]
    early = [s for s in trained if s <= budget / 2] or trained[:1]
    graces = sorted({early[round(i)] for i in np.geomspace(1, len(early), num=min(4, len(early))) - 1})
    out = [Setting("none", {})]
    for g in graces:
        for rf in reduction_factors:
            out.append(Setting("asha", {"grace_docs": g, "reduction_factor": rf}))
    for g in graces:
        for rf in reduction_factors:
            rungs = int(math.log(budget / g) / math.log(rf)) + 1 if budget >= g else 1
            if rungs >= 2:  # a second bracket starts at the second rung
                out.append(Setting("hyperband", {"grace_docs": g, "reduction_factor": rf, "brackets": min(3, rungs)}))
    for g in graces:
        out.append(Setting("median", {"grace_docs": g, "min_samples_required": 3}))
    return out


@dataclass
class Row:
    scheduler: str
    params: dict
    compute_fraction: float
    best_kept: float
    regret: float
    topk_kept: float

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in KEYS}


@dataclass(frozen=True)
class CellTest:
    """Whether a pilot's cells differ beyond seed noise: one-way ANOVA of the final metric over cells."""

    cells: int
    trials: int
    f: float
    p: float
    alpha: float

    @property
    def differ(self) -> bool:
        return math.isfinite(self.p) and self.p < self.alpha

    def describe(self) -> str:
        if not math.isfinite(self.p):
            return (f"the {self.cells} cells cannot be compared with seed noise ({self.trials} trials: a cell needs 2 or more seeds "
                    "and a within-cell spread)")
        verdict = "differ beyond seed noise" if self.differ else "do not differ beyond seed noise"
        return f"the {self.cells} cells {verdict} (one-way ANOVA of the final metric over cells: F = {self.f:.2f}, p = {self.p:.3g})"


def cells_differ(curves: Curves, alpha: float = 0.05) -> CellTest:
    """One-way ANOVA (``scipy.stats.f_oneway``) of the trials' final metric, grouped by cell.

    Undefined (NaN) without two cells or without a within-cell degree of freedom (one seed per
    cell), or when no cell's seeds differ at all.
    """
    from scipy import stats

    by = finals_by_cell(curves)
    groups = list(by.values())
    n = sum(len(v) for v in groups)
    within = seed_noise(by).sd  # NaN with one seed per cell
    if len(groups) < 2 or not within > 0:
        return CellTest(len(groups), n, math.nan, math.nan, alpha)
    r = stats.f_oneway(*groups)
    return CellTest(len(groups), n, float(r.statistic), float(r.pvalue), alpha)


@dataclass
class Plan:
    rows: list[Row]
    settings: list[Setting]
    curves: Curves
    orders: int
    concurrency: int
    top_k: int
    cells: dict[str, float]  # cell → grid mean of the final metric (seeds pooled), best first
    noise: float  # standard error of a cell's mean over its seeds
    recommended: Optional[int]  # index into rows
    min_best_kept: float = 0.0
    timing: str = "docs"
    signal: Optional[CellTest] = None  # whether the cells differ beyond seed noise (None: not tested)

    @property
    def best_cell(self) -> str:
        return next(iter(self.cells))


def finals_by_cell(curves: Curves) -> dict[str, list[float]]:
    """Each cell's final metric values, one per seed."""
    by: dict[str, list[float]] = {}
    for c in curves.trials:
        by.setdefault(c.cell_key(), []).append(c.final)
    return by


def cell_means(curves: Curves) -> tuple[dict[str, float], float]:
    """Each cell's mean final metric over its seeds, best first, and the standard error of such a mean
    (the pooled within-cell SD, ``stats.seed_noise``, over the square root of the mean seeds per cell)."""
    by = finals_by_cell(curves)
    means = {k: float(np.mean(v)) for k, v in by.items()}
    ranked = dict(sorted(means.items(), key=lambda kv: kv[1], reverse=curves.mode == "max"))
    return ranked, seed_noise(by).sd / math.sqrt(np.mean([len(v) for v in by.values()]))


def score(curves: Curves, rep: Replay, cells: dict[str, float], top_k: int) -> tuple[float, bool, float, int]:
    """compute fraction, best kept, regret and top-k kept of one replay."""
    sign = 1 if curves.mode == "max" else -1
    spent = sum(rep.docs.get(c.trial_id, 0) for c in curves.trials)
    full = {c.cell_key() for c in curves.trials if rep.docs.get(c.trial_id, 0) >= c.budget}
    best = next(iter(cells))
    survivors = [k for k in cells if k in full]  # best first
    regret = sign * (cells[best] - cells[survivors[0]]) if survivors else float("nan")
    top = list(cells)[:top_k]
    return spent / sum(c.budget for c in curves.trials), best in full, regret, sum(k in full for k in top)


def plan(curves: Curves, settings: Optional[list[Setting]] = None, orders: int = 20, concurrency: Optional[int] = None,
         top_k: int = 3, seed: int = 0, min_best_kept: float = 0.0, timing: Optional[str] = None,
         progress: Optional[Callable[[int, int], None]] = None, alpha: float = 0.05) -> Plan:
    """Replay every setting over ``orders`` random arrival orders of the trials; rows in ``settings`` order.

    ``timing`` (see ``replay``): default ``"seconds"`` when every curve has recorded times, else ``"docs"``.
    No setting is recommended unless the cells differ beyond seed noise (``cells_differ`` at ``alpha``).
    """
    incomplete = [c.name for c in curves.trials if not c.complete]
    if incomplete:
        raise PlanError(f"{len(incomplete)} trials did not train their full budget ({', '.join(incomplete[:5])}"
                        f"{'…' if len(incomplete) > 5 else ''}): plan needs the full curves of a pilot run without early stopping")
    if orders < 1 or top_k < 1 or (concurrency is not None and concurrency < 1):
        raise PlanError("--orders, --top-k and --concurrency must be >= 1")
    concurrency = concurrency or curves.concurrency or 1
    if timing is None:
        timing = "seconds" if all(c.seconds for c in curves.trials) else "docs"
    if timing not in ("docs", "seconds"):
        raise PlanError(f"--timing: docs or seconds, got {timing!r}")
    budget = curves.budget
    settings = settings or settings_grid(curves.steps(), budget)
    cells, noise = cell_means(curves)
    rng = np.random.default_rng(seed)
    perms = [rng.permutation(len(curves.trials)).tolist() for _ in range(orders)]
    rows = []
    for i, s in enumerate(settings):
        outcomes = [score(curves, replay(curves, s.build(curves.metric, curves.mode, budget), perm, concurrency, seed + j, timing),
                          cells, top_k) for j, perm in enumerate(perms)]
        fr, kept, regret, topk = (np.array(x, dtype=float) for x in zip(*outcomes))
        rows.append(Row(s.name, dict(s.params), float(fr.mean()), float(kept.mean()), float(np.nanmean(regret)), float(topk.mean())))
        if progress:
            progress(i + 1, len(settings))
    signal = cells_differ(curves, alpha)
    chosen = recommend(rows, noise, min_best_kept) if signal.differ else None
    return Plan(rows, settings, curves, orders, concurrency, min(top_k, len(cells)), cells, noise, chosen, min_best_kept, timing,
                signal)


def recommend(rows: list[Row], noise: float, min_best_kept: float = 0.0) -> Optional[int]:
    """The cheapest scheduler whose mean regret is within seed noise and that keeps the best cell in at least
    ``min_best_kept`` of the orders (ties: the best kept more often); None if none saves compute."""
    ok = [i for i, r in enumerate(rows) if r.scheduler != "none" and r.regret <= (noise if math.isfinite(noise) else 0.0)
          and r.best_kept >= min_best_kept]
    if not ok:
        return None
    i = min(ok, key=lambda i: (round(rows[i].compute_fraction, 6), -rows[i].best_kept, rows[i].regret))
    return i if rows[i].compute_fraction < 1.0 else None
