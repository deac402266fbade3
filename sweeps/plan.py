"""``ranksweep plan``: what early stopping would have saved and lost on a sweep already run to its full budget.

A pilot grid trained to the full budget records every trial's learning curve (the selection metric
at every evaluation, step = documents seen). ``replay`` drives Ray Tune's own scheduler classes
(``AsyncHyperBandScheduler`` for ASHA and asynchronous HyperBand, ``MedianStoppingRule``) with those
recorded results, in a simulated arrival order: ``concurrency`` trials train at once, each result
arriving as long after its trial's start as it did in the recorded sweep (or, without recorded
times, all at the same speed: a result at ``d`` documents arrives ``d`` after its start), and a trial
that is stopped or finishes hands its slot to the next one. With equal speeds ASHA's decisions do not
depend on the concurrency (every trial reaches each rung after every trial started before it); with
recorded times they do, since settings train and evaluate at different speeds. Nothing of
the schedulers is re-implemented; the simulation only decides the order in which they see results.

For each scheduler setting, averaged over several random arrival orders (asynchronous decisions
depend on the order), ``plan`` gives:

- ``compute_fraction``: the training documents the scheduler would have spent, over the grid's;
- ``best_kept``: how often (a fraction of the orders) the grid's best cell (seeds pooled, by the
  final value of the selection metric) had a trial that trained its full budget;
- ``regret``: the best cell's grid mean minus that of the best cell that kept a full-budget trial
  (for ``mode: min`` the other way round): 0 when the best is kept, never negative;
- ``topk_kept``: how many of the grid's top-k cells kept a full-budget trial.

The recommended setting is the cheapest whose mean regret is within seed noise (the standard error
of a cell's mean over its seeds, from the pooled within-cell variance of the final metric) and,
optionally, that keeps the best cell itself in at least ``min_best_kept`` of the orders. Regret
within noise is only a criterion when the cells differ by more than noise: a pilot whose cells do
not (a one-way ANOVA of the final metric over cells, ``cells_differ``, not significant at
``alpha``), or that has no seed noise to compare them with (one seed per cell), gives no
recommendation, since any scheduler keeps "a cell within noise of the best" when every cell is one.
"""

from __future__ import annotations

import heapq
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
from ray.tune.schedulers import TrialScheduler

from ranksweep.core.errors import RanksweepError
from ranksweep.core.config import resolve_trial

from .runs import SweepReader, cell_label, count_trials, mlflow_key
from .schedulers import early_stopping
from .stats import seed_noise
from .tuner import max_budget

KEYS = ("scheduler", "params", "compute_fraction", "best_kept", "regret", "topk_kept")


class PlanError(RanksweepError, ValueError):
    """A sweep ``plan`` cannot replay; the message names why."""


@dataclass
class Curve:
    """One trial's learning curve: ``points`` are ``(docs seen, metric)`` at every evaluation."""

    trial_id: str
    name: str
    cell: dict[str, Any]
    seed: int
    budget: int
    points: list[tuple[int, float]]
    start: float = 0.0  # when it started (the live arrival order)
    seconds: Optional[list[float]] = None  # seconds from its start to each point, as recorded

    def clock(self, timing: str) -> list[float]:
        """When each point arrives after the trial started: its documents seen, or its recorded seconds."""
        return list(self.seconds) if timing == "seconds" and self.seconds else [float(d) for d, _ in self.points]

    @property
    def final(self) -> float:
        return self.points[-1][1]

    @property
    def complete(self) -> bool:
        return bool(self.points) and self.points[-1][0] >= self.budget

    def cell_key(self) -> str:
        return json.dumps(self.cell, sort_keys=True, default=list)


