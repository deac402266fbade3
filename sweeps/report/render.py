"""Writing a report: tables, prose sections, and the HTML (figures embedded), Markdown, JSON, CSV and
LaTeX files."""

from __future__ import annotations

import base64
import csv
import html
import json
import math
from pathlib import Path
from typing import Any, Optional

from ranksweep.core.evaluation import DIAMETER
from ranksweep.core.training import ENTROPY

from .compute import ReportData, slug


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


def tables(r: ReportData) -> dict[str, tuple[list[str], list[list[str]]]]:
    """The report's tables as ``{name: (header, rows)}`` of strings (shared by Markdown, HTML and CSV)."""
    out: dict[str, tuple[list[str], list[list[str]]]] = {}
    metric, sel = r.metric, r.selection
    eq = r.equivalence
    tested = {t["b"]: t for t in eq.get("to_best", [])}
    head = ["#", "cell", "seeds", f"{metric} mean ± sd", f"{sel} mean", "equivalent to best"]
    rows = []
    for i, c in enumerate(r.cells, 1):
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
    for axis, m in r.marginal.items():
        if m["continuous"]:
            head = ["metric", "n", "Pearson r", "p", "Spearman ρ", "p"]
            rows = [[k, str(c["n"]), _f(c["pearson"], 3), _p(c["pearson_p"]), _f(c["spearman"], 3), _p(c["spearman_p"])]
                    for k, c in m["correlations"].items()]
        else:
            keys = list(m["levels"][0]["metrics"]) if m["levels"] else []
            head = [axis, "finished", "stopped early", *[f"{k} mean [{round(100 * r.level)}% CI]" for k in keys]]
            rows = [[x["label"], str(x["n"]), str(x["stopped"]), *[_ci(x["metrics"][k]) for k in keys]] for x in m["levels"]]
        out[f"marginal_{slug(axis)}"] = (head, rows)
    head = ["x", "y", "n", "Pearson r", "p", "Spearman ρ", "p"]
    out["correlations"] = (head, [[k, metric, str(c["n"]), _f(c["pearson"], 3), _p(c["pearson_p"]), _f(c["spearman"], 3), _p(c["spearman_p"])]
                                  for k, c in r.correlations.items()])
    pq = r.per_query
    out["per_query"] = (["trial", r.color_by or "group", "queries", "Spearman ρ", "p", "Pearson r", "p"],
                        [[t["run"], t["group"], str(t["n"]), _f(t["spearman"], 3), _p(t["spearman_p"]), _f(t["pearson"], 3), _p(t["pearson_p"])]
                         for t in pq["trials"]])
    if "to_best" in eq:
        out["equivalence"] = (["cell", "n", "difference from best", f"{round(100 * (1 - 2 * eq['alpha']))}% CI", "p (TOST)", "p (Holm)", "equivalent"],
                              [[t["b"], str(t["n_b"]), f"{-t['diff']:+.4f}", f"[{-t['ci_high']:+.4f}, {-t['ci_low']:+.4f}]", _p(t["p"]), _p(t["p_holm"]),
                                "yes" if t["equivalent"] else "no"] for t in eq["to_best"]])
        out["equivalence_pairs"] = (["a", "b", "n_a", "n_b", "mean a − mean b", "p (TOST)", "equivalent"],
                                    [[t["a"], t["b"], str(t["n_a"]), str(t["n_b"]), f"{t['diff']:+.4f}", _p(t["p"]), "yes" if t["equivalent"] else "no"]
                                     for t in eq["pairs"]])
    lr = r.learning
    if lr.get("trials"):
        out["learning"] = (["trial", "cell", f"{lr['metric']} at docs 0", "at the end", "gain"],
                           [[t["run"], t["label"], _f(t["start"]), _f(t["end"]), f"{t['gain']:+.4f}"] for t in lr["trials"]])
    pw = r.power
    if pw.get("axes"):
        out["power"] = (["axis", "levels (trials)", f"largest difference in {pw['metric']}", "ANOVA p", "beyond noise",
                         f"smallest detectable ({round(100 * pw['power'])}% power)"],
                        [[k, ", ".join(f"{lv} ({n})" for lv, n in a["levels"].items()), f"{a['largest_difference']:.4f} ({a['between'][0]} − {a['between'][1]})",
                          _p(a["p"]), "yes" if a["exceeds_noise"] else "no", _f(a["detectable"])] for k, a in pw["axes"].items()])
    imp = r.importance
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


