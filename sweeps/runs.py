"""A sweep as ranksweep stores it in MLflow, and reading it back (``best``, ``report``).

Writing happens in ``tracking/``, one writer thread on the driver. This module only reads
and needs no Ray: one parent run per sweep (tag ``ranksweep.role=sweep``), one nested child run
per trial (``ranksweep.role=trial``) carrying its cell (``ranksweep.cell``, the searched axis
values as JSON), seed, early-stopping flag, params, metrics (step = docs seen) and output files.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from ranksweep.core.errors import RanksweepError

logger = logging.getLogger(__name__)

#: the trial's files (metrics, run files, per-query values), in its Ray working directory (the
#: trainable's current directory): Ray uploads that directory to the trial's folder in the sweep's
#: storage at every checkpoint (``SyncConfig(sync_artifacts=True)``), and the driver reads them
#: from there for MLflow, whether storage is a shared path or a URI
OUTPUTS = "outputs"

ROLE = "ranksweep.role"
SWEEP_KEY = "ranksweep.sweep_key"
TRIAL_ID = "ranksweep.trial_id"
CELL = "ranksweep.cell"
SEED = "ranksweep.seed"
STOPPED_EARLY = "ranksweep.stopped_early"
WEIGHTS = "ranksweep.weights"  # kept | not kept | dropped: whether the run holds the final weights (model/)
ERROR = "ranksweep.error"
NODE_ID = "ranksweep.node_id"
PARENT = "mlflow.parentRunId"


#: MLflow's own HTTP retries (7, with backoff up to 2 minutes per call) froze sweeps while a server was
#: away and made ``best``/``report`` wait minutes for an unreachable one: each call now gives up in
#: seconds (a sweep's writer retries on its own)
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}


def bound_http_retries() -> None:
    """Keep each MLflow HTTP call short in this process (values the user set are kept)."""
    import os

    for k, v in HTTP_LIMITS.items():
        os.environ.setdefault(k, v)


def sqlite_path(tracking_uri: str) -> Optional[Path]:
    """The database file of a ``sqlite:///…`` tracking URI (relative or absolute), None for any other URI."""
    return Path(tracking_uri[len("sqlite:///"):]).expanduser() if tracking_uri.startswith("sqlite:///") else None


def mlflow_key(key: str) -> str:
    """An ir_measures metric key as MLflow accepts it: ``dev/nDCG@10`` → ``dev/nDCG_at_10``.

    MLflow names allow letters, digits, ``_ - . / :`` and spaces, not ``@``; readers translate
    back with ``from_mlflow_key``.
    """
    return key.replace("@", "_at_")


def from_mlflow_key(key: str) -> str:
    return key.replace("_at_", "@")


def parse_value(text: Optional[str]) -> Any:
    """A logged param back to its value (``'4.0'`` → 4.0, ``'[1, 2]'`` → [1, 2])."""
    if text is None:
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


#: common axes: (the short name ``best --group-by`` accepts, the prefix of the value in a cell label)
AXES = {"sampler.name": ("sampler", ""), "loss": ("loss", ""), "temperature": ("T", "T"), "group_size": ("g", "g"),
        "student.num_layers": ("L", "L"), "student.kind": ("student", ""), "augment.negatives_mix": ("mix", "mix"),
        "optim.lr": ("lr", "lr")}
SHORT = {k: prefix for k, (_, prefix) in AXES.items()}
ALIASES = {alias: k for k, (alias, _) in AXES.items()}


def cell_label(cell: dict, sep: str = " ") -> str:
    """A cell in a few characters: ``bm25 kl T2 g8`` (other axes as ``key=value``)."""
    parts = []
    for k, v in cell.items():
        if isinstance(v, float):
            v = f"{v:.3g}"
        parts.append(f"{SHORT[k]}{v}" if k in SHORT else f"{k.split('.')[-1]}={v}")
    return sep.join(str(p) for p in parts) or "(base)"


