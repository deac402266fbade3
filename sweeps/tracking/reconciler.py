"""After a ``fit``: whatever MLflow lacks of a sweep's trials is written from Ray's own results on disk."""

from __future__ import annotations

import math
from typing import Optional

from ..runs import ERROR, OUTPUTS
from .callback import trial_params
from .writer import MLflowWriter


def reconcile(writer: MLflowWriter, results, base: dict, only: Optional[set[str]] = None) -> None:
    """Hand every trial of a ResultGrid to the writer: whatever MLflow lacks of them gets written.

    Ray keeps each trial's results and files in the sweep's storage; after a sweep whose writer
    could not finish (the tracking server away, the driver killed), a later ``--resume`` writes
    them from there. Steps already in a run are skipped, so a complete sweep costs one look per trial.
    ``only``: the trial ids that ended (an interrupted sweep's running trials are not ended here).
    """
    for r in results:
        config = r.config or {}
        tid = (r.metrics or {}).get("trial_id")
        if not tid or (only is not None and tid not in only) or writer.written_all_of(tid):
            continue
        cell, seed = config.get("params", {}), int(config.get("seed", 0))
        budget, params = trial_params(base, cell, seed)
        writer.trial(tid, cell, seed, budget, params)
        try:
            rows = r.metrics_dataframe.to_dict("records") if r.metrics_dataframe is not None else [r.metrics]
        except Exception:  # noqa: BLE001 (no progress file: only the last result is known)
            rows = [r.metrics]
        for row in sorted(rows, key=lambda x: x.get("docs_seen", 0)):
            writer.result(tid, {k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))})
        status = "FAILED" if r.error else "FINISHED"
        tags = {ERROR: str(r.error)[-4000:]} if r.error else {}
        writer.end_trial(tid, status, tags, (r.filesystem, f"{r.path}/{OUTPUTS}"))