def _learning_lines(r: ReportData) -> list[tuple[str, Any]]:
    """Did every trial end above its own start (docs 0) by more than the seed noise?"""
    lr = r.learning
    if not lr.get("n"):
        return [("p", "No trial was evaluated before its first step (eval.at_start), so whether the trials learned is not known.")] \
            if r.cells else []
    sd = lr["noise"]["sd"]
    noise = f"the seed noise of the end value (σ = {sd:.4f}, pooled within cells)" if math.isfinite(sd) else None
    head = (f"Learning: {lr['metric']} rose from the student's start (docs 0) by {lr['min_gain']:+.4f} to "
            f"{max(t['gain'] for t in lr['trials']):+.4f} (median {lr['median_gain']:+.4f}) over {lr['n']} trials")
    if noise is None:
        return [("p", head + "; with one seed per cell there is no seed noise to compare the gains with.")]
    if lr["above_noise"] == lr["n"]:
        return [("p", head + f"; every trial ended above its start by more than {noise}."), ("table", "learning")]
    return [("p", head + f"; {lr['n'] - lr['above_noise']} of {lr['n']} did not end above their start by more than {noise}: "
                   "those trials did not learn, and what this report says of them summarises noise."), ("table", "learning")]


def _power_lines(r: ReportData) -> list[tuple[str, Any]]:
    """Each axis: an effect beyond seed noise, or the smallest effect this sweep could have detected."""
    pw = r.power
    if not pw.get("axes"):
        return []
    seen = [f"{k} ({a['between'][0]} − {a['between'][1]} = {a['largest_difference']:+.4f}, p = {_p(a['p'])})"
            for k, a in pw["axes"].items() if a["exceeds_noise"]]
    unseen = [f"{k} (largest difference {a['largest_difference']:.4f}; detectable: {_f(a['detectable'])})"
              for k, a in pw["axes"].items() if not a["exceeds_noise"]]
    text = (f"Power (one-way ANOVA over each axis's levels in {pw['metric']}, the other axes pooled; alpha {pw['alpha']:g}; "
            f"detectable = the smallest difference between two levels a t-test finds with {round(100 * pw['power'])}% power at that "
            "axis's spread and trial count). ")
    text += ("Effects beyond noise: " + "; ".join(seen) + ". ") if seen else "No axis has an effect beyond noise. "
    if unseen:
        text += "Within noise: " + "; ".join(unseen) + ": a smaller true effect could not have been seen by this sweep."
    return [("p", text), ("table", "power")]


