"""The figures of a report, drawn with matplotlib (Agg) as PNG files."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ranksweep.core.evaluation import DIAMETER
from ranksweep.core.training import ENTROPY

from .compute import ReportData, slug


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 110, "axes.spines.top": False, "axes.spines.right": False, "font.size": 9,
                         "axes.titlesize": 9.5, "figure.constrained_layout.use": True})
    return plt


def _colors(groups: list[str]) -> dict[str, Any]:
    plt = _plt()
    cmap = plt.get_cmap("tab10")
    return {g: cmap(i % 10) for i, g in enumerate(sorted(set(groups)))}


def figures(r: ReportData, folder: Path, per_query: Optional[dict[str, dict[str, dict[str, float]]]] = None) -> list[dict]:
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

    metric, sel = r.metric, r.selection
    panels = [sel] + ([metric] if metric != sel else []) + [ENTROPY, DIAMETER]
    for axis, m in r.marginal.items():
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
        fig.suptitle(f"Marginal effect of {axis} (mean, {round(100 * r.level)}% CI over the other axes and seeds)")
        save(fig, f"marginal_{slug(axis)}", f"Marginal effect of {axis}")

    pts = [p for p in r.points if p["metric"] is not None]
    if pts:
        colors = _colors([p["group"] for p in pts])
        fig, axs = plt.subplots(1, 2, figsize=(8, 3.2))
        for ax, key, xlabel in ((axs[0], "entropy", f"teacher entropy ({ENTROPY}, nats)"), (axs[1], "diameter", f"student diameter ({DIAMETER})")):
            for g, c in colors.items():
                sub = [p for p in pts if p["group"] == g and p[key] is not None]
                ax.scatter([p[key] for p in sub], [p["metric"] for p in sub], s=22, color=c, label=g or None)
            cr = r.correlations[ENTROPY if key == "entropy" else DIAMETER]
            stat = f"Pearson r={cr['pearson']:.2f}, Spearman ρ={cr['spearman']:.2f} (n={cr['n']})" if math.isfinite(cr["pearson"]) else f"n={cr['n']}"
            ax.set_title(stat)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(metric)
        if r.color_by:
            axs[1].legend(title=r.color_by, fontsize=7, title_fontsize=7, frameon=False, loc="best")
        fig.suptitle("Locality and entropy: final effectiveness per trial")
        save(fig, "locality_entropy", "Final effectiveness against teacher entropy and student diameter")

    pq = r.per_query
    if pq["trials"]:
        best = pq["trials"][0]
        for row in pq["trials"]:
            if r.cells and row["label"] == r.cells[0]["label"]:
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
        axs[1].set_xlabel(r.color_by or "")
        axs[1].set_ylabel("Spearman ρ per trial")
        axs[1].set_title(f"mean ρ={pq['spearman_mean']['mean']:.2f} over {len(pq['trials'])} trials")
        fig.suptitle("Per-query entropy–performance correlation")
        save(fig, "per_query_entropy", "Per-query entropy–performance correlation")

    eq = r.equivalence
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

    cv = r.curves
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

    imp = r.importance
    if imp.get("importances"):
        items = sorted(imp["importances"].items(), key=lambda kv: kv[1])
        fig, ax = plt.subplots(figsize=(5.5, 0.4 * len(items) + 1.2))
        ax.barh([k for k, _ in items], [v for _, v in items], color="#4c72b0")
        ax.set_xlabel(f"importance for {imp['metric']} ({imp['trials']} trials)")
        ax.set_title("Parameter importance (fANOVA)")
        save(fig, "importance", "Parameter importance")
    return out
