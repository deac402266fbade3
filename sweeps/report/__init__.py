"""``ranksweep report``: what each ablation axis does, read from a sweep's MLflow runs.

One call reads the sweep (``read``), computes every number (``compute.build``: a typed
``ReportData``), draws the figures (``figures``) and writes (``render``) ``report.html`` (self-contained: figures embedded), ``report.md``, ``report.json`` and
CSV tables into one folder::

    from ranksweep.sweeps.report import report
    rep = report("ranksweep-quickstart", "reports/quickstart", tracking_uri="sqlite:///mlflow.db")
    rep.results.equivalence["equivalent_to_best"]   # rep.data: the same as report.json

Which runs count. Marginal effects, correlations and equivalence tests use the trials that
trained their whole budget (a trial stopped early by the scheduler has no test metrics and a
shorter training). Stopped trials are counted per axis value and drawn in the learning curves.
With ASHA the finished trials are the ones the scheduler let through, so marginal means are
conditional on surviving it; the report says how many were stopped next to every mean.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .compute import ReportData, ReportError, build, default_metric
from .figures import figures
from .read import progress_bar, read_per_query, read_sweep
from .render import write

logger = logging.getLogger(__name__)

__all__ = ["Report", "ReportData", "ReportError", "report"]


@dataclass
class Report:
    """A written report: its numbers (``data``, what ``report.json`` holds; ``results``, typed) and files."""

    data: dict[str, Any]
    results: Optional[ReportData] = None
    out: Optional[Path] = None
    files: dict[str, Path] = field(default_factory=dict)


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
    d.per_query = read_per_query(reader, d.finished, set_name, progress)
    for r in progress_bar(d.finished + d.stopped, "learning curves", progress):  # every curve: did each trial beat its start?
        d.curves[r.run_id] = reader.history(r.run_id, d.selection)
    data = build(d, m, margin, alpha, level, top_k, color_by, min_importance_trials)
    out = Path(out)
    figs = figures(data, out / "figures", d.per_query)
    files = write(data, figs, out)
    files.update({f["name"]: f["path"] for f in figs})
    logger.info("report written to %s (%d figures)", out, len(figs))
    return Report(data.to_dict(), data, out, files)
