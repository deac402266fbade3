"""``ranksweep report``: what each ablation axis does, read from a sweep's MLflow runs.

One call reads the sweep (``SweepReader``), computes every number (``build``), draws the figures
and writes ``report.html`` (self-contained: figures embedded), ``report.md``, ``report.json`` and
CSV tables into one folder::

    from ranksweep.sweeps.report import report
    rep = report("ranksweep-quickstart", "reports/quickstart", tracking_uri="sqlite:///mlflow.db")
    rep.data["equivalence"]["equivalent_to_best"]

Which runs count. Marginal effects, correlations and equivalence tests use the trials that
trained their whole budget (a trial stopped early by the scheduler has no test metrics and a
shorter training). Stopped trials are counted per axis value and drawn in the learning curves.
With ASHA the finished trials are the ones the scheduler let through, so marginal means are
conditional on surviving it; the report says how many were stopped next to every mean.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import logging
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ranksweep.core.evaluation import DIAMETER
from ranksweep.core.training import ENTROPY

from .runs import SweepReader, TrialRun, cell_label, count_trials, parse_value
from .stats import StatsError, correlation, equivalence, finite, marginal, mean_ci

logger = logging.getLogger(__name__)

NON_TEST_PREFIXES = ("dev", "train", "probe", "teacher", "bm25")


class ReportError(ValueError):
    """The sweep cannot give the report asked for; the message names what is missing."""


@dataclass
class Report:
    """Every number of a report (``data``, what ``report.json`` holds) and the files written."""

    data: dict[str, Any]
    out: Optional[Path] = None
    files: dict[str, Path] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


@dataclass
class SweepData:
    """What the report needs from MLflow, read once."""

    experiment: str
    sweep: str
    tracking_uri: str
    search: str
    selection: str
    mode: str
    budget: int
    axes: list[dict]
    running: int
    finished: list[TrialRun]
    stopped: list[TrialRun]
    failed: list[TrialRun]
    per_query: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # run_id -> qid -> column -> value
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # run_id -> (docs, value)


def _progress(items, desc: str, progress: bool):
    if not progress:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="run", leave=False)


def read_sweep(experiment: str, tracking_uri: str, sweep: Optional[str] = None, progress: bool = False) -> tuple[SweepReader, SweepData]:
    """The sweep's runs, split into finished (whole budget), stopped early and failed."""
    reader = SweepReader(tracking_uri, experiment, sweep)
    spec = reader.sweep_file()
    base = spec.get("base") or {}
    runs = reader.trials(statuses=None)
    logger.info("sweep %r of experiment %r: %d trial runs", reader.name, experiment, len(runs))
    counted = count_trials(runs, int(base.get("budget_docs") or parse_value(reader.params.get("spec.trial.budget_docs")) or 0))
    finished, stopped, failed, running, budget = counted.full, counted.stopped, counted.failed, counted.running, counted.budget
    if running:
        logger.warning("%d trials of sweep %r are still running; the report covers the ended ones", running, reader.name)
    axes = spec.get("space") or [{"key": k, "values": None, "dist": None} for k in json.loads(reader.params.get("axes", "[]"))]
    order = [a["key"] for a in axes]
    for r in runs:  # the cell in the space's axis order (MLflow keeps it sorted by key)
        r.cell = {**{k: r.cell[k] for k in order if k in r.cell}, **{k: v for k, v in r.cell.items() if k not in order}}
    data = SweepData(experiment, reader.name, tracking_uri, str(reader.spec_value("search", "grid")),
                     str(reader.spec_value("metric", "dev/nDCG@10")), str(reader.spec_value("mode", "max")), budget,
                     axes, running, finished, stopped, failed)
    return reader, data


def _read_per_query(reader: SweepReader, runs: list[TrialRun], name: str, progress: bool) -> dict[str, dict[str, dict[str, float]]]:
    out = {}
    for r in _progress(runs, f"per-query {name}", progress):
        text = reader.artifact_text(r.run_id, f"per_query/{name}.tsv")
        if text:
            out[r.run_id] = _parse_tsv(text)
    return out


def _parse_tsv(text: str) -> dict[str, dict[str, float]]:
    rows = list(csv.reader(io.StringIO(text), delimiter="\t"))
    if not rows:
        return {}
    head = rows[0]
    return {r[0]: {c: float(v) for c, v in zip(head[1:], r[1:])} for r in rows[1:] if r}