@dataclass
class TrialRun:
    """One trial as read from MLflow; metric keys are back in ir_measures notation."""

    run_id: str
    name: str
    status: str
    cell: dict[str, Any]
    seed: int
    stopped_early: bool
    metrics: dict[str, float]
    params: dict[str, str] = field(default_factory=dict)
    error: Optional[str] = None
    trial_id: Optional[str] = None  # Ray Tune's
    start_time: float = 0.0  # ms since the epoch, as MLflow records it

    @property
    def docs_seen(self) -> int:
        return int(self.metrics.get("docs_seen", 0))

    @property
    def budget(self) -> Optional[int]:
        """The trial's own ``budget_docs`` as logged with its config (None for a run that did not log it)."""
        v = parse_value(self.params.get("budget_docs"))
        return int(v) if isinstance(v, (int, float)) else None

    def cell_key(self) -> str:
        """The cell as one stable string (seeds of a cell share it)."""
        return json.dumps(self.cell, sort_keys=True, default=list)


@dataclass
class Counted:
    """A sweep's trial runs sorted by the one rule of which trials count (``count_trials``)."""

    full: list[TrialRun]  # FINISHED, trained their own whole budget: these are ranked
    stopped: list[TrialRun]  # FINISHED, stopped early by the scheduler before their budget
    failed: list[TrialRun]
    running: int
    budget: int  # the sweep's budget (the largest a trial had), for display


def count_trials(runs: list[TrialRun], fallback_budget: int = 0) -> Counted:
    """The one rule for which trials count, used by ``best``, ``report`` and the end of ``ranksweep run``.

    A finished trial counts when it trained its own whole budget: each trial's budget comes from its
    own config (``budget_docs`` can be an axis), else ``fallback_budget``, else the most documents
    any finished trial saw. Trials the scheduler stopped earlier are listed apart, never ranked
    against trials that trained longer (``--include-stopped`` compares all of them at the largest
    step every one of them reached: ``values_at_common_step``).
    """
    finished = [r for r in runs if r.status == "FINISHED"]
    fallback = fallback_budget or max((r.docs_seen for r in finished), default=0)
    full, stopped, failed, running = [], [], [], 0
    for r in runs:
        if r.status == "FINISHED":
            (full if r.docs_seen >= (r.budget or fallback) else stopped).append(r)
        elif r.status in ("RUNNING", "SCHEDULED"):
            running += 1
        else:
            failed.append(r)
    budget = max([r.budget or fallback for r in finished], default=fallback)
    return Counted(full, stopped, failed, running, budget)


class RunsError(RanksweepError, ValueError):
    """A sweep's runs cannot be read as asked: no database, MLflow unreachable, an unknown experiment, sweep or metric."""


