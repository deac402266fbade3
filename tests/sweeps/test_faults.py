"""Sweeps against a tracking server that goes away: training goes on, nothing is lost or written twice.

A local ``mlflow server`` is SIGKILLed mid-sweep. While it is away the trials keep training (their
outputs keep reaching the sweep's storage), the console says writes are waiting, and once the server
is back every evaluation of every trial is in MLflow exactly once. A sweep that ends while the server
is still away exits normally; ``--resume`` then writes everything from Ray's results, to the tracking
URI it is given.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import MlflowServer, fast_config, tracebacks

pytestmark = pytest.mark.ray


def _spec(tmp_path: Path, tiny_model: str, budget: int, flush_timeout: float = 600) -> Path:
    trial = fast_config(tmp_path, **{"student.model": tiny_model, "student.num_layers": None})
    trial.pop("output_dir")
    trial.update(budget_docs=budget, eval_every_docs=32)
    spec = {"name": "outage", "base": trial, "space": {"axes": {"loss": ["kl", "lce"]}}, "search": "grid",
            "scheduler": {"name": "none"}, "resources": {"cpu": 1}, "max_concurrent": 2, "storage": str(tmp_path / "ray"),
            "tracking": {"uri": "sqlite:///unused.db", "experiment": "outage", "flush_timeout": flush_timeout}}
    path = tmp_path / "outage.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _cli(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ranksweep.sweeps.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=dict(os.environ), start_new_session=True)


def _children(uri: str):
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("outage")
    runs = c.search_runs([exp.experiment_id], max_results=1000) if exp else []
    return c, [r for r in runs if r.data.tags.get("ranksweep.role") == "trial"]


def _evaluations_on_storage(tmp_path: Path) -> int:
    """Evaluations the trials have written so far, as Ray synced them to the sweep's storage."""
    return sum(len(p.read_text().splitlines()) for p in (tmp_path / "ray" / "outage").glob("*/outputs/metrics.jsonl"))  # trial folders are named as the runs


def _assert_complete(uri: str, budget: int) -> None:
    c, children = _children(uri)
    assert len(children) == 2
    for r in children:
        assert r.info.status == "FINISHED" and r.data.metrics["docs_seen"] == budget
        steps = [m.step for m in c.get_metric_history(r.info.run_id, "docs_seen")]
        assert steps == list(range(32, budget + 1, 32))  # every evaluation, once
        assert len(c.get_metric_history(r.info.run_id, "dev/nDCG_at_10")) == len(steps)
        assert {"final.json", "metrics.jsonl", "runs", "per_query"} <= {a.path for a in c.list_artifacts(r.info.run_id)}
        assert r.data.params["optim.lr"] == "0.0001" and r.data.params["axis.loss"] in ("kl", "lce")
        assert r.data.params["eval.diameter_alpha"] == "0.99"  # the resolved config is logged, defaults included


def test_mlflow_server_killed_mid_sweep_training_goes_on_and_every_evaluation_arrives_once(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # this test's own reads fail fast while the server is away
    budget = 480
    server = MlflowServer(tmp_path).start()
    proc = _cli("run", str(_spec(tmp_path, tiny_model, budget)), "--tracking-uri", server.url)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            time.sleep(1)
            _, children = _children(server.url)
            if len(children) == 2 and all(r.data.metrics.get("docs_seen", 0) >= 64 for r in children):
                break
        else:
            pytest.fail("the trials did not start reporting")
        server.stop(signal.SIGKILL)
        time.sleep(2)
        before = _evaluations_on_storage(tmp_path)
        time.sleep(25)
        during = _evaluations_on_storage(tmp_path)
        assert during > before, "training stopped while MLflow was away"
        server.start()
        log, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, log[-3000:]
        assert "unreachable" in log and "is back after" in log and "training goes on" in log
        _assert_complete(server.url, budget)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        server.stop()


def test_a_sweep_that_ends_while_mlflow_is_away_is_written_by_resume_to_the_uri_it_is_given(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    budget = 96
    server = MlflowServer(tmp_path).start()
    spec = _spec(tmp_path, tiny_model, budget, flush_timeout=5)
    proc = _cli("run", str(spec), "--tracking-uri", server.url)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            time.sleep(0.5)
            _, children = _children(server.url)
            if children and any(r.data.metrics.get("docs_seen", 0) >= 32 for r in children):
                break
        server.stop(signal.SIGKILL)  # away until the sweep is over, and never back
        log, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, log[-3000:]
        assert "2 trials, 0 failed" in log and "--resume` writes them once MLflow is back" in log
        assert "best settings: not read (cannot reach MLflow at" in log and not tracebacks(log), tracebacks(log)
        # the results are on disk; --resume writes all of them, to the tracking URI it is given now
        other = f"sqlite:///{tmp_path}/elsewhere.db"
        resumed = _cli("run", str(spec), "--resume", "--tracking-uri", other)
        log2, _ = resumed.communicate(timeout=600)
        assert resumed.returncode == 0, log2[-3000:]
        _assert_complete(other, budget)
        assert "best settings by dev/nDCG@10" in log2
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        server.stop()
