"""The Ray Tune side of tracking: a callback that hands Tune's events to the sweep's ``MLflowWriter``.

The callback never calls MLflow. Tune pickles callbacks with the experiment state, and
``Tuner.restore`` brings back the saved one (without its writer): ``LIVE`` is how it finds the
writer this driver made, and the tracking URI this run asked for.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Callable, Optional

from ray.tune import Callback

from ranksweep.core.config import resolve_trial

from ..runs import ERROR, OUTPUTS, bound_http_retries
from .writer import MLflowWriter, flatten

logger = logging.getLogger(__name__)


class LiveWriters:
    """The sweep writers alive in this process, one per sweep key, and the tracking URI each sweep writes to now."""

    def __init__(self) -> None:
        self._writers: dict[str, MLflowWriter] = {}
        self._uris: dict[str, str] = {}
        self._lock = threading.RLock()  # make() reads the URI under it

    def use(self, sweep_key: str, uri: str) -> None:
        """Tracking of ``sweep_key`` in this process goes to ``uri`` (a callback restored with an older URI follows)."""
        with self._lock:
            self._uris[sweep_key] = uri

    def uri(self, sweep_key: str, default: str) -> str:
        with self._lock:
            return self._uris.get(sweep_key, default)

    def writer(self, sweep_key: str, make: Callable[[], MLflowWriter]) -> MLflowWriter:
        """The sweep's live writer, made by ``make()`` when there is none or it writes elsewhere; started."""
        with self._lock:
            w = self._writers.get(sweep_key)
            if w is None or w.tracking_uri != self._uris.get(sweep_key, w.tracking_uri):
                if w is not None:
                    w.close(timeout=0)
                w = self._writers[sweep_key] = make()
        return w.start()


LIVE = LiveWriters()


def trial_params(base: dict, cell: dict, seed: int) -> tuple[int, dict[str, str]]:
    """A trial's budget and its MLflow params: the full resolved config (defaults included), its axes and seed."""
    cfg = resolve_trial(base, cell, seed)
    params = {**flatten(cfg.to_dict()), **{f"axis.{k}": str(v) for k, v in cell.items()}, "seed": str(seed)}
    params.pop("output_dir", None)
    return cfg.budget_docs, params


class MLflowTracking(Callback):
    """Ray Tune callback: hands the sweep's events to its ``MLflowWriter`` (it never calls MLflow itself)."""

    def __init__(self, tracking_uri: str, experiment: str, sweep_name: str, sweep_key: str, base: Optional[dict] = None,
                 params: Optional[dict] = None, artifacts: Optional[dict[str, str]] = None, flush_timeout: float = 600.0,
                 weights: Optional[dict] = None) -> None:
        self.tracking_uri = tracking_uri
        self.weights = weights
        self.experiment = experiment
        self.sweep_name = sweep_name
        self.sweep_key = sweep_key
        self.base = base or {}
        self.params = params or {}
        self.artifacts = artifacts or {}
        self.flush_timeout = flush_timeout
        self.writer: Optional[MLflowWriter] = None

    def __getstate__(self) -> dict:  # Tune pickles callbacks with the experiment state
        s = dict(self.__dict__)
        s["writer"] = None
        return s

    def make_writer(self) -> MLflowWriter:
        return MLflowWriter(LIVE.uri(self.sweep_key, self.tracking_uri), self.experiment, self.sweep_name, self.sweep_key,
                            self.params, self.artifacts, getattr(self, "weights", None))

    def live_writer(self) -> MLflowWriter:
        return LIVE.writer(self.sweep_key, self.make_writer)

    def setup(self, **info) -> None:
        bound_http_retries()
        self.writer = self.live_writer()

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        cell, seed = trial.config.get("params", {}), int(trial.config.get("seed", 0))
        budget, params = trial_params(self.base, cell, seed)
        self.writer.trial(trial.trial_id, cell, seed, budget, params)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.writer.result(trial.trial_id, result)

    def _outputs(self, trial):
        return trial.storage.storage_filesystem, f"{trial.storage.trial_fs_path}/{OUTPUTS}"

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.writer.end_trial(trial.trial_id, "FINISHED", {}, self._outputs(trial))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        err = ""
        try:
            if trial.error_file and Path(trial.error_file).exists():
                err = Path(trial.error_file).read_text()[-4000:]
        except (OSError, AttributeError):
            pass
        self.writer.end_trial(trial.trial_id, "FAILED", {ERROR: err or "trial failed (see the Ray trial folder)"}, self._outputs(trial))

    def on_step_end(self, iteration, trials, **info) -> None:
        self.writer.statuses = {t.trial_id: t.status for t in trials}

    def on_experiment_end(self, trials, **info) -> None:
        if self.writer.interrupted is not None:  # Tune marks the trials it stopped TERMINATED: they are not
            self.writer.drain(min(self.flush_timeout, 30))  # ended in MLflow, and the sweep stays open for --resume
            return
        self.writer.end_sweep(sum(t.status == "ERROR" for t in trials))
        if not self.writer.flush(self.flush_timeout):
            self.writer.warn_not_written()