class SweepReader:
    """The runs of one sweep: ``SweepReader(uri, experiment)`` takes the experiment's latest sweep."""

    def __init__(self, tracking_uri: str, experiment: str, sweep: Optional[str] = None) -> None:
        from mlflow.tracking import MlflowClient

        db = sqlite_path(tracking_uri)
        if db is not None:
            if not db.exists():  # MLflow would create an empty database and find nothing in it
                raise RunsError(f"no MLflow database at {db} (tracking URI {tracking_uri}); pass the sweep's --tracking-uri")
        from mlflow.exceptions import MlflowException

        bound_http_retries()
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)
        try:
            exp = self.client.get_experiment_by_name(experiment)
        except MlflowException as e:
            raise RunsError(f"cannot reach MLflow at {tracking_uri}: {str(e).splitlines()[0][:200]}") from None
        if exp is None:
            known = [e.name for e in self.client.search_experiments()]
            raise RunsError(f"MLflow experiment {experiment!r} not found at {tracking_uri} (experiments there: {known})")
        self.experiment = experiment
        self.experiment_id = exp.experiment_id
        parents = self.client.search_runs([exp.experiment_id], filter_string=f"tags.`{ROLE}` = 'sweep'",
                                          order_by=["attributes.start_time DESC"])
        names = [p.info.run_name for p in parents]
        if sweep:
            parents = [p for p in parents if p.info.run_name == sweep]
        if not parents:
            which = f" named {sweep!r}" if sweep else ""
            raise RunsError(f"no sweep{which} in experiment {experiment!r} (sweeps there: {names or 'none'})")
        self.parent = parents[0]
        self.name = self.parent.info.run_name
        self.run_id = self.parent.info.run_id

    @property
    def params(self) -> dict[str, str]:
        return dict(self.parent.data.params)

    def spec_value(self, key: str, default: Any = None) -> Any:
        """A value of the sweep spec as logged on the parent run (``search``, ``metric``, ``mode``…)."""
        v = self.parent.data.params.get(f"spec.{key}")
        return default if v is None else parse_value(v)

    def trials(self, statuses: Optional[tuple[str, ...]] = ("FINISHED",), filter: Optional[str] = None) -> list[TrialRun]:
        """The sweep's trial runs with one of ``statuses`` (None: any); ``filter`` is an MLflow filter string."""
        flt = f"tags.`{PARENT}` = '{self.run_id}'"
        if filter:
            flt += f" and {filter}"
        out = []
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string=flt, max_results=5000, page_token=token)
            for r in page:
                if r.data.tags.get(ROLE) != "trial" or (statuses is not None and r.info.status not in statuses):
                    continue
                out.append(TrialRun(
                    run_id=r.info.run_id, name=r.info.run_name, status=r.info.status,
                    cell=json.loads(r.data.tags.get(CELL, "{}")), seed=int(r.data.tags.get(SEED, 0)),
                    stopped_early=r.data.tags.get(STOPPED_EARLY) == "true",
                    metrics={from_mlflow_key(k): v for k, v in r.data.metrics.items()},
                    params=dict(r.data.params), error=r.data.tags.get(ERROR), trial_id=r.data.tags.get(TRIAL_ID),
                    start_time=float(r.info.start_time or 0)))
            token = page.token
            if not token:
                break
        out.sort(key=lambda t: t.name)
        return out

    def history(self, run_id: str, metric: str, times: bool = False) -> list[tuple]:
        """``(docs seen, value)`` of ``metric`` at every evaluation of a run; with ``times``, ``(docs seen, value,
        timestamp ms)``."""
        hist = self.client.get_metric_history(run_id, mlflow_key(metric))
        if times:
            return sorted((int(m.step), float(m.value), m.timestamp) for m in hist)
        return sorted((int(m.step), float(m.value)) for m in hist)

    def values_at_common_step(self, runs: list[TrialRun], metric: str) -> tuple[int, dict[str, float]]:
        """The largest docs-seen step every run reached, and each run's ``metric`` at that step.

        A run without an evaluation exactly there gives its last value before it (runs of one sweep
        evaluate at the same steps, so this happens only when their schedules differ).
        """
        histories = {r.run_id: self.history(r.run_id, metric) for r in runs}
        histories = {k: h for k, h in histories.items() if h}
        if not histories:
            return 0, {}
        step = min(h[-1][0] for h in histories.values())
        return step, {k: [v for d, v in h if d <= step][-1] for k, h in histories.items() if h[0][0] <= step}

    def artifact_text(self, run_id: str, path: str) -> Optional[str]:
        """The text of one artifact of a run, or None when the run has no such file (a warning when it has one that
        cannot be read: the report would otherwise take an unreadable store for missing files)."""
        import mlflow

        with tempfile.TemporaryDirectory() as tmp:
            try:
                local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=tmp,
                                                            tracking_uri=self.tracking_uri)
            except Exception as e:  # noqa: BLE001 (MLflow raises different types per artifact store)
                parent = str(Path(path).parent) if Path(path).parent != Path(".") else None
                try:
                    listed = path in {a.path for a in self.client.list_artifacts(run_id, parent)}
                except Exception:  # noqa: BLE001 (the store cannot even be listed: say so below)
                    listed = True
                if listed:
                    logger.warning("artifact %s of run %s could not be read (%s: %s); it is left out", path, run_id,
                                   type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
                return None  # else the run has no such file (e.g. a trial without a teacher)
            p = Path(local)
            return p.read_text() if p.is_file() else None

    def sweep_file(self) -> dict:
        """The resolved sweep (``spec``, ``base``, ``space`` axes) logged with the parent run."""
        text = self.artifact_text(self.run_id, "sweep.yaml")
        return yaml.safe_load(text) if text else {}