# ---------------------------------------------------------------------------------------------
# Numbers
# ---------------------------------------------------------------------------------------------


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
          top_k: int = 5, color_by: Optional[str] = None, min_importance_trials: int = 10) -> dict[str, Any]:
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
        from ranksweep.core.registry import unknown_name_message

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
    return {
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
    }


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 110, "axes.spines.top": False, "axes.spines.right": False, "font.size": 9,
                         "axes.titlesize": 9.5, "figure.constrained_layout.use": True})
    return plt


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", s).strip("_")


def _colors(groups: list[str]) -> dict[str, Any]:
    plt = _plt()
    cmap = plt.get_cmap("tab10")
    return {g: cmap(i % 10) for i, g in enumerate(sorted(set(groups)))}


def figures(r: dict, folder: Path, per_query: Optional[dict[str, dict[str, dict[str, float]]]] = None) -> list[dict]:
    """Draw every figure of report ``r`` as PNG into ``folder``; return ``[{name, title, path}]``.

    ``per_query`` (run id → query → column → value, as read by ``report``) feeds the per-query scatter.
    """
    plt = _plt()
    folder.mkdir(parents=True, exist_ok=True)
    out = []

    def save(fig, name: str, title: str) -> None:
        p = folder / f"{name}.png"
        fig.savefig(p, bbox_inches="tight")
        plt.close(fig)
        out.append({"name": name, "title": title, "path": p})

    metric, sel = r["metric"], r["selection"]
    panels = [sel] + ([metric] if metric != sel else []) + [ENTROPY, DIAMETER]
    for axis, m in r["marginal"].items():
        fig, axs = plt.subplots(1, len(panels), figsize=(3.1 * len(panels), 2.8), squeeze=False)
        for ax, key in zip(axs[0], panels):
            if m["continuous"]:
                ys = [np.nan if v is None else v for v in m["points"][key]]
                ax.scatter(m["points"]["x"], ys, s=14)
                if m["log"]:
                    ax.set_xscale("log")
                c = m["correlations"][key]
                ax.set_title(f"{key}\nSpearman ρ={c['spearman']:.2f}" if math.isfinite(c["spearman"]) else key)
            else:
                lv = m["levels"]
                means = [x["metrics"][key]["mean"] for x in lv]
                lo = [x["metrics"][key]["mean"] - x["metrics"][key]["low"] for x in lv]
                hi = [x["metrics"][key]["high"] - x["metrics"][key]["mean"] for x in lv]
                err = np.nan_to_num(np.array([lo, hi], dtype=float), nan=0.0)
                xs = np.arange(len(lv))
                ax.bar(xs, means, yerr=err, capsize=3, color="#4c72b0", alpha=0.85)
                ax.set_xticks(xs, [f"{x['label']}\n(n={x['n']})" for x in lv])
                finite_means = [v for v in means if math.isfinite(v)]
                if finite_means and key not in (ENTROPY, DIAMETER):
                    lows = [x["metrics"][key]["low"] for x in lv if math.isfinite(x["metrics"][key]["low"])]
                    bottom = min(finite_means + lows)
                    top = max(finite_means + [x["metrics"][key]["high"] for x in lv if math.isfinite(x["metrics"][key]["high"])])
                    pad = max(0.02, 0.15 * (top - bottom))
                    ax.set_ylim(max(0.0, bottom - pad), top + pad)
                ax.set_title(key)
            ax.set_xlabel(axis)
        fig.suptitle(f"Marginal effect of {axis} (mean, {round(100 * r['level'])}% CI over the other axes and seeds)")
        save(fig, f"marginal_{_slug(axis)}", f"Marginal effect of {axis}")

    pts = [p for p in r["points"] if p["metric"] is not None]
    if pts:
        colors = _colors([p["group"] for p in pts])
        fig, axs = plt.subplots(1, 2, figsize=(8, 3.2))
        for ax, key, xlabel in ((axs[0], "entropy", f"teacher entropy ({ENTROPY}, nats)"), (axs[1], "diameter", f"student diameter ({DIAMETER})")):
            for g, c in colors.items():
                sub = [p for p in pts if p["group"] == g and p[key] is not None]
                ax.scatter([p[key] for p in sub], [p["metric"] for p in sub], s=22, color=c, label=g or None)
            cr = r["correlations"][ENTROPY if key == "entropy" else DIAMETER]
            stat = f"Pearson r={cr['pearson']:.2f}, Spearman ρ={cr['spearman']:.2f} (n={cr['n']})" if math.isfinite(cr["pearson"]) else f"n={cr['n']}"
            ax.set_title(stat)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(metric)
        if r["color_by"]:
            axs[1].legend(title=r["color_by"], fontsize=7, title_fontsize=7, frameon=False, loc="best")
        fig.suptitle("Locality and entropy: final effectiveness per trial")
        save(fig, "locality_entropy", "Final effectiveness against teacher entropy and student diameter")

    pq = r["per_query"]
    if pq["trials"]:
        best = pq["trials"][0]
        for row in pq["trials"]:
            if r["cells"] and row["label"] == r["cells"][0]["label"]:
                best = row
                break
        fig, axs = plt.subplots(1, 2, figsize=(8, 3.2))
        q = (per_query or {}).get(best["run_id"], {}).values()
        axs[0].scatter([v.get("teacher_entropy", math.nan) for v in q], [v.get(pq["measure"], math.nan) for v in q], s=10, alpha=0.6)
        axs[0].set_xlabel("teacher entropy of the query (BM25 top-G, nats)")
        axs[0].set_ylabel(f"student {pq['measure']} of the query")
        axs[0].set_title(f"{best['run']}: ρ={best['spearman']:.2f}, {best['n']} queries")
        groups = sorted({row["group"] for row in pq["trials"]})
        colors = _colors(groups)
        for i, g in enumerate(groups):
            ys = [row["spearman"] for row in pq["trials"] if row["group"] == g]
            axs[1].scatter(np.full(len(ys), i) + np.linspace(-0.12, 0.12, len(ys)) if len(ys) > 1 else [i], ys, color=colors[g], s=22)
        axs[1].axhline(0, color="grey", lw=0.8)
        axs[1].set_xticks(range(len(groups)), groups)
        axs[1].set_xlabel(r["color_by"] or "")
        axs[1].set_ylabel("Spearman ρ per trial")
        axs[1].set_title(f"mean ρ={pq['spearman_mean']['mean']:.2f} over {len(pq['trials'])} trials")
        fig.suptitle("Per-query entropy–performance correlation")
        save(fig, "per_query_entropy", "Per-query entropy–performance correlation")

    eq = r["equivalence"]
    if "to_best" in eq and eq["to_best"]:
        rows = eq["to_best"]
        fig, ax = plt.subplots(figsize=(6.5, 0.4 * len(rows) + 1.3))
        ys = np.arange(len(rows))[::-1]
        for y, t in zip(ys, rows):
            c = "#2a9d4b" if t["equivalent"] else "#c44e52"
            d = -t["diff"]  # the cell minus the best
            ax.errorbar([d], [y], xerr=[[d - (-t["ci_high"])], [(-t["ci_low"]) - d]], fmt="o", color=c, capsize=3)
        ax.axvspan(-eq["margin"], eq["margin"], color="#2a9d4b", alpha=0.08)
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_yticks(ys, [t["b"] for t in rows])
        ax.set_xlabel(f"difference from the best cell ({eq['best']}) in {eq['metric']}")
        ax.set_title(f"TOST, margin ±{eq['margin']:g}: {round(100 * (1 - 2 * eq['alpha']))}% CI of the difference; green = equivalent")
        save(fig, "equivalence", "Equivalence to the best cell (TOST)")

    cv = r["curves"]
    if cv["series"]:
        fig, ax = plt.subplots(figsize=(6.5, 3.4))
        for name in cv["top"]:
            s = cv["series"].get(name) or []
            if s:
                ax.plot([x for x, _ in s], [y for _, y in s], marker="o", ms=3, label=name)
        for i, name in enumerate(cv["stopped"]):
            s = cv["series"].get(name) or []
            if s:
                ax.plot([x for x, _ in s], [y for _, y in s], ls="--", color="grey", alpha=0.6, marker="x", ms=3,
                        label="stopped early" if i == 0 else None)
        ax.set_xlabel("documents seen")
        ax.set_ylabel(cv["metric"])
        ax.legend(fontsize=7, frameon=False, loc="best")
        ax.set_title(f"Learning curves: top {len(cv['top'])} trials and {len(cv['stopped'])} stopped early")
        save(fig, "learning_curves", "Learning curves")

    imp = r["importance"]
    if imp.get("importances"):
        items = sorted(imp["importances"].items(), key=lambda kv: kv[1])
        fig, ax = plt.subplots(figsize=(5.5, 0.4 * len(items) + 1.2))
        ax.barh([k for k, _ in items], [v for _, v in items], color="#4c72b0")
        ax.set_xlabel(f"importance for {imp['metric']} ({imp['trials']} trials)")
        ax.set_title("Parameter importance (fANOVA)")
        save(fig, "importance", "Parameter importance")
    return out


