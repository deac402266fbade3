"""The numbers of a report: marginal effects per axis, cells, equivalence to the best cell,
correlations with the teacher's entropy and the student's diameter, per-query values, learning
curves and parameter importance, as one typed ``ReportData``."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from ranksweep.core.errors import RanksweepError
from ranksweep.core.evaluation import DIAMETER
from ranksweep.core.registry import unknown_name_message
from ranksweep.core.training import ENTROPY

from ..runs import TrialRun, cell_label
from ..stats import (StatsError, correlation, detectable_difference, equivalence, equivalence_margin, finite, marginal, mean_ci,
                     seed_noise, tost_power)
from .read import SweepData

logger = logging.getLogger(__name__)

#: metric-key prefixes that are not an eval collection's measures
NON_TEST_PREFIXES = ("dev", "train", "probe", "teacher", "bm25")


def slug(s: str) -> str:
    """``s`` as a file-name part (the per-axis tables and figures are named by it)."""
    return re.sub(r"[^A-Za-z0-9]+", "_", s).strip("_")


class ReportError(RanksweepError, ValueError):
    """The sweep cannot give the report asked for; the message names what is missing."""


@dataclass
class ReportData:
    """Every number of a report; ``to_dict()`` is what ``report.json`` holds."""

    experiment: str
    sweep: str
    tracking_uri: str
    search: str
    selection: str  # the sweep's model-selection metric (on dev)
    mode: str  # max or min
    metric: str  # the effectiveness metric of tables, scatter plots and equivalence tests
    test_metrics: list[str]  # the eval collections' metric keys
    budget_docs: int
    axes: list[str]
    color_by: Optional[str]
    level: float  # confidence level of the intervals
    counts: dict[str, int]  # finished / stopped_early / failed / running
    failed: list[dict[str, str]]  # run, error
    reference: dict[str, float]  # teacher/… and bm25/… reference metrics
    cells: list[dict[str, Any]]  # per cell: label, params, seeds, mean/CI per metric
    stopped_cells: list[str]  # cells whose every trial was stopped early
    marginal: dict[str, Any]  # axis -> level -> metric -> mean and CI
    correlations: dict[str, dict[str, float]]  # ENTROPY / DIAMETER -> pearson, spearman, n, p-values
    points: list[dict[str, Any]]  # one per finished trial: metric, entropy, diameter, group
    per_query: dict[str, Any]  # per-query measure against per-query teacher entropy
    equivalence: dict[str, Any]  # best cell and TOST of every other cell against it
    curves: dict[str, Any]  # metric, top and stopped runs, series per run
    importance: dict[str, Any]  # fANOVA importances, or why they were skipped
    learning: dict[str, Any] = dataclasses.field(default_factory=dict)  # each trial's selection metric at docs 0 and at the end
    power: dict[str, Any] = dataclasses.field(default_factory=dict)  # seed noise, each axis's effect and the smallest it could show

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def test_metrics(runs: list[TrialRun]) -> list[str]:
    """Metric keys of the evaluation collections (``beir-scifact-test/nDCG@10`` …), in a stable order."""
    keys = {k for r in runs for k in r.metrics if k.count("/") == 1 and k.split("/")[0] not in NON_TEST_PREFIXES}
    return sorted(keys, key=lambda k: (k.split("/")[0], k.split("/")[1] != "nDCG@10", k))


def _level_key(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=list)


def _axis_levels(axis: dict, runs: list[TrialRun]) -> list[Any]:
    """An axis's values in the search space's order (values seen in runs but not listed go last)."""
    seen = {_level_key(r.cell[axis["key"]]): r.cell[axis["key"]] for r in runs if axis["key"] in r.cell}
    listed = [_level_key(v) for v in axis.get("values") or []]
    return [seen[k] for k in listed if k in seen] + [seen[k] for k in sorted(seen) if k not in listed]


def _fmt_level(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return ",".join(str(x) for x in v)
    return str(v)


def _marginals(d: SweepData, metrics: list[str], level: float) -> dict[str, Any]:
    out = {}
    for axis in d.axes:
        key = axis["key"]
        runs = [r for r in d.finished if key in r.cell]
        stopped = [r for r in d.stopped if key in r.cell]
        if axis.get("dist"):  # continuous: one value per trial, a correlation rather than levels
            xs = [float(r.cell[key]) for r in runs]
            out[key] = {"continuous": True, "log": axis["dist"] in ("loguniform", "logint"), "n": len(runs),
                        "correlations": {m: correlation(xs, [r.metrics.get(m, math.nan) for r in runs]).as_dict() for m in metrics},
                        "points": {"x": xs, **{m: [r.metrics.get(m) for r in runs] for m in metrics}}}
            continue
        levels = []
        for v in _axis_levels(axis, runs + stopped):
            k = _level_key(v)
            these = [r for r in runs if _level_key(r.cell[key]) == k]
            ms = marginal({m: finite([r.metrics.get(m) for r in these]) for m in metrics}, level)
            levels.append({"value": v, "label": _fmt_level(v), "n": len(these),
                           "stopped": sum(_level_key(r.cell[key]) == k for r in stopped),
                           "metrics": {m: ci.as_dict() for m, ci in ms.items()}})
        out[key] = {"continuous": False, "levels": levels, "inactive": len(d.finished) - len(runs), "n": len(runs)}
    return out


def _cells(d: SweepData, metrics: list[str], mode: str, metric: str) -> list[dict]:
    groups: dict[str, list[TrialRun]] = defaultdict(list)
    for r in d.finished:
        groups[r.cell_key()].append(r)
    stopped: dict[str, int] = defaultdict(int)
    for r in d.stopped:
        stopped[r.cell_key()] += 1
    rows = []
    for key, runs in groups.items():
        vals = {m: finite([r.metrics.get(m) for r in runs]) for m in metrics}
        rows.append({"key": key, "cell": runs[0].cell, "label": cell_label(runs[0].cell), "n": len(runs),
                     "stopped": stopped.get(key, 0), "seeds": sorted(r.seed for r in runs), "runs": [r.name for r in runs],
                     "values": vals, "mean": {m: (float(np.mean(v)) if v else math.nan) for m, v in vals.items()},
                     "std": {m: (float(np.std(v, ddof=1)) if len(v) > 1 else math.nan) for m, v in vals.items()}})
    sign = -1 if mode == "max" else 1
    rows.sort(key=lambda c: (math.isnan(c["mean"][metric]), sign * (c["mean"][metric] if not math.isnan(c["mean"][metric]) else 0)))
    return rows


def _equivalence(cells: list[dict], stopped_cells: dict[str, str], metric: str, margin: float, alpha: float, mode: str) -> dict:
    values = {c["label"]: c["values"][metric] for c in cells} | {label: [] for label in stopped_cells.values()}
    ok = {k: v for k, v in values.items() if len(v) >= 2}
    short = [f"{k} ({len(v)} finished seed{'s' if len(v) != 1 else ''})" for k, v in values.items() if k not in ok]
    base = {"metric": metric, "margin": margin, "alpha": alpha, "excluded": short}
    try:  # with fewer than 2 testable cells, the refusal names every cell short of seeds
        eq = equivalence(ok if len(ok) >= 2 else values, metric, margin, alpha, mode)
    except StatsError as e:
        logger.warning("equivalence: %s", e)
        return {**base, "refused": str(e)}
    out = {**base, **eq.as_dict()}
    if short:
        best_cell = next(c for c in cells if c["label"] == eq.best)
        better = [c["label"] for c in cells if c["label"] not in ok and c["values"][metric]
                  and ((c["mean"][metric] > best_cell["mean"][metric]) == (mode == "max"))]
        out["untested_better"] = better
    return out


def _learning(d: SweepData, cells: list[dict]) -> dict:
    """Did every trial beat its own start? The selection metric at docs 0 and at the end of each finished
    trial, against the seed noise of the end value (pooled within-cell SD over cells with 2+ seeds)."""
    sel = d.selection
    noise = seed_noise({c["label"]: c["values"][sel] for c in cells})
    sign = 1 if d.mode == "max" else -1
    rows = []
    for r in d.finished:
        pts = d.curves.get(r.run_id) or []
        start = next((v for s, v in pts if s == 0), None)
        end = r.metrics.get(sel)
        if start is None or end is None:
            continue
        rows.append({"run": r.name, "label": cell_label(r.cell), "start": start, "end": end, "gain": sign * (end - start)})
    gains = [x["gain"] for x in rows]
    above = sum(g > noise.sd for g in gains) if math.isfinite(noise.sd) else None
    return {"metric": sel, "noise": noise.as_dict(), "trials": rows, "n": len(rows), "without_start": len(d.finished) - len(rows),
            "above_noise": above, "min_gain": min(gains) if gains else None, "median_gain": float(np.median(gains)) if gains else None}


def _power(d: SweepData, cells: list[dict], metric: str, margin: float, alpha: float, power: float = 0.8) -> dict:
    """What this sweep could have seen in ``metric``: its seed noise; for each categorical axis the largest
    difference between its levels' means with a one-way ANOVA over the levels (the other axes pooled,
    their effects counted as noise) and the smallest difference between two levels that a two-sided
    t-test would detect at ``alpha`` with ``power``; and the power of the equivalence tests at ``margin``."""
    from scipy import stats

    noise = seed_noise({c["label"]: c["values"][metric] for c in cells})
    axes = {}
    for axis in d.axes:
        if axis.get("dist"):
            continue
        key = axis["key"]
        groups = {}
        for v in _axis_levels(axis, d.finished):
            vals = finite([r.metrics.get(metric) for r in d.finished if key in r.cell and _level_key(r.cell[key]) == _level_key(v)])
            if vals:
                groups[_fmt_level(v)] = vals
        if len(groups) < 2:
            continue
        means = {k: float(np.mean(v)) for k, v in groups.items()}
        within = seed_noise(groups)
        n = min(len(v) for v in groups.values())
        f = p = math.nan
        if within.df > 0 and within.sd > 0:
            res = stats.f_oneway(*groups.values())
            f, p = float(res.statistic), float(res.pvalue)
        hi, lo = max(means, key=means.get), min(means, key=means.get)
        axes[key] = {"levels": {k: len(v) for k, v in groups.items()}, "means": means, "largest_difference": means[hi] - means[lo],
                     "between": [hi, lo], "f": f, "p": p, "exceeds_noise": bool(math.isfinite(p) and p < alpha),
                     "within_sd": within.sd, "detectable": detectable_difference(within.sd, n, n, alpha, power), "n_min": n}
    seeds = [c["n"] for c in cells if c["n"] >= 2]
    k = min(seeds) if seeds else 0
    eq = {"margin": margin, "seeds": k, "power": tost_power(margin, noise.sd, k, k, alpha),
          "smallest_margin": equivalence_margin(noise.sd, k, k, alpha, power),
          "cell_detectable": detectable_difference(noise.sd, k, k, alpha, power)}
    return {"metric": metric, "alpha": alpha, "power": power, "noise": noise.as_dict(), "axes": axes, "equivalence": eq}


def _per_query(d: SweepData, measure: str, color_by: Optional[str]) -> dict:
    rows = []
    for r in d.finished:
        pq = d.per_query.get(r.run_id)
        if not pq:
            continue
        h = [v.get("teacher_entropy", math.nan) for v in pq.values()]
        y = [v.get(measure, math.nan) for v in pq.values()]
        c = correlation(h, y)
        if c.n == 0:
            continue
        rows.append({"run": r.name, "run_id": r.run_id, "label": cell_label(r.cell), "group": _fmt_level(r.cell.get(color_by)) if color_by else "",
                     **c.as_dict()})
    rhos = finite([x["spearman"] for x in rows])
    return {"measure": measure, "trials": rows, "spearman_mean": mean_ci(rhos).as_dict(),
            "pearson_mean": mean_ci(finite([x["pearson"] for x in rows])).as_dict(),
            "significant": sum(1 for x in rows if x["spearman_p"] < 0.05)}


def _importance(d: SweepData, metric: str, min_trials: int, mode: str) -> dict:
    if d.search not in ("optuna", "random"):
        return {"skipped": f"the sweep searched a {d.search}: parameter importance is for Optuna/random searches "
                           "(the marginal effects above cover a grid)"}
    runs = [r for r in d.finished if math.isfinite(r.metrics.get(metric, math.nan))]
    if len(runs) < min_trials:
        return {"skipped": f"{len(runs)} finished trials with {metric}; parameter importance needs at least {min_trials}"}
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    dists = {}
    for a in d.axes:
        if a.get("dist") in ("uniform", "loguniform"):
            dists[a["key"]] = FloatDistribution(float(a["low"]), float(a["high"]), log=a["dist"] == "loguniform")
        elif a.get("dist") in ("int", "logint"):
            dists[a["key"]] = IntDistribution(int(a["low"]), int(a["high"]), log=a["dist"] == "logint")
        else:
            dists[a["key"]] = CategoricalDistribution([_level_key(v) for v in a.get("values") or []])
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    for r in runs:
        params = {k: (_level_key(v) if isinstance(dists.get(k), CategoricalDistribution) else v) for k, v in r.cell.items() if k in dists}
        study.add_trial(optuna.trial.create_trial(params=params, distributions={k: dists[k] for k in params}, value=r.metrics[metric]))
    everywhere = [k for k in dists if all(k in r.cell for r in runs)]
    if not everywhere:
        return {"skipped": "no axis is set in every trial (all are conditional); importance is undefined"}
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    imp = optuna.importance.get_param_importances(study, evaluator=evaluator, params=everywhere)
    return {"method": "fANOVA (optuna.importance.FanovaImportanceEvaluator, seed 0)", "metric": metric, "trials": len(runs),
            "importances": dict(imp), "conditional_axes_left_out": [k for k in dists if k not in everywhere]}


def top_trials(d: SweepData, k: int) -> list[TrialRun]:
    """The ``k`` finished trials best by the selection metric."""
    ranked = sorted([r for r in d.finished if math.isfinite(r.metrics.get(d.selection, math.nan))],
                    key=lambda r: r.metrics[d.selection], reverse=d.mode == "max")
    return ranked[:k]


def default_metric(d: SweepData) -> str:
    """The selection metric's measure on the first evaluation collection, else the selection metric."""
    measure = d.selection.split("/", 1)[1]
    return next((m for m in test_metrics(d.finished) if m.endswith("/" + measure)), d.selection)


