"""MLflow tracking of a sweep: one parent run, one nested child run per trial (the only mlflow importer).

All writes happen on the driver, inside a Ray Tune ``Callback``: a trial's metrics arrive with its
results (step = docs seen), its files are read from its output folder (shared storage on a
cluster) when it ends. Runs are found again by tags (``ranksweep.sweep_key`` for the parent,
``ranksweep.trial_id`` for a child), so a resumed sweep reattaches to its runs instead of opening
duplicates (the problem users report with ``MLflowLoggerCallback``: ray #19978, #23228, #36257).
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
from pathlib import Path
from typing import Any, Optional

from ray.tune import Callback

from .runs import NODE_ID, cell_label, mlflow_key

logger = logging.getLogger(__name__)

PARAM_LIMIT = 6000


def flatten(d: Any, prefix: str = "") -> dict[str, str]:
    """Nested dict → ``{"optim.lr": "0.0001", …}`` (lists kept as JSON)."""
    out: dict[str, str] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    value = json.dumps(d) if isinstance(d, (list, tuple, dict)) else str(d)
    out[prefix[:-1]] = value[:PARAM_LIMIT]
    return out


def run_name(cell: dict, seed: int) -> str:
    """A short run name from a cell and seed: ``bm25-kl-T2-g8-s0``."""
    return f"{cell_label(cell, sep='-')}-s{seed}"


def artifact_location(tracking_uri: str, experiment: str) -> Optional[str]:
    """Where a new experiment keeps its artifacts: beside a SQLite database, else the server's choice.

    MLflow's default for a SQLite store is ``./mlruns`` under whatever directory the driver
    happens to run in; pinning it next to the database keeps a sweep's files together however
    and wherever it is resumed.
    """
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):])
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in experiment)
        return (db.parent / "mlartifacts" / safe).resolve().as_uri()
    return None


def git_commit() -> Optional[str]:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _client(uri: str):
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(uri)
    return MlflowClient(tracking_uri=uri)


class MLflowTracking(Callback):
    """Ray Tune callback writing the sweep's parent run and one child run per trial."""

    def __init__(self, tracking_uri: str, experiment: str, sweep_name: str, sweep_key: str, budget_docs: int,
                 base: Optional[dict] = None, params: Optional[dict] = None, artifacts: Optional[dict[str, str]] = None) -> None:
        self.base = base or {}
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.sweep_name = sweep_name
        self.sweep_key = sweep_key
        self.budget_docs = budget_docs
        self.params = params or {}
        self.artifacts = artifacts or {}
        self._client = None
        self._runs: dict[str, str] = {}
        self._nodes: dict[str, str] = {}
        self.parent_id: Optional[str] = None

    def __getstate__(self) -> dict:  # Tune pickles callbacks with the experiment state
        s = dict(self.__dict__)
        s["_client"] = None
        s["_runs"] = {}
        s["_nodes"] = {}
        s["parent_id"] = None
        return s

    @property
    def client(self):
        if self._client is None:
            self._client = _client(self.tracking_uri)
        return self._client

    # -- parent --------------------------------------------------------------------------------
    def setup(self, **info) -> None:
        self.ensure_parent()

    def ensure_parent(self) -> str:
        if self.parent_id:
            return self.parent_id
        c = self.client
        exp = c.get_experiment_by_name(self.experiment)
        exp_id = exp.experiment_id if exp else c.create_experiment(self.experiment, artifact_location=artifact_location(
            self.tracking_uri, self.experiment))
        self.experiment_id = exp_id
        found = c.search_runs([exp_id], filter_string=f"tags.`ranksweep.sweep_key` = '{self.sweep_key}' and tags.`ranksweep.role` = 'sweep'")
        if found:
            self.parent_id = found[0].info.run_id
            c.update_run(self.parent_id, status="RUNNING")
            logger.info("reattached to MLflow sweep run %s", self.parent_id)
            return self.parent_id
        from importlib.metadata import version

        import ray

        tags = {"ranksweep.role": "sweep", "ranksweep.sweep_key": self.sweep_key, "ranksweep.version": version("ranksweep"),
                "ray.version": ray.__version__}
        commit = git_commit()
        if commit:
            tags["mlflow.source.git.commit"] = commit
        run = c.create_run(exp_id, run_name=self.sweep_name, tags=tags)
        self.parent_id = run.info.run_id
        for k, v in flatten(self.params).items():
            c.log_param(self.parent_id, k, v)
        for name, text in self.artifacts.items():
            c.log_text(self.parent_id, text, name)
        return self.parent_id

    def on_experiment_end(self, trials, **info) -> None:
        if self.parent_id:
            failed = sum(t.status == "ERROR" for t in trials)
            self.client.set_tag(self.parent_id, "ranksweep.failed_trials", str(failed))
            self.client.set_terminated(self.parent_id, "FINISHED")

    # -- children ------------------------------------------------------------------------------
    def child(self, trial) -> str:
        tid = trial.trial_id
        if tid in self._runs:
            return self._runs[tid]
        c = self.client
        parent = self.ensure_parent()
        found = c.search_runs([self.experiment_id], filter_string=f"tags.`ranksweep.trial_id` = '{tid}' and tags.`mlflow.parentRunId` = '{parent}'")
        if found:
            run_id = found[0].info.run_id
            if found[0].info.status != "FINISHED":
                c.update_run(run_id, status="RUNNING")
        else:
            cell, seed = trial.config.get("params", {}), trial.config.get("seed", 0)
            tags = {"mlflow.parentRunId": parent, "ranksweep.role": "trial", "ranksweep.trial_id": tid,
                    "ranksweep.cell": json.dumps(cell, sort_keys=True, default=list), "ranksweep.seed": str(seed)}
            run_id = c.create_run(self.experiment_id, run_name=run_name(cell, seed), tags=tags).info.run_id
            from .trainable import resolve_trial

            resolved = resolve_trial(self.base, cell, seed)
            for k, v in {**flatten(resolved), **{f"axis.{k}": str(v) for k, v in cell.items()}, "seed": str(seed)}.items():
                c.log_param(run_id, k, v)
        self._runs[tid] = run_id
        return run_id

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.child(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        from mlflow.entities import Metric

        run_id = self.child(trial)
        step = int(result.get("docs_seen", 0))
        ts = int(1000 * result.get("timestamp", 0)) or 0
        metrics = [Metric(mlflow_key(k), float(v), ts, step) for k, v in result.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and ("/" in k or k in ("docs_seen", "steps", "epoch", "eval_seconds"))
                   and math.isfinite(float(v))]
        node = result.get("node_id")
        tags = []
        if isinstance(node, str) and self._nodes.get(trial.trial_id) != node:  # where the trial runs (it moves when a node is lost)
            from mlflow.entities import RunTag

            self._nodes[trial.trial_id] = node
            tags.append(RunTag(NODE_ID, node))
        if metrics or tags:
            self.client.log_batch(run_id, metrics=metrics, tags=tags)

    def _artifacts(self, run_id: str, trial) -> None:
        """Log the trial's output files, read from the sweep's storage (a shared path or a URI) where Ray synced them."""
        import tempfile

        import pyarrow.fs

        from .trainable import OUTPUTS

        fs, path = trial.storage.storage_filesystem, f"{trial.storage.trial_fs_path}/{OUTPUTS}"
        if fs.get_file_info(path).type != pyarrow.fs.FileType.Directory:
            logger.warning("trial %s: no outputs at %s", trial.trial_id, trial.path)
            return
        with tempfile.TemporaryDirectory() as tmp:
            pyarrow.fs.copy_files(path, tmp, source_filesystem=fs)
            self.client.log_artifacts(run_id, tmp)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        run_id = self.child(trial)
        last = trial.last_result or {}
        docs = int(last.get("docs_seen", 0))
        early = docs < self.budget_docs
        self.client.set_tag(run_id, "ranksweep.stopped_early", str(early).lower())
        self._artifacts(run_id, trial)
        self.client.set_terminated(run_id, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        run_id = self.child(trial)
        err = ""
        try:
            if trial.error_file and Path(trial.error_file).exists():
                err = Path(trial.error_file).read_text()[-4000:]
        except (OSError, AttributeError):
            pass
        self.client.set_tag(run_id, "ranksweep.error", err or "trial failed (see the Ray trial folder)")
        self._artifacts(run_id, trial)
        self.client.set_terminated(run_id, "FAILED")
