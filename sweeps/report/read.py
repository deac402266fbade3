"""Reading a sweep for its report: the trial runs from MLflow (through ``runs.SweepReader``), split by
the one rule of which trials count, with per-query values and learning curves."""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass, field
from typing import Optional

from ..runs import SweepReader, TrialRun, count_trials, parse_value

logger = logging.getLogger(__name__)


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


def progress_bar(items, desc: str, progress: bool):
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


def read_per_query(reader: SweepReader, runs: list[TrialRun], name: str, progress: bool) -> dict[str, dict[str, dict[str, float]]]:
    out = {}
    for r in progress_bar(runs, f"per-query {name}", progress):
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