@dataclass
class Curves:
    """The learning curves of one sweep, as read from MLflow or from a JSON file written by ``save``."""

    sweep: str
    metric: str
    mode: str
    trials: list[Curve]
    concurrency: Optional[int] = None  # the sweep's max_concurrent
    budget_key: str = "budget_docs"

    @classmethod
    def from_mlflow(cls, tracking_uri: str, experiment: str, sweep: Optional[str] = None, metric: Optional[str] = None,
                    include_stopped: bool = False) -> "Curves":
        """The curves of the latest sweep of ``experiment`` (or the one named ``sweep``).

        By default only trials that trained their own full budget (``runs.count_trials``); with
        ``include_stopped`` the trials a live scheduler stopped, too (their curves end where they stopped).
        """

        reader = SweepReader(tracking_uri, experiment, sweep)
        metric = metric or reader.spec_value("metric", "dev/nDCG@10")
        mode = reader.spec_value("mode", "max")
        counted = count_trials(reader.trials())
        runs = counted.full + (counted.stopped if include_stopped else [])
        if not runs:
            raise PlanError(f"sweep {reader.name!r} of experiment {experiment!r} has no trial that trained its full budget "
                            f"({len(counted.stopped)} stopped early, {len(counted.failed)} failed, {counted.running} running); "
                            "plan replays a pilot run with `scheduler: {name: none}`")
        trials = []
        for r in runs:
            hist = sorted((int(m.step), float(m.value), m.timestamp) for m in reader.client.get_metric_history(r.run_id, mlflow_key(metric)))
            if not hist:
                continue
            seconds = None
            if r.start_time and all(ts for _, _, ts in hist):  # Ray's result timestamps (1 s resolution)
                seconds = list(np.maximum.accumulate([max(1e-3, (ts - r.start_time) / 1000) for _, _, ts in hist]))
                seconds = [float(x) for x in seconds]
            trials.append(Curve(r.trial_id or r.name, r.name, r.cell, r.seed, r.budget or counted.budget,
                                [(d, v) for d, v, _ in hist], r.start_time, seconds))
        if not trials:
            raise PlanError(f"no trial of sweep {reader.name!r} recorded {metric!r} (known metrics: "
                            f"{sorted({k for r in runs for k in r.metrics})})")
        trials.sort(key=lambda c: (c.start, c.name))
        concurrency = reader.spec_value("max_concurrent")
        return cls(reader.name, metric, mode, trials, int(concurrency) if isinstance(concurrency, (int, float)) else None)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "Curves":
        try:
            d = json.loads(Path(path).read_text())
            d["trials"] = [Curve(**{**t, "points": [tuple(p) for p in t["points"]]}) for t in d["trials"]]
            return cls(**d)
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise PlanError(f"--curves {path}: not a curves file written by `ranksweep plan --save-curves` ({e})") from None

    @property
    def budget(self) -> int:
        return max(c.budget for c in self.trials)

    def steps(self) -> list[int]:
        """The evaluation steps (documents seen) of the sweep's full-budget curves."""
        return sorted({d for c in self.trials for d, _ in c.points})

    def live_order(self) -> list[int]:
        """The trials in the order they started."""
        return sorted(range(len(self.trials)), key=lambda i: (self.trials[i].start, self.trials[i].name))


# -- replay ------------------------------------------------------------------------------------------

class _Trial:
    """The part of Ray Tune's ``Trial`` a scheduler reads: its id and status."""

    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id
        self.status = "PENDING"

    def __repr__(self) -> str:
        return self.trial_id


class _Controller:
    """The part of Ray Tune's controller a scheduler calls: the live trials."""

    def __init__(self, trials: list[_Trial]) -> None:
        self.trials = trials

    def get_live_trials(self) -> list[_Trial]:
        return [t for t in self.trials if t.status in ("PENDING", "RUNNING", "PAUSED")]


@dataclass
class Replay:
    """What a scheduler did with a sweep's curves: documents each trial trained, and each decision."""

    docs: dict[str, int]
    decisions: list[tuple[str, int, str]]  # (trial id, docs seen, CONTINUE | STOP | PAUSE) in arrival order
    beyond_record: list[str] = field(default_factory=list)  # trials the scheduler let run past their recorded curve