def sections(r: ReportData) -> list[tuple[str, list[tuple[str, Any]]]]:
    """The report as ``[(heading, [(kind, payload)])]`` with kinds ``p`` (text), ``table`` (name), ``figure`` (name)."""
    c, eq, pq, imp = r.counts, r.equivalence, r.per_query, r.importance
    metric = r.metric
    secs: list[tuple[str, list[tuple[str, Any]]]] = []
    ref = ", ".join(f"{k} = {v:.4f}" for k, v in r.reference.items() if k.endswith("/" + metric))
    summary = [("p", f"Sweep {r.sweep!r} of experiment {r.experiment!r} ({r.search} search over {', '.join(r.axes)}). "
                     f"{c['finished']} trials trained the whole budget of {r.budget_docs:,} documents, {c['stopped_early']} were stopped early "
                     f"by the scheduler, {c['failed']} failed"
                     + (f", {c['running']} still running (not in this report)" if c["running"] else "")
                     + f". Selection metric: {r.selection}; effectiveness below is {metric}."
                     + (f" For reference on the same queries: {ref}." if ref else ""))]
    if not eq.get("best") and r.cells:
        top = r.cells[0]
        summary.append(("p", f"Best cell by {metric}: {top['label']} ({top['mean'][metric]:.4f}, {top['n']} seed{'s' if top['n'] != 1 else ''}); "
                             "no equivalence test (see below)."))
    if eq.get("best"):
        k = len(eq["equivalent_to_best"])
        summary.append(("p", f"Best cell by {metric}: {eq['best']} ({eq['best_mean']:.4f}). "
                             f"{k} other cell{'s are' if k != 1 else ' is'} equivalent to it within ±{eq['margin']:g} (TOST, alpha {eq['alpha']:g})"
                             + (f": {', '.join(eq['equivalent_to_best'])}." if k else ".")))
    summary.append(("table", "cells"))
    summary += _learning_lines(r) + _power_lines(r)
    if r.stopped_cells:
        summary.append(("p", f"Cells with every trial stopped early (no test metrics): {', '.join(r.stopped_cells)}."))
    if r.failed:
        summary.append(("p", "Failed trials: " + "; ".join(f"{x['run']}" for x in r.failed) + " (errors in report.json)."))
    secs.append(("Summary", summary))
    marg = [("p", "For each axis, the runs with each value are pooled over the other axes and seeds: mean and a "
                  f"{round(100 * r.level)}% Student-t confidence interval over those runs. Conditional axes count only the runs where they apply.")]
    for axis, m in r.marginal.items():
        marg.append(("h3", axis))
        if m["continuous"]:
            marg.append(("p", f"Continuous axis ({m['n']} trials): correlation of the value with each metric."))
        elif m.get("inactive"):
            marg.append(("p", f"Applies to {m['n']} of {m['n'] + m['inactive']} finished trials."))
        marg.append(("table", f"marginal_{slug(axis)}"))
        marg.append(("figure", f"marginal_{slug(axis)}"))
    secs.append(("Marginal effects", marg))
    loc = [("p", f"One point per finished trial: {metric} against the mean teacher entropy of its training groups ({ENTROPY}) and "
                 f"the student's diameter on the probe groups ({DIAMETER}), coloured by {r.color_by}."),
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
        pe = r.power.get("equivalence") or {}
        if pe.get("seeds", 0) >= 2 and math.isfinite(pe.get("power", math.nan)):
            eqs.append(("p", f"Power: with {pe['seeds']} seeds per cell and seed noise σ = {r.power['noise']['sd']:.4f}, two cells with equal true means "
                             f"are declared equivalent within ±{eq['margin']:g} with probability {pe['power']:.0%}; the smallest margin this sweep "
                             f"could confirm with {round(100 * r.power['power'])}% power is ±{pe['smallest_margin']:.4f}."
                             + (" A 'no' above is therefore no evidence of a difference." if pe["power"] < r.power["power"] else "")))
        eqs += [("table", "equivalence"), ("figure", "equivalence")]
    secs.append(("Equivalence to the best", eqs))
    secs.append(("Learning curves", [("p", f"{r.curves['metric']} at every evaluation against documents seen: the top "
                                           f"{len(r.curves['top'])} finished trials and every trial stopped early (dashed)."),
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


def write(r: ReportData, figs: list[dict], out: Path) -> dict[str, Path]:
    """Write ``report.html`` (figures embedded), ``report.md``, ``report.json`` and ``tables/*.csv|tex``."""
    out.mkdir(parents=True, exist_ok=True)
    tbl = tables(r)
    by_name = {f["name"]: f for f in figs}
    title = f"ranksweep report: {r.sweep} ({r.experiment})"
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
    files["json"].write_text(json.dumps(r.to_dict(), indent=1, default=str, allow_nan=True))
    tdir = out / "tables"
    tdir.mkdir(exist_ok=True)
    for name, (head, rows) in tbl.items():
        with (tdir / f"{name}.csv").open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(head)
            w.writerows(rows)
        (tdir / f"{name}.tex").write_text(_latex_table(head, rows))
    return files