# ---------------------------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------------------------


def _f(v: Any, digits: int = 4) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "—"
        return f"{v:.{digits}f}"
    return str(v)


def _p(v: Optional[float]) -> str:
    if v is None or not math.isfinite(v):
        return "—"
    return "<0.001" if v < 0.001 else f"{v:.3f}"


def _ci(x: dict) -> str:
    if not x["n"]:
        return "—"
    if not math.isfinite(x["low"]):
        return f"{x['mean']:.4f}"
    return f"{x['mean']:.4f} [{x['low']:.4f}, {x['high']:.4f}]"


def tables(r: dict) -> dict[str, tuple[list[str], list[list[str]]]]:
    """The report's tables as ``{name: (header, rows)}`` of strings (shared by Markdown, HTML and CSV)."""
    out: dict[str, tuple[list[str], list[list[str]]]] = {}
    metric, sel = r["metric"], r["selection"]
    eq = r["equivalence"]
    tested = {t["b"]: t for t in eq.get("to_best", [])}
    head = ["#", "cell", "seeds", f"{metric} mean ± sd", f"{sel} mean", "equivalent to best"]
    rows = []
    for i, c in enumerate(r["cells"], 1):
        if c["label"] == eq.get("best"):
            verdict = "best"
        elif c["label"] in tested:
            t = tested[c["label"]]
            verdict = f"{'yes' if t['equivalent'] else 'no'} (p={_p(t['p'])})"
        else:
            verdict = "not tested"
        sd = c["std"][metric]
        rows.append([str(i), c["label"], str(c["n"]) + (f" (+{c['stopped']} stopped)" if c["stopped"] else ""),
                     f"{_f(c['mean'][metric])} ± {_f(sd)}" if math.isfinite(sd) else _f(c["mean"][metric]),
                     _f(c["mean"][sel]), verdict])
    out["cells"] = (head, rows)
    for axis, m in r["marginal"].items():
        if m["continuous"]:
            head = ["metric", "n", "Pearson r", "p", "Spearman ρ", "p"]
            rows = [[k, str(c["n"]), _f(c["pearson"], 3), _p(c["pearson_p"]), _f(c["spearman"], 3), _p(c["spearman_p"])]
                    for k, c in m["correlations"].items()]
        else:
            keys = list(m["levels"][0]["metrics"]) if m["levels"] else []
            head = [axis, "finished", "stopped early", *[f"{k} mean [{round(100 * r['level'])}% CI]" for k in keys]]
            rows = [[x["label"], str(x["n"]), str(x["stopped"]), *[_ci(x["metrics"][k]) for k in keys]] for x in m["levels"]]
        out[f"marginal_{_slug(axis)}"] = (head, rows)
    head = ["x", "y", "n", "Pearson r", "p", "Spearman ρ", "p"]
    out["correlations"] = (head, [[k, metric, str(c["n"]), _f(c["pearson"], 3), _p(c["pearson_p"]), _f(c["spearman"], 3), _p(c["spearman_p"])]
                                  for k, c in r["correlations"].items()])
    pq = r["per_query"]
    out["per_query"] = (["trial", r["color_by"] or "group", "queries", "Spearman ρ", "p", "Pearson r", "p"],
                        [[t["run"], t["group"], str(t["n"]), _f(t["spearman"], 3), _p(t["spearman_p"]), _f(t["pearson"], 3), _p(t["pearson_p"])]
                         for t in pq["trials"]])
    if "to_best" in eq:
        out["equivalence"] = (["cell", "n", "difference from best", f"{round(100 * (1 - 2 * eq['alpha']))}% CI", "p (TOST)", "p (Holm)", "equivalent"],
                              [[t["b"], str(t["n_b"]), f"{-t['diff']:+.4f}", f"[{-t['ci_high']:+.4f}, {-t['ci_low']:+.4f}]", _p(t["p"]), _p(t["p_holm"]),
                                "yes" if t["equivalent"] else "no"] for t in eq["to_best"]])
        out["equivalence_pairs"] = (["a", "b", "n_a", "n_b", "mean a − mean b", "p (TOST)", "equivalent"],
                                    [[t["a"], t["b"], str(t["n_a"]), str(t["n_b"]), f"{t['diff']:+.4f}", _p(t["p"]), "yes" if t["equivalent"] else "no"]
                                     for t in eq["pairs"]])
    imp = r["importance"]
    if imp.get("importances"):
        out["importance"] = (["axis", "importance"], [[k, _f(v, 3)] for k, v in imp["importances"].items()])
    return out


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(esc(h) for h in head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                 "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "ρ": r"$\rho$", "−": "-", "—": "--", "<": r"$<$"}


def _latex(text: str) -> str:
    return "".join(LATEX_ESCAPES.get(ch, ch) for ch in str(text))


def _latex_table(head: list[str], rows: list[list[str]]) -> str:
    """A booktabs ``tabular`` (``\\usepackage{booktabs}``) to paste into a paper."""
    lines = [r"\begin{tabular}{" + "l" * len(head) + "}", r"\toprule", " & ".join(_latex(h) for h in head) + r" \\", r"\midrule"]
    lines += [" & ".join(_latex(c) for c in row) + r" \\" for row in rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def _html_table(head: list[str], rows: list[list[str]]) -> str:
    h = "".join(f"<th>{html.escape(x)}</th>" for x in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


def sections(r: dict) -> list[tuple[str, list[tuple[str, Any]]]]:
    """The report as ``[(heading, [(kind, payload)])]`` with kinds ``p`` (text), ``table`` (name), ``figure`` (name)."""
    c, eq, pq, imp = r["counts"], r["equivalence"], r["per_query"], r["importance"]
    metric = r["metric"]
    secs: list[tuple[str, list[tuple[str, Any]]]] = []
    ref = ", ".join(f"{k} = {v:.4f}" for k, v in r["reference"].items() if k.endswith("/" + metric))
    summary = [("p", f"Sweep {r['sweep']!r} of experiment {r['experiment']!r} ({r['search']} search over {', '.join(r['axes'])}). "
                     f"{c['finished']} trials trained the whole budget of {r['budget_docs']:,} documents, {c['stopped_early']} were stopped early "
                     f"by the scheduler, {c['failed']} failed"
                     + (f", {c['running']} still running (not in this report)" if c["running"] else "")
                     + f". Selection metric: {r['selection']}; effectiveness below is {metric}."
                     + (f" For reference on the same queries: {ref}." if ref else ""))]
    if not eq.get("best") and r["cells"]:
        top = r["cells"][0]
        summary.append(("p", f"Best cell by {metric}: {top['label']} ({top['mean'][metric]:.4f}, {top['n']} seed{'s' if top['n'] != 1 else ''}); "
                             "no equivalence test (see below)."))
    if eq.get("best"):
        k = len(eq["equivalent_to_best"])
        summary.append(("p", f"Best cell by {metric}: {eq['best']} ({eq['best_mean']:.4f}). "
                             f"{k} other cell{'s are' if k != 1 else ' is'} equivalent to it within ±{eq['margin']:g} (TOST, alpha {eq['alpha']:g})"
                             + (f": {', '.join(eq['equivalent_to_best'])}." if k else ".")))
    summary.append(("table", "cells"))
    if r["stopped_cells"]:
        summary.append(("p", f"Cells with every trial stopped early (no test metrics): {', '.join(r['stopped_cells'])}."))
    if r["failed"]:
        summary.append(("p", "Failed trials: " + "; ".join(f"{x['run']}" for x in r["failed"]) + " (errors in report.json)."))
    secs.append(("Summary", summary))
    marg = [("p", "For each axis, the runs with each value are pooled over the other axes and seeds: mean and a "
                  f"{round(100 * r['level'])}% Student-t confidence interval over those runs. Conditional axes count only the runs where they apply.")]
    for axis, m in r["marginal"].items():
        marg.append(("h3", axis))
        if m["continuous"]:
            marg.append(("p", f"Continuous axis ({m['n']} trials): correlation of the value with each metric."))
        elif m.get("inactive"):
            marg.append(("p", f"Applies to {m['n']} of {m['n'] + m['inactive']} finished trials."))
        marg.append(("table", f"marginal_{_slug(axis)}"))
        marg.append(("figure", f"marginal_{_slug(axis)}"))
    secs.append(("Marginal effects", marg))
    loc = [("p", f"One point per finished trial: {metric} against the mean teacher entropy of its training groups ({ENTROPY}) and "
                 f"the student's diameter on the probe groups ({DIAMETER}), coloured by {r['color_by']}."),
           ("table", "correlations"), ("figure", "locality_entropy")]
    if pq["trials"]:
        sm = pq["spearman_mean"]
        loc += [("h3", "Per-query entropy–performance correlation"),
                ("p", f"For each trial, Spearman's ρ between a query's teacher entropy (the teacher's tempered distribution over the "
                      f"query's BM25 top-G, at the trial's temperature and group size) and the student's {pq['measure']} on that query. "
                      f"Mean ρ over {sm['n']} trials: {_ci(sm)}; {pq['significant']} of {len(pq['trials'])} trials have p < 0.05."),
                ("table", "per_query"), ("figure", "per_query_entropy")]
    else:
        loc.append(("p", "No per-query teacher entropies were found (trials without a teacher, or run before ranksweep wrote them)."))
    secs.append(("Locality and entropy", loc))
    eqs = [("p", f"Two one-sided Welch t-tests (TOST) of |mean difference| < {eq['margin']:g} in {eq['metric']}, over seeds, at alpha "
                 f"{eq['alpha']:g}. A pair is equivalent when the {round(100 * (1 - 2 * eq['alpha']))}% confidence interval of the difference lies "
                 "inside the margin. Assumes each cell's per-seed values are independent and normal (variances may differ); the margin is "
                 "absolute and fixed before the data were seen. Holm-adjusted p-values control the error over all comparisons with the best. "
                 "Not finding equivalence is not evidence of a difference: with few seeds the test has little power.")]
    if eq.get("refused"):
        eqs.append(("p", f"Not computed: {eq['refused']}"))
    else:
        if eq.get("excluded"):
            eqs.append(("p", "Left out (fewer than 2 finished seeds): " + ", ".join(eq["excluded"]) + "."))
        if eq.get("untested_better"):
            eqs.append(("p", "Cells with a higher mean but too few seeds to test: " + ", ".join(eq["untested_better"]) + "."))
        eqs += [("table", "equivalence"), ("figure", "equivalence")]
    secs.append(("Equivalence to the best", eqs))
    secs.append(("Learning curves", [("p", f"{r['curves']['metric']} at every evaluation against documents seen: the top "
                                           f"{len(r['curves']['top'])} finished trials and every trial stopped early (dashed)."),
                                     ("figure", "learning_curves")]))
    if imp.get("importances"):
        secs.append(("Parameter importance", [("p", f"{imp['method']} over {imp['trials']} finished trials, for {imp['metric']}."
                                                    + (f" Conditional axes left out: {', '.join(imp['conditional_axes_left_out'])}."
                                                       if imp["conditional_axes_left_out"] else "")),
                                              ("table", "importance"), ("figure", "importance")]))
    else:
        secs.append(("Parameter importance", [("p", imp["skipped"])]))
    return secs


CSS = """body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}h3{margin-bottom:.3em}
table{border-collapse:collapse;margin:.6em 0;font-size:.85em}th,td{border:1px solid #ccc;padding:.25em .55em;text-align:left}
th{background:#f3f3f3}figure{margin:.8em 0}figcaption{font-size:.85em;color:#555}img{max-width:100%}"""


def write(r: dict, figs: list[dict], out: Path) -> dict[str, Path]:
    """Write ``report.html`` (figures embedded), ``report.md``, ``report.json`` and ``tables/*.csv|tex``."""
    out.mkdir(parents=True, exist_ok=True)
    tbl = tables(r)
    by_name = {f["name"]: f for f in figs}
    title = f"ranksweep report: {r['sweep']} ({r['experiment']})"
    md = [f"# {title}", ""]
    body = [f"<h1>{html.escape(title)}</h1>"]
    for heading, items in sections(r):
        md += [f"## {heading}", ""]
        body.append(f"<h2>{html.escape(heading)}</h2>")
        for kind, payload in items:
            if kind == "p":
                md += [payload, ""]
                body.append(f"<p>{html.escape(payload)}</p>")
            elif kind == "h3":
                md += [f"### {payload}", ""]
                body.append(f"<h3>{html.escape(payload)}</h3>")
            elif kind == "table" and payload in tbl:
                md += [_md_table(*tbl[payload]), ""]
                body.append(_html_table(*tbl[payload]))
            elif kind == "figure" and payload in by_name:
                f = by_name[payload]
                rel = f["path"].relative_to(out).as_posix()
                md += [f"![{f['title']}]({rel})", ""]
                data = base64.b64encode(f["path"].read_bytes()).decode()
                body.append(f'<figure><img alt="{html.escape(f["title"])}" src="data:image/png;base64,{data}">'
                            f"<figcaption>{html.escape(f['title'])}</figcaption></figure>")
    page = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    files = {"html": out / "report.html", "md": out / "report.md", "json": out / "report.json"}
    files["html"].write_text(page)
    files["md"].write_text("\n".join(md))
    files["json"].write_text(json.dumps(r, indent=1, default=str, allow_nan=True))
    tdir = out / "tables"
    tdir.mkdir(exist_ok=True)
    for name, (head, rows) in tbl.items():
        with (tdir / f"{name}.csv").open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(head)
            w.writerows(rows)
        (tdir / f"{name}.tex").write_text(_latex_table(head, rows))
    return files


# ---------------------------------------------------------------------------------------------
# The verb
# ---------------------------------------------------------------------------------------------


def report(experiment: str, out: str | Path, tracking_uri: str = "sqlite:///mlflow.db", sweep: Optional[str] = None,
           metric: Optional[str] = None, margin: float = 0.01, alpha: float = 0.05, level: float = 0.95, top_k: int = 5,
           color_by: Optional[str] = None, min_importance_trials: int = 10, progress: bool = False) -> Report:
    """Read a sweep from MLflow and write its report into ``out``; return the numbers and files.

    Args:
        experiment: MLflow experiment name (``tracking.experiment`` of the sweep).
        out: folder for ``report.html``, ``report.md``, ``report.json``, ``figures/``, ``tables/``.
        tracking_uri: where the runs are (``sqlite:///…`` or an MLflow server URL).
        sweep: the sweep (parent run) name; default the experiment's latest sweep.
        metric: effectiveness metric of the tables, scatter plots and equivalence tests; default the
            selection metric's measure on the first evaluation collection (e.g.
            ``beir-scifact-test/nDCG@10``), or the selection metric when there is none.
        margin: absolute equivalence margin of the TOST, in units of ``metric`` (default 0.01).
        alpha: TOST level. level: confidence level of the marginal intervals.
        top_k: trials drawn in the learning curves besides those stopped early.
        color_by: axis colouring the scatter plots (default ``sampler.name`` when searched).
        min_importance_trials: finished trials needed before parameter importance is computed.
        progress: show progress bars while MLflow is read.
    """
    if not (margin > 0 and math.isfinite(margin)):
        raise ReportError(f"--margin must be a positive number of {metric or 'metric'} points, got {margin}")
    if not 0 < alpha < 0.5:
        raise ReportError(f"--alpha must lie in (0, 0.5), got {alpha}")
    if not 0 < level < 1:
        raise ReportError(f"level must lie in (0, 1), got {level}")
    try:
        reader, d = read_sweep(experiment, tracking_uri, sweep, progress)
    except ValueError as e:
        raise ReportError(str(e)) from e
    if not d.finished:
        raise ReportError(f"sweep {d.sweep!r} has no trial that trained its whole budget ({len(d.stopped)} stopped early, "
                          f"{len(d.failed)} failed); nothing to report yet")
    m = metric or default_metric(d)
    set_name = m.split("/", 1)[0]
    d.per_query = _read_per_query(reader, d.finished, set_name, progress)
    for r in _progress(top_trials(d, top_k) + d.stopped, "learning curves", progress):
        d.curves[r.run_id] = reader.history(r.run_id, d.selection)
    data = build(d, m, margin, alpha, level, top_k, color_by, min_importance_trials)
    out = Path(out)
    figs = figures(data, out / "figures", d.per_query)
    files = write(data, figs, out)
    files.update({f["name"]: f["path"] for f in figs})
    logger.info("report written to %s (%d figures)", out, len(figs))
    return Report(data, out, files)
