"""The only MLflow writer of a sweep: one parent run, one nested child run per trial, written on one thread.

Tracking never stops training. Producers (the Ray Tune callback on the driver, ``reconcile`` after a
``fit``) only record events (a trial started, a result, a trial ended) and return; the writer's
thread does every MLflow call. While the tracking server is away, the writer keeps what it has not
written, retries with backoff and says so on the console; the sweep trains on. MLflow's own HTTP
retries are bounded (a call gives up in seconds, the writer retries).

Nothing is written twice: runs are found again by tags (``ranksweep.sweep_key`` for the parent,
``ranksweep.trial_id`` for a child; the problem users report with ``MLflowLoggerCallback``: ray
#19978, #23228, #36257), and a step already in a run's history is not logged again. A trial's
run leaves RUNNING only for FINISHED or FAILED.

This module imports neither Ray nor Tune: it is tested alone against a real MLflow store.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ranksweep.core.trial import MODEL_DIR, UNSCOPED

from ..runs import (CELL, NODE_ID, PARENT, ROLE, SEED, STOPPED_EARLY, SWEEP_KEY, TRIAL_ID, WEIGHTS, cell_label, mlflow_key,
                    sqlite_path)

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
    db = sqlite_path(tracking_uri)
    if db is not None:
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
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _permanent(e: Exception) -> bool:
    """An error retrying will not mend (a 4xx answer: a bad value, a missing run), unlike an absent server."""
    from mlflow.exceptions import RestException

    if isinstance(e, RestException):
        try:
            return 400 <= int(e.get_http_status_code()) < 500
        except (TypeError, ValueError):
            return False
    return False


def result_metrics(result: dict) -> tuple[int, int, list]:
    """``(step, timestamp ms, [Metric])`` of a Tune result: numeric ``split/measure`` keys and progress counters."""
    from mlflow.entities import Metric

    step = int(result.get("docs_seen", 0))
    ts = int(1000 * float(result.get("timestamp", 0) or 0))
    metrics = [Metric(mlflow_key(k), float(v), ts, step) for k, v in result.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and ("/" in k or k in UNSCOPED)
               and math.isfinite(float(v))]
    return step, ts, metrics


@dataclass
class _Trial:
    """What the writer knows of one trial, and what it still has to write."""

    trial_id: str
    cell: dict
    seed: int
    budget: int
    params: dict[str, str]
    results: list[dict] = field(default_factory=list)  # not yet written, in arrival order
    last_docs: int = 0
    node: Optional[str] = None
    node_written: Optional[str] = None
    end: Optional[dict] = None  # {"status", "tags", "outputs": (filesystem, path) | None}
    run_id: Optional[str] = None
    logged: set = field(default_factory=set)  # steps in the run's history
    closed: bool = False  # the run was already FINISHED/FAILED in MLflow when found again
    done: bool = False
    value: Optional[float] = None  # the selection metric at the latest result


class MLflowWriter:
    """Every MLflow write of one sweep, on one thread, retried with backoff while the tracking server is away.

    The producer methods (``trial``, ``result``, ``end_trial``, ``end_sweep``) only record and never
    block. ``flush`` and ``drain`` wait, with a timeout, on one ``Condition`` that the thread
    notifies after each round of writes. ``client``: an ``MlflowClient`` (or one wrapping it) to
    write through; by default one for ``tracking_uri``.
    """

    def __init__(self, tracking_uri: str, experiment: str, sweep_name: str, sweep_key: str,
                 params: Optional[dict] = None, artifacts: Optional[dict[str, str]] = None,
                 weights: Optional[dict] = None, client: Any = None) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        #: which trials' final weights go to MLflow: {"keep": "all" | "none" | k, "metric", "mode"}
        self.weights = weights or {"keep": "all", "metric": "dev/nDCG@10", "mode": "max"}
        self.sweep_name = sweep_name
        self.sweep_key = sweep_key
        self.params = params or {}
        self.artifacts = artifacts or {}
        self.experiment_id: Optional[str] = None
        self.parent_id: Optional[str] = None
        self._sweep_end: Optional[int] = None  # failed-trial count once the sweep ended, until written
        self._trials: dict[str, _Trial] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # producers → thread (new work), thread → waiters (a round ended)
        self._pending = False  # something was recorded since the thread last looked
        self._waiters = 0  # callers in flush/drain: the thread retries at least every second for them
        self._closed = False
        self._thread: Optional[threading.Thread] = None
        self._client = client
        self.down_since: Optional[float] = None
        self._last_warning = 0.0
        self.written = 0
        self.statuses: dict[str, str] = {}  # Tune's status of every trial at the end of its last loop step
        self.interrupted: Optional[int] = None  # the signal that stopped the sweep's driver, if one did

    @property
    def client(self):
        if self._client is None:
            self._client = _client(self.tracking_uri)
        return self._client

    # -- producer side (Tune's event loop): record and return ---------------------------------------
    def start(self) -> "MLflowWriter":
        if self._thread is None or not self._thread.is_alive():
            self._closed = False
            self._thread = threading.Thread(target=self._run, name=f"mlflow-writer-{self.sweep_name}", daemon=True)
            self._thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread after its current round (what is not written stays recorded)."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def _record(self) -> None:
        """Under the lock: something new to write; wake the thread."""
        self._pending = True
        self._changed.notify_all()

    def trial(self, trial_id: str, cell: dict, seed: int, budget: int, params: dict[str, str]) -> None:
        with self._changed:
            if trial_id not in self._trials:
                self._trials[trial_id] = _Trial(trial_id, cell, seed, budget, params)
            self._record()

    def result(self, trial_id: str, result: dict) -> None:
        with self._changed:
            t = self._trials[trial_id]
            t.results.append(dict(result))
            t.last_docs = max(t.last_docs, int(result.get("docs_seen", 0)))
            if isinstance(result.get("node_id"), str):
                t.node = result["node_id"]
            v = result.get(self.weights["metric"])
            if isinstance(v, (int, float)) and math.isfinite(float(v)):
                t.value = float(v)
            t.done = False
            self._record()

    def end_trial(self, trial_id: str, status: str, tags: Optional[dict[str, str]] = None, outputs: Any = None) -> None:
        """``status`` FINISHED or FAILED; ``outputs``: ``(pyarrow filesystem, path)`` of the trial's files."""
        with self._changed:
            t = self._trials[trial_id]
            tags = dict(tags or {})
            if status == "FINISHED":
                tags[STOPPED_EARLY] = str(t.last_docs < t.budget).lower()
            t.end = {"status": status, "tags": tags, "outputs": outputs}
            t.done = False
            self._record()

    def end_sweep(self, failed: int) -> None:
        with self._changed:
            self._sweep_end = failed
            self._record()

    def interrupt(self, signum: int) -> None:
        """The driver is stopping on ``signum``: the sweep does not end, its running trials stay open in MLflow."""
        self.interrupted = signum

    # -- what callers may ask -----------------------------------------------------------------------------
    def ending(self, trial_id: str) -> Optional[dict]:
        """``{"status", "tags"}`` that the trial's end will write (or wrote); None while it runs."""
        with self._lock:
            end = self._trials[trial_id].end
            return None if end is None else {"status": end["status"], "tags": dict(end["tags"])}

    def written_all_of(self, trial_id: str) -> bool:
        """True when the trial is known and nothing of it waits to be written."""
        with self._lock:
            t = self._trials.get(trial_id)
            return t is not None and t.done

    def waiting(self) -> tuple[int, int]:
        """``(results, trials)`` still to be written."""
        with self._lock:
            return self._waiting()

    def _waiting(self) -> tuple[int, int]:
        busy = [t for t in self._trials.values() if not t.done]
        return sum(len(t.results) for t in busy), len(busy)

    def _idle(self) -> bool:
        return self.parent_id is not None and self._sweep_end is None and all(t.done for t in self._trials.values())

    def _drained(self) -> bool:
        return self.parent_id is not None and not any(t.results or (t.end is not None and not t.done) for t in self._trials.values())

    def idle(self) -> bool:
        with self._lock:
            return self._idle()

    def flush(self, timeout: float) -> bool:
        """Wait until everything recorded is written, at most ``timeout`` seconds; True when it is."""
        return self._wait_for(self._idle, timeout)

    def drain(self, timeout: float) -> bool:
        """Wait until every result and trial end recorded so far is written (open trials stay open); True when it is."""
        return self._wait_for(self._drained, timeout)

    def _wait_for(self, done, timeout: float) -> bool:
        with self._changed:
            self._waiters += 1
            self._record()  # a thread in a long backoff retries now
            try:
                return self._changed.wait_for(done, timeout)
            finally:
                self._waiters -= 1

    def warn_not_written(self, where: Optional[str] = None) -> None:
        """The one warning for what the sweep leaves unwritten: how much, where it is kept, how to write it."""
        results, trials = self.waiting()
        kept = f"they are kept in Ray's results at {where}" if where else "they are kept in Ray's results"
        logger.warning("MLflow at %s: %d results of %d trials not written yet; %s, and `ranksweep run <spec> --resume` "
                       "writes them once MLflow is back", self.tracking_uri, results, trials, kept)

    # -- the writer thread ---------------------------------------------------------------------------------
    def _run(self) -> None:
        backoff = 0.0
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._pending or self._closed,
                                       timeout=min(backoff or 5.0, 1.0) if self._waiters else (backoff or 5.0))
                if self._closed:
                    return
                self._pending = False
            try:
                self._write()
            except Exception as e:  # noqa: BLE001 (any failure to reach MLflow: retried, training goes on)
                now = time.monotonic()
                if self.down_since is None:
                    self.down_since, self._last_warning = now, 0.0
                if now - self._last_warning >= 30:
                    results, trials = self.waiting()
                    logger.warning("MLflow at %s unreachable for %.0f s (%s): %d results of %d trials waiting; training goes on",
                                   self.tracking_uri, now - self.down_since, str(e).splitlines()[0][:160], results, trials)
                    self._last_warning = now
                backoff = min(30.0, max(1.0, backoff * 2))
                continue
            finally:
                with self._changed:
                    self._changed.notify_all()  # waiters re-check what is written
            if self.down_since is not None:
                logger.warning("MLflow at %s is back after %.0f s; waiting results written", self.tracking_uri,
                               time.monotonic() - self.down_since)
                self.down_since = None
            backoff = 0.0

    def _write(self) -> None:
        self._ensure_parent()
        with self._lock:
            todo = [t for t in self._trials.values() if not t.done]
        for t in todo:
            try:
                self._write_trial(t)
            except Exception as e:  # noqa: BLE001
                if not _permanent(e):
                    raise
                logger.error("MLflow refused a write of trial %s (%s); it is skipped", t.trial_id, e)
                with self._lock:
                    t.results.clear()
                    t.done = True
        with self._lock:
            end, all_done = self._sweep_end, all(t.done for t in self._trials.values())
        if end is not None and all_done:
            self.client.set_tag(self.parent_id, "ranksweep.failed_trials", str(end))
            self.client.set_terminated(self.parent_id, "FINISHED")
            with self._lock:
                self._sweep_end = None

    def _ensure_parent(self) -> None:
        if self.parent_id:
            return
        c = self.client
        exp = c.get_experiment_by_name(self.experiment)
        exp_id = exp.experiment_id if exp else c.create_experiment(self.experiment, artifact_location=artifact_location(
            self.tracking_uri, self.experiment))
        found = c.search_runs([exp_id], filter_string=f"tags.`{SWEEP_KEY}` = '{self.sweep_key}' and tags.`{ROLE}` = 'sweep'")
        if found:
            parent = found[0].info.run_id
            c.update_run(parent, status="RUNNING")
            logger.info("reattached to MLflow sweep run %s", parent)
        else:
            from importlib.metadata import version

            tags = {ROLE: "sweep", SWEEP_KEY: self.sweep_key, "ranksweep.version": version("ranksweep"), "ray.version": version("ray")}
            commit = git_commit()
            if commit:
                tags["mlflow.source.git.commit"] = commit
            parent = c.create_run(exp_id, run_name=self.sweep_name, tags=tags).info.run_id
            self._log_params(parent, flatten(self.params))
            for name, text in self.artifacts.items():
                c.log_text(parent, text, name)
        self.experiment_id, self.parent_id = exp_id, parent

    def _attach(self, t: _Trial) -> None:
        """Find the trial's run again (its logged steps with it) or create it with its params."""
        c = self.client
        found = c.search_runs([self.experiment_id], filter_string=f"tags.`{TRIAL_ID}` = '{t.trial_id}' and tags.`{PARENT}` = '{self.parent_id}'")
        if found:
            run = found[0]
            t.logged = {int(m.step) for m in c.get_metric_history(run.info.run_id, "docs_seen")}
            t.closed = run.info.status in ("FINISHED", "FAILED")
            if not t.closed and t.end is None:
                c.update_run(run.info.run_id, status="RUNNING")
            t.run_id = run.info.run_id
            if run.data.params:
                return
        else:
            tags = {PARENT: self.parent_id, ROLE: "trial", TRIAL_ID: t.trial_id, CELL: json.dumps(t.cell, sort_keys=True, default=list),
                    SEED: str(t.seed)}
            t.run_id = c.create_run(self.experiment_id, run_name=run_name(t.cell, t.seed), tags=tags).info.run_id
        self._log_params(t.run_id, t.params)

    def _log_params(self, run_id: str, params: dict[str, str]) -> None:
        """MLflow takes at most 100 params per batch."""
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])

    def _write_trial(self, t: _Trial) -> None:
        from mlflow.entities import RunTag

        c = self.client
        if t.run_id is None:
            self._attach(t)
        with self._lock:
            batch, node, end = list(t.results), t.node, t.end
        metrics, steps = [], []
        for r in batch:
            step, _, ms = result_metrics(r)
            if step not in t.logged and step not in steps:
                metrics.extend(ms)
                steps.append(step)
        tags = [RunTag(NODE_ID, node)] if node and node != t.node_written else []
        for i in range(0, max(len(metrics), 1), 900):  # MLflow takes up to 1000 metrics per batch
            if metrics[i : i + 900] or (tags and i == 0):
                c.log_batch(t.run_id, metrics=metrics[i : i + 900], tags=tags if i == 0 else [])
        with self._lock:
            del t.results[: len(batch)]
            t.logged.update(steps)
            t.node_written = node or t.node_written
            self.written += len(steps)
        with self._lock:
            if t.results:  # more results came meanwhile: the next round writes them first
                return
        if end is not None and not t.closed:
            if end["tags"]:
                c.log_batch(t.run_id, tags=[RunTag(k, v) for k, v in end["tags"].items()])
            if end["outputs"] is not None:
                self._log_outputs(t, *end["outputs"])
            c.set_terminated(t.run_id, end["status"])
        with self._lock:
            # done: nothing waits, and the trial has not ended or its end was written in this round
            t.done = not t.results and (t.end is None or end is not None)

    def _log_outputs(self, t: _Trial, fs, path: str) -> None:
        """Log the trial's output files, read from the sweep's storage (a shared path or a URI) where Ray synced them;
        its final weights (``model/``) only as the retention rule says (``_keep_weights``)."""
        import pyarrow.fs

        if fs.get_file_info(path).type != pyarrow.fs.FileType.Directory:
            logger.warning("trial %s: no outputs at %s", t.trial_id, path)
            return
        sizes = _settled_sizes(fs, path)
        with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory() as weights:
            for _ in range(3):  # Ray may still be uploading the last checkpoint's files: copy what has settled
                pyarrow.fs.copy_files(path, tmp, source_filesystem=fs)
                copied = {str(f.relative_to(tmp)): f.stat().st_size for f in Path(tmp).rglob("*") if f.is_file()}
                if copied == sizes:
                    break
                sizes = _settled_sizes(fs, path)
            else:
                logger.warning("trial %s: its output files at %s kept changing; logged as they were", t.trial_id, path)
            model = Path(tmp) / MODEL_DIR
            if model.is_dir():
                model.rename(Path(weights) / MODEL_DIR)
            self.client.log_artifacts(t.run_id, tmp)
            if (Path(weights) / MODEL_DIR).is_dir():
                self._keep_weights(t, Path(weights) / MODEL_DIR)
                fs.delete_dir(f"{path}/{MODEL_DIR}")  # MLflow's copy is the one `ranksweep export` reads

    def _keep_weights(self, t: _Trial, model: Path) -> None:
        """Log the trial's final weights to its run if the rule keeps them; drop those of a trial they push out of the top k."""
        keep, metric, mode = self.weights["keep"], self.weights["metric"], self.weights["mode"]
        key = mlflow_key(metric)
        if t.value is None and keep not in ("all", "none"):  # a driver that resumed after the trial's results: its run has them
            t.value = self.client.get_run(t.run_id).data.metrics.get(key)
        evict: list[str] = []
        if keep in ("all", "none") or t.value is None:
            kept = keep == "all"
        else:
            others = self.client.search_runs([self.experiment_id], f"tags.`{PARENT}` = '{self.parent_id}' and tags.`{WEIGHTS}` = 'kept'")
            worst = -math.inf if mode == "max" else math.inf
            ranked = [(r.data.metrics.get(key, worst), r.info.run_id) for r in others if r.info.run_id != t.run_id] + [(t.value, t.run_id)]
            ranked.sort(key=lambda x: -x[0] if mode == "max" else x[0])
            top = {rid for _, rid in ranked[:int(keep)]}
            kept = t.run_id in top
            evict = [rid for _, rid in ranked if rid not in top and rid != t.run_id]
        if kept:
            self.client.log_artifacts(t.run_id, str(model), MODEL_DIR)
        self.client.set_tag(t.run_id, WEIGHTS, "kept" if kept else "not kept")
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        for rid in evict:
            get_artifact_repository(self.client.get_run(rid).info.artifact_uri, tracking_uri=self.tracking_uri).delete_artifacts(MODEL_DIR)
            self.client.set_tag(rid, WEIGHTS, "dropped")
            logger.info("final weights of run %s dropped: no longer among the %s best by %s", rid, keep, metric)


def _settled_sizes(fs, path: str, wait: float = 1.0, tries: int = 30) -> dict[str, int]:
    """Sizes of the files under ``path`` once two listings ``wait`` seconds apart agree (Ray syncs a trial's files to
    storage while its last result is handled, so a file can be caught half written)."""
    import pyarrow.fs

    prev = None
    for _ in range(tries):
        infos = fs.get_file_info(pyarrow.fs.FileSelector(path, recursive=True))
        sizes = {i.path[len(path.rstrip("/")) + 1:]: i.size for i in infos if i.type == pyarrow.fs.FileType.File}
        if sizes == prev:
            break
        prev = sizes
        time.sleep(wait)
    return prev or {}
