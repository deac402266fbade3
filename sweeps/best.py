"""Query MLflow for a sweep's best settings: seeds aggregated (mean ± std), ready to paste."""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from typing import Optional

import yaml

from ranksweep.core.config import apply

from .runs import ALIASES, RunsError, SweepReader, count_trials, parse_value
from .stats import detectable_difference, mean_ci, seed_noise


def best(experiment: str, tracking_uri: str, metric: str = "dev/nDCG@10", mode: str = "max", filter: Optional[str] = None,
         group_by: Optional[list[str]] = None, top: int = 5, sweep: Optional[str] = None, include_stopped: bool = False) -> "Rows":
    r"""Rows of ``{settings, mean, std, n, runs}``, best first; ``rows.stopped`` names the trials left out.

    Which trials count is ``runs.count_trials``: by default the trials that trained their own whole
    budget, each with its last value of ``metric`` (Ray's ``scope="last"``); the trials the scheduler
    stopped early are not ranked but named in ``rows.stopped``. With ``include_stopped`` every
    finished trial is compared at the largest docs-seen step all of them reached. Runs are grouped by
    their cell (every searched axis, seeds pooled) or by ``group_by`` axes; ``filter`` is an MLflow
    filter string (``params.\`axis.loss\` = 'kl'``). ``sweep`` restricts to one parent run by name
    (default: the latest sweep of the experiment).
    """

    if top < 1:
        raise RunsError(f"--top must be at least 1, got {top}")
    reader = SweepReader(tracking_uri, experiment, sweep)
    trials = reader.trials(filter=filter)
    if not trials:  # asked for something no trial has: said, not an empty table
        raise RunsError(f"no trial of sweep {reader.name!r} matches the filter {filter!r}" if filter
                         else f"sweep {reader.name!r} has no trial runs yet")
    counted = count_trials(trials)
    runs = counted.full + (counted.stopped if include_stopped else [])
    values = {r.run_id: r.metrics[metric] for r in runs if metric in r.metrics}
    if runs and not values:
        known = sorted({k for r in runs for k in r.metrics})
        raise RunsError(f"no trial of sweep {reader.name!r} recorded {metric!r} (known metrics: {known})")
    if group_by:
        known_axes = sorted({k for r in trials for k in r.cell} | {k for r in trials for k in r.params if not k.startswith("axis.")})
        unknown = [g for g in group_by if ALIASES.get(g, g) not in known_axes]
        if unknown:
            raise RunsError(f"--group-by {','.join(unknown)}: not an axis or config key of sweep {reader.name!r} "
                             f"(its axes: {sorted({k for r in trials for k in r.cell})}; short names: {sorted(ALIASES)})")
    step = None
    if include_stopped and counted.stopped:
        step, values = reader.values_at_common_step(runs, metric)
    group_by = [ALIASES.get(g, g) for g in group_by] if group_by else None
    groups: dict[str, list] = defaultdict(list)
    settings: dict[str, dict] = {}
    for r in runs:
        if r.run_id not in values:
            continue
        key_cell = {g: r.cell.get(g, parse_value(r.params.get(g))) for g in group_by} if group_by else r.cell
        key = json.dumps(key_cell, sort_keys=True)
        settings[key] = key_cell
        groups[key].append((values[r.run_id], r.run_id, r.name))
    rows = []
    for key, vals in groups.items():
        ci = mean_ci([v for v, _, _ in vals])
        rows.append({"settings": settings[key], "mean": ci.mean, "std": ci.std if ci.n > 1 else 0.0, "n": ci.n,
                     "runs": [n for _, _, n in vals], "run_ids": [i for _, i, _ in vals], "at_docs": step})
    rows.sort(key=lambda r: r["mean"], reverse=(mode == "max"))
    noise = seed_noise({k: [v for v, _, _ in vals] for k, vals in groups.items()})
    seeds = min((r["n"] for r in rows if r["n"] >= 2), default=0)
    return Rows(rows[:top], [] if include_stopped else sorted(r.name for r in counted.stopped), noise.sd, noise.df,
                detectable_difference(noise.sd, seeds, seeds), seeds)


class Rows(list):
    """``best``'s ranked rows; ``stopped`` names the trials stopped early that were not ranked. ``noise`` is the
    pooled spread within rows (seed noise when rows are cells), ``detectable`` the smallest difference between
    two rows of ``seeds`` values each that a two-sided t-test at 0.05 finds with 80% power (NaN: not estimable)."""

    def __init__(self, rows: list[dict], stopped: list[str], noise: float = math.nan, noise_df: int = 0,
                 detectable: float = math.nan, seeds: int = 0) -> None:
        super().__init__(rows)
        self.stopped = stopped
        self.noise, self.noise_df, self.detectable, self.seeds = noise, noise_df, detectable, seeds

    def power_line(self) -> str:
        """What the ranking can tell apart, in one line."""
        if not math.isfinite(self.noise):
            return "ranking without a noise estimate: no row has 2 or more values (run more seeds before trusting the order)"
        close = sum(1 for r in self[1:] if abs(r["mean"] - self[0]["mean"]) < self.detectable) if self else 0
        return (f"spread within rows (seed noise for cells): {self.noise:.4f} (pooled, {self.noise_df} df); with {self.seeds} values "
                f"per row a difference below {self.detectable:.4f} is not detectable (t-test, alpha 0.05, 80% power): "
                f"{close} of the rows below #1 lie within it")


def as_trial_yaml(settings: dict) -> str:
    """Dotted settings as a nested YAML mapping to paste into a trial config."""
    nested = apply({}, {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()})
    return yaml.safe_dump(nested, sort_keys=False, default_flow_style=False).strip()


def format_rows(rows: list[dict], metric: str, fmt: str = "table") -> str:
    stopped = getattr(rows, "stopped", [])
    if fmt == "json":
        return json.dumps(rows, indent=1, default=str)
    if fmt == "csv":
        buf = io.StringIO()
        keys = sorted({k for r in rows for k in r["settings"]})
        w = csv.writer(buf)
        w.writerow([*keys, f"{metric} mean", "std", "n"])
        for r in rows:
            w.writerow([*(json.dumps(r["settings"].get(k)) for k in keys), f"{r['mean']:.4f}", f"{r['std']:.4f}", r["n"]])
        return buf.getvalue()
    lines = []
    for i, r in enumerate(rows, 1):
        at = f" at {r['at_docs']:,} docs" if r.get("at_docs") else ""
        lines.append(f"#{i}  {metric}{at} = {r['mean']:.4f} ± {r['std']:.4f}  (n={r['n']}: {', '.join(r['runs'])})")
        lines.extend("    " + line for line in as_trial_yaml(r["settings"]).splitlines())
    if isinstance(rows, Rows) and rows:
        lines.append(rows.power_line())
    if stopped:
        lines.append(f"not ranked, stopped early by the scheduler: {', '.join(stopped)} (--include-stopped compares every trial "
                     "at the step all of them reached)")
    return "\n".join(lines)
