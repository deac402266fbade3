"""The cluster's services on loopback: MLflow on PostgreSQL with artifacts on an S3 API, sweeps storing on S3.

``cluster.yaml`` runs the MLflow server on PostgreSQL (SQLite's locking is unreliable on NFS) with
its artifacts in S3, and sweeps keep their Ray storage (checkpoints, trial outputs, the experiment
state ``--resume`` reads) on S3. Here the same services run on loopback: a throwaway PostgreSQL
cluster (``initdb``/``pg_ctl``), moto's S3 server, and ``mlflow server`` between them.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest
import yaml
from conftest import REPO, MlflowServer, Postgres, S3Server, fast_config, tracebacks

pytestmark = pytest.mark.ray


def cluster_mlflow_flags() -> dict:
    """The flags of the ``mlflow server`` that ``cluster.yaml`` starts on the head (its store and artifacts checked)."""
    cfg = yaml.safe_load((REPO / "cluster.yaml").read_text())
    line = next(c for c in cfg["head_setup_commands"] if "mlflow server" in c)
    words = shlex.split(line.split(">", 1)[0])
    words = words[words.index("server") + 1:]
    flags, i = {}, 0
    while i < len(words):
        if i + 1 < len(words) and not words[i + 1].startswith("--"):
            flags[words[i]], i = words[i + 1], i + 2
        else:
            flags[words[i]], i = None, i + 1
    assert flags["--backend-store-uri"].startswith("postgresql://") and flags["--artifacts-destination"].startswith("s3://")
    assert "--serve-artifacts" in flags  # clients write artifacts through the server: workers need no S3 keys for MLflow
    return {k: v for k, v in flags.items() if k not in ("--host", "--port", "--backend-store-uri", "--artifacts-destination")}


@pytest.fixture
def services(tmp_path):
    pg, s3 = Postgres(), S3Server()
    server = MlflowServer(tmp_path / "mlflow", backend=pg.uri, artifacts="s3://mlflow/artifacts", env=s3.env,
                          flags=cluster_mlflow_flags())  # the server cluster.yaml starts, on loopback
    try:  # whatever started is stopped, also when a later start fails
        pg.start()
        s3.start()
        s3.bucket("mlflow")
        s3.bucket("sweeps")
        server.start()
        yield pg, s3, server
    finally:
        server.stop()
        s3.stop()
        pg.remove()


def _spec(tmp_path, tiny_model, name: str, storage: str):
    trial = fast_config(tmp_path, **{"student.model": tiny_model, "student.num_layers": None})
    trial.pop("output_dir")
    trial.update(budget_docs=96, eval_every_docs=32)
    spec = {"name": name, "base": trial, "space": {"axes": {"loss": ["kl", "lce"]}}, "search": "grid",
            "scheduler": {"name": "none"}, "resources": {"cpu": 1}, "max_concurrent": 1, "storage": storage,
            "tracking": {"uri": "sqlite:///unused.db", "experiment": "services"}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _cli(*args, env: dict, wait: bool = False):
    cmd = [sys.executable, "-m", "ranksweep.sweeps.cli", *args]
    if wait:
        return subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, **env), timeout=300)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ, **env),
                            start_new_session=True)


def _trials(uri: str):
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("services")
    runs = c.search_runs([exp.experiment_id], max_results=1000) if exp else []
    return c, [r for r in runs if r.data.tags.get("ranksweep.role") == "trial"]


def test_two_sweeps_on_mlflow_over_postgresql_and_s3_survive_the_tracking_service_going_down(tmp_path, tiny_model, services):
    """Two sweeps write to one PostgreSQL-backed MLflow server at once, their Ray storage on S3. Mid-sweep the
    MLflow server is SIGKILLed and PostgreSQL stopped; both come back 15 s later. Every evaluation of every
    trial is then in MLflow exactly once, trial files reach MLflow's S3 artifact store from the sweeps' S3
    storage, and ``best`` and ``report`` read the server."""
    pg, s3, server = services
    procs = {name: _cli("run", str(_spec(tmp_path, tiny_model, name, s3.storage("sweeps", name))), "--tracking-uri", server.url,
                        env=s3.env) for name in ("alpha", "beta")}
    try:
        deadline, down = time.time() + 400, False  # noqa
        while time.time() < deadline and not down and all(p.poll() is None for p in procs.values()):
            time.sleep(1)
            try:
                _, trials = _trials(server.url)
            except Exception:  # noqa: BLE001 (not up yet, or the experiment is being created)
                continue
            if sum(r.data.metrics.get("docs_seen", 0) >= 32 for r in trials) >= 2:  # both sweeps are writing
                server.stop(signal.SIGKILL)
                pg.stop("immediate")
                down = True
        if not down:
            logs = {name: p.communicate(timeout=60)[0] for name, p in procs.items()}
        assert down, "the sweeps ended before the tracking service could be taken down: " + "\n".join(v[-2500:] for v in logs.values())
        time.sleep(15)
        pg.start()
        server.start()
        logs = {name: p.communicate(timeout=600)[0] for name, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    for name, p in procs.items():
        assert p.returncode == 0, logs[name][-3000:]
        assert "best settings by" in logs[name] and not tracebacks(logs[name]), tracebacks(logs[name])
    c, trials = _trials(server.url)
    assert len(trials) == 4
    parents = {r.data.tags["mlflow.parentRunId"] for r in trials}
    assert len(parents) == 2
    for r in trials:
        assert r.info.status == "FINISHED"
        steps = [m.step for m in c.get_metric_history(r.info.run_id, "docs_seen")]
        assert steps == [32, 64, 96]  # every evaluation, once
        assert {"final.json", "metrics.jsonl", "runs", "per_query"} <= {a.path for a in c.list_artifacts(r.info.run_id)}
    keys = s3.keys("sweeps")
    for name in ("alpha", "beta"):  # Ray's storage: the experiment state --resume reads, checkpoints, trial outputs
        assert any(k.startswith(f"{name}/{name}/experiment_state") for k in keys), keys[:20]
        assert sum(k.endswith("/outputs/final.json") and k.startswith(f"{name}/") for k in keys) == 2
        assert any("/checkpoint_" in k and k.startswith(f"{name}/") for k in keys)
    assert sum(k.endswith("final.json") for k in s3.keys("mlflow")) == 4  # MLflow's artifacts, in its own bucket
    out = _cli("best", "--experiment", "services", "--tracking-uri", server.url, "--sweep", "alpha", env=s3.env, wait=True)
    assert out.returncode == 0 and "kl" in out.stdout and "lce" in out.stdout, out.stderr[-2000:]
    out = _cli("report", "--experiment", "services", "--tracking-uri", server.url, "--sweep", "beta", "--out",
               str(tmp_path / "report"), env=s3.env, wait=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads((tmp_path / "report" / "report.json").read_text())["counts"]["finished"] == 2
