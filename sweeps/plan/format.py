"""A plan as text (a table and its recommendation, or JSON rows) and what a target sweep costs with it."""

from __future__ import annotations

import json

from ..cost import max_budget, sweep_cost
from ..runs import cell_label
from .recommend import Plan, Row


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


def cost_lines(p: Plan, sweep, gpus: float, docs_per_s: float) -> list[str]:
    """GPU-hours and wall-clock hours of ``sweep`` on ``gpus`` GPUs, without and with the recommended scheduler."""
    cost = sweep_cost(sweep, docs_per_s, gpu_per_trial=sweep.fields.resources.gpu or 1.0)
    lines = [f"{sweep.name}: {cost.trials} trials, {cost.docs:,} training documents, at {docs_per_s:g} docs/s per trial on "
             f"{cost.gpu_per_trial:g} GPU each, {gpus:g} GPUs ({cost.at_once(gpus):g} trials at once):",
             f"  without early stopping: {cost.gpu_hours:,.1f} GPU-hours, {cost.wall_hours(gpus):,.1f} h wall-clock"]
    if p.recommended is None:
        if p.signal is not None and not p.signal.differ:
            lines.append(f"  no recommendation: on the pilot {p.signal.describe()}, so it cannot tell what a scheduler keeps")
        else:
            lines.append("  no scheduler setting stays within seed noise of the best cell on the pilot: run the grid")
        return lines
    row, s = p.rows[p.recommended], p.settings[p.recommended]
    spec = s.spec(p.curves.budget, max_budget(sweep))
    lines.append(f"  with scheduler {json.dumps(spec)} (the pilot's {row.compute_fraction:.0%} of the compute): "
                 f"{cost.gpu_hours * row.compute_fraction:,.1f} GPU-hours, "
                 f"{cost.wall_hours(gpus) * row.compute_fraction:,.1f} h wall-clock")
    lines.append("  (training documents only; evaluations and trial start-up come on top)")
    return lines