def replay(curves: Curves, scheduler, order: Optional[list[int]] = None, concurrency: int = 1, seed: int = 0,
           timing: str = "docs") -> Replay:
    """Feed ``curves`` to a fresh Ray Tune ``scheduler`` (``metric`` and ``mode`` set) as a live sweep would.

    ``order`` is the order trials start in (default: the live order). With ``timing="docs"`` every
    trial trains at the same speed, a result at ``d`` documents arriving ``d`` after its start; with
    ``"seconds"`` each result arrives as long after its start as it did in the recorded run (trials
    of different settings train and evaluate at different speeds). ``seed`` seeds NumPy's global
    generator, which ``AsyncHyperBandScheduler`` uses to put trials into brackets (restored after).
    """

    order = curves.live_order() if order is None else list(order)
    trials = [_Trial(curves.trials[i].trial_id) for i in order]
    curve_of = [curves.trials[i] for i in order]
    clock = [c.clock(timing) for c in curve_of]
    controller = _Controller(trials)
    rng_state = np.random.get_state()
    np.random.seed(seed)
    try:
        queue: list[tuple[int, int]] = [(k, 0) for k in range(len(trials))]  # (trial, index of its next point)
        added: set[int] = set()
        events: list[tuple[float, int, int, int]] = []  # (time, tie-break, trial, point index)
        docs: dict[str, int] = {}
        decisions: list[tuple[str, int, str]] = []
        beyond: list[str] = []
        tick = 0

        def start(now: float) -> None:
            nonlocal tick
            while queue and sum(t.status == "RUNNING" for t in trials) < concurrency:
                k, p = queue.pop(0)
                if k not in added:
                    scheduler.on_trial_add(controller, trials[k])
                    added.add(k)
                trials[k].status = "RUNNING"
                since = clock[k][p - 1] if p else 0.0
                heapq.heappush(events, (now + clock[k][p] - since, tick, k, p))
                tick += 1

        def end(k: int, result: dict) -> None:
            scheduler.on_trial_complete(controller, trials[k], result)
            trials[k].status = "TERMINATED"
            docs[trials[k].trial_id] = int(result["docs_seen"])

        start(0)
        while events:
            now, _, k, p = heapq.heappop(events)
            d, v = curve_of[k].points[p]
            result = {"docs_seen": d, curves.metric: v, "training_iteration": p + 1}
            decision = scheduler.on_trial_result(controller, trials[k], result)
            decisions.append((trials[k].trial_id, d, decision))
            last = p + 1 == len(curve_of[k].points)
            if decision == TrialScheduler.STOP or (last and d >= curve_of[k].budget):
                end(k, result)
            elif last:  # a live scheduler's curve that ends before its budget, and this scheduler would go on
                beyond.append(trials[k].trial_id)
                end(k, result)
            elif decision == TrialScheduler.PAUSE:
                trials[k].status = "PAUSED"
                queue.append((k, p + 1))
            else:
                heapq.heappush(events, (now + clock[k][p + 1] - clock[k][p], tick, k, p + 1))
                tick += 1
            start(now)
        return Replay(docs, decisions, beyond)
    finally:
        np.random.set_state(rng_state)


# -- scheduler settings --------------------------------------------------------------------------------

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


# -- the plan ------------------------------------------------------------------------------------------------

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


# -- what a sweep would cost -------------------------------------------------------------------------------

def sweep_docs(sweep) -> tuple[int, int]:
    """A sweep's trial count and the training documents of all its trials (each trial's own budget)."""
    if sweep.fields.search == "grid":
        per = [resolve_trial(sweep.base, cell).budget_docs for cell in sweep.space.grid()]
        return len(per) * len(sweep.seeds), sum(per) * len(sweep.seeds)
    n = sweep.fields.num_samples

    return n, n * max_budget(sweep)