def build(d: SweepData, metric: Optional[str] = None, margin: float = 0.01, alpha: float = 0.05, level: float = 0.95,
          top_k: int = 5, color_by: Optional[str] = None, min_importance_trials: int = 10) -> ReportData:
    """Every number of the report, from what ``read_sweep`` read (plus per-query rows and curves)."""
    tests = test_metrics(d.finished)
    metric = metric or default_metric(d)
    every = [d.selection, *tests, ENTROPY, DIAMETER]
    if not any(metric in r.metrics for r in d.finished):
        known = sorted({k for r in d.finished for k in r.metrics})
        raise ReportError(f"no finished trial has metric {metric!r}; known: {known}")
    if metric not in every:
        every.insert(1, metric)
    axis_keys = [a["key"] for a in d.axes]
    categorical = [a["key"] for a in d.axes if not a.get("dist")]
    if color_by is not None and color_by not in axis_keys:
        raise ReportError(unknown_name_message("axis for --color-by", color_by, axis_keys))
    if color_by is None and categorical:
        color_by = "sampler.name" if "sampler.name" in categorical else categorical[0]
    cells = _cells(d, every, d.mode, metric)
    stopped_only = {}
    finished_keys = {c["key"] for c in cells}
    for r in d.stopped:
        if r.cell_key() not in finished_keys:
            stopped_only[r.cell_key()] = cell_label(r.cell)
    ref = {}
    for r in d.finished:
        for k, v in r.metrics.items():
            if k.split("/")[0] in ("teacher", "bm25") and k not in ref:
                ref[k] = v
    points = [{"run": r.name, "label": cell_label(r.cell), "group": _fmt_level(r.cell.get(color_by)) if color_by else "",
               "metric": r.metrics.get(metric), "entropy": r.metrics.get(ENTROPY), "diameter": r.metrics.get(DIAMETER)}
              for r in d.finished]
    top = top_trials(d, top_k)
    measure = metric.split("/", 1)[1]
    return ReportData(**{
        "experiment": d.experiment, "sweep": d.sweep, "tracking_uri": d.tracking_uri, "search": d.search,
        "selection": d.selection, "mode": d.mode, "metric": metric, "test_metrics": tests, "budget_docs": d.budget,
        "axes": axis_keys, "color_by": color_by, "level": level,
        "counts": {"finished": len(d.finished), "stopped_early": len(d.stopped), "failed": len(d.failed), "running": d.running},
        "failed": [{"run": r.name, "error": (r.error or "")[-300:]} for r in d.failed],
        "reference": dict(sorted(ref.items())),
        "cells": [{k: v for k, v in c.items() if k != "key"} for c in cells],
        "stopped_cells": sorted(stopped_only.values()),
        "marginal": _marginals(d, every, level),
        "correlations": {
            ENTROPY: correlation([p["entropy"] if p["entropy"] is not None else math.nan for p in points],
                                 [p["metric"] if p["metric"] is not None else math.nan for p in points]).as_dict(),
            DIAMETER: correlation([p["diameter"] if p["diameter"] is not None else math.nan for p in points],
                                  [p["metric"] if p["metric"] is not None else math.nan for p in points]).as_dict(),
        },
        "points": points,
        "per_query": _per_query(d, measure, color_by),
        "equivalence": _equivalence(cells, stopped_only, metric, margin, alpha, d.mode),
        "curves": {"metric": d.selection, "top": [r.name for r in top], "stopped": [r.name for r in d.stopped],
                   "series": {r.name: d.curves.get(r.run_id, []) for r in top + d.stopped}},
        "importance": _importance(d, d.selection, min_importance_trials, d.mode),
        "learning": _learning(d, cells),
        "power": _power(d, cells, metric, margin, alpha),
    })