def cost_lines(p: Plan, sweep, gpus: float, docs_per_s: float) -> list[str]:
    """GPU-hours and wall-clock hours of ``sweep`` on ``gpus`` GPUs, without and with the recommended scheduler."""
    n, docs = sweep_docs(sweep)
    per_trial = sweep.fields.resources.gpu or 1.0
    trial_hours = docs / docs_per_s / 3600
    at_once = max(1.0, gpus / per_trial)
    lines = [f"{sweep.name}: {n} trials, {docs:,} training documents, at {docs_per_s:g} docs/s per trial on "
             f"{per_trial:g} GPU each, {gpus:g} GPUs ({at_once:g} trials at once):",
             f"  without early stopping: {trial_hours * per_trial:,.1f} GPU-hours, {trial_hours / at_once:,.1f} h wall-clock"]
    if p.recommended is None:
        if p.signal is not None and not p.signal.differ:
            lines.append(f"  no recommendation: on the pilot {p.signal.describe()}, so it cannot tell what a scheduler keeps")
        else:
            lines.append("  no scheduler setting stays within seed noise of the best cell on the pilot: run the grid")
        return lines
    row, s = p.rows[p.recommended], p.settings[p.recommended]
    spec = s.spec(p.curves.budget, max_budget(sweep))
    lines.append(f"  with scheduler {json.dumps(spec)} (the pilot's {row.compute_fraction:.0%} of the compute): "
                 f"{trial_hours * per_trial * row.compute_fraction:,.1f} GPU-hours, "
                 f"{trial_hours / at_once * row.compute_fraction:,.1f} h wall-clock")
    lines.append("  (training documents only; evaluations and trial start-up come on top)")
    return lines


# -- output ----------------------------------------------------------------------------------------------

def _params(row: Row) -> str:
    short = {"grace_docs": "grace", "reduction_factor": "rf", "brackets": "brackets", "min_samples_required": "min_samples"}
    return " ".join(f"{short.get(k, k)}={v:g}" if isinstance(v, (int, float)) else f"{k}={v}" for k, v in row.params.items()) or "-"


def format_plan(p: Plan, fmt: str = "table") -> str:
    if fmt == "json":
        return json.dumps([r.as_dict() for r in p.rows], indent=1)

    c = p.curves
    best = next(t.cell for t in c.trials if t.cell_key() == p.best_cell)  # in the sweep's axis order
    lines = [f"sweep {c.sweep!r}: {len(c.trials)} full-budget trials in {len(p.cells)} cells, budget {c.budget:,} docs, "
             f"evaluated at {len(c.steps())} steps; {c.metric} ({c.mode})",
             f"replayed through Ray Tune's schedulers over {p.orders} arrival orders, {p.concurrency} trials at once, "
             + ("each result arriving as long after its trial's start as it did in the sweep" if p.timing == "seconds"
                else "all training at the same speed"),
             f"best cell: {cell_label(best)} = {p.cells[p.best_cell]:.4f}; seed noise (standard error of a cell mean) "
             f"{p.noise:.4f}"]
    if p.signal is not None:
        lines.append(p.signal.describe())
    lines.append("")
    head = f"{'':1} {'scheduler':<10} {'params':<32} {'compute':>8} {'best kept':>9} {'regret':>8} {'top-' + str(p.top_k) + ' kept':>10}"
    lines += [head, "-" * len(head)]
    for i, r in enumerate(p.rows):
        mark = "*" if i == p.recommended else " "
        lines.append(f"{mark} {r.scheduler:<10} {_params(r):<32} {r.compute_fraction:>8.3f} {r.best_kept:>9.2f} {r.regret:>8.4f} "
                     f"{r.topk_kept:>6.2f}/{p.top_k}")
    lines.append("")
    kept = f" and keeps the best cell in at least {p.min_best_kept:.0%} of the orders" if p.min_best_kept else ""
    if p.recommended is None and p.signal is not None and not p.signal.differ:
        lines.append("recommended: nothing. Regret within seed noise means nothing when the cells themselves are within it: "
                     "any scheduler keeps a cell as good as the best. Pilot on settings whose trials learn and differ "
                     "(more documents, more seeds), then plan again")
    elif p.recommended is None:
        lines.append(f"recommended: no scheduler (none stays within seed noise of the best cell{kept} at less than the grid's compute)")
    else:
        r, s = p.rows[p.recommended], p.settings[p.recommended]
        lines.append(f"recommended (*): {r.scheduler} {_params(r)}: {r.compute_fraction:.1%} of the grid's training documents, "
                     f"best cell kept in {r.best_kept:.0%} of the orders, mean regret {r.regret:.4f} (noise {p.noise:.4f})")
        lines.append(f"  in a sweep spec: scheduler: {json.dumps(s.spec(c.budget))}  (grace as {s.params['grace_docs'] / c.budget:.3g} "
                     "of the budget)")
    return "\n".join(lines)
