"""The MLflow writer alone, without Ray: against a real SQLite MLflow store, reached through a client that can be
switched off (an outage), or that refuses a write (a 4xx answer)."""

from __future__ import annotations

import logging
import sys
import time

import pytest

from ranksweep.sweeps.runs import PARENT, ROLE, STOPPED_EARLY, TRIAL_ID
from ranksweep.sweeps.tracking.writer import MLflowWriter


class Switchable:
    """An ``MlflowClient`` whose every call fails while ``down`` (as when the tracking server is away)."""

    def __init__(self, uri: str) -> None:
        from mlflow.tracking import MlflowClient

        self.real = MlflowClient(tracking_uri=uri)
        self.down = False
        self.refuse: set[str] = set()  # method names answered with a 400

    def __getattr__(self, name: str):
        attr = getattr(self.real, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            if self.down:
                raise ConnectionError("tracking server away")
            if name in self.refuse and kwargs.get("metrics"):
                from mlflow.exceptions import RestException

                raise RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "metric value refused"})
            return attr(*args, **kwargs)

        return call


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = Switchable(uri)
    client.real.search_experiments()  # the schema exists before any writer races to create it
    return uri, client


def _writer(store, key: str = "k") -> MLflowWriter:
    uri, client = store
    return MLflowWriter(uri, "exp", "sweep", key, params={"spec": {"name": "sweep"}}, client=client).start()


def _runs(client, role: str):
    exp = client.real.get_experiment_by_name("exp")
    return [] if exp is None else client.real.search_runs([exp.experiment_id], f"tags.`{ROLE}` = '{role}'")


def _steps(client, run_id: str) -> list[int]:
    return sorted(int(m.step) for m in client.real.get_metric_history(run_id, "docs_seen"))


def _result(step: int, ndcg: float) -> dict:
    return {"docs_seen": step, "dev/nDCG@10": ndcg, "timestamp": time.time()}


def test_results_recorded_during_an_outage_are_kept_and_written_once_it_ends(store, caplog):
    uri, client = store
    client.down = True
    w = _writer(store)
    try:
        with caplog.at_level(logging.WARNING, logger="ranksweep.sweeps.tracking.writer"):
            w.trial("t1", {"loss": "kl"}, 0, 200, {"loss": "kl"})
            w.result("t1", _result(100, 0.30))
            w.result("t1", _result(200, 0.35))
            w.end_trial("t1", "FINISHED")
            w.end_sweep(0)
            assert w.flush(1.5) is False  # the server is away: nothing written, nothing lost
            assert w.waiting() == (2, 1) and _runs(client, "sweep") == []
            client.down = False
            assert w.flush(30) is True
        log = caplog.text
        assert "unreachable" in log and "2 results of 1 trials waiting" in log and "is back after" in log
        (parent,) = _runs(client, "sweep")
        (child,) = _runs(client, "trial")
        assert parent.info.status == "FINISHED" and parent.data.tags["ranksweep.failed_trials"] == "0"
        assert child.data.tags[PARENT] == parent.info.run_id and child.info.status == "FINISHED"
        assert child.data.tags[STOPPED_EARLY] == "false"  # it saw its whole budget of 200
        assert _steps(client, child.info.run_id) == [100, 200]
        assert [m.value for m in sorted(client.real.get_metric_history(child.info.run_id, "dev/nDCG_at_10"), key=lambda m: m.step)] \
            == pytest.approx([0.30, 0.35])
        assert child.data.params["loss"] == "kl" and parent.data.params["spec.name"] == "sweep"
    finally:
        w.close()


def test_a_second_writer_of_the_same_sweep_finds_its_runs_and_logs_no_step_twice(store):
    """A driver that restarts (``--resume``) hands over every result again; MLflow keeps one run per trial, one point per step."""
    uri, client = store
    first = _writer(store)
    first.trial("t1", {}, 0, 300, {"a": "1"})
    first.result("t1", _result(100, 0.2))
    first.result("t1", _result(200, 0.3))
    assert first.flush(30)
    first.close()
    second = _writer(store)
    try:
        second.trial("t1", {}, 0, 300, {"a": "1"})
        for step, v in ((100, 0.2), (200, 0.3), (200, 0.3), (300, 0.4)):
            second.result("t1", _result(step, v))
        second.end_trial("t1", "FINISHED")
        assert second.flush(30)
        assert len(_runs(client, "sweep")) == 1
        (child,) = _runs(client, "trial")
        assert child.data.tags[TRIAL_ID] == "t1" and child.info.status == "FINISHED"
        assert _steps(client, child.info.run_id) == [100, 200, 300]
        assert second.written_all_of("t1") and not second.written_all_of("unknown")
    finally:
        second.close()


def test_a_refused_write_skips_that_trial_and_the_rest_is_written(store, caplog):
    """A 4xx answer will not mend by retrying: the trial's metrics are dropped with an error, and the writer goes on."""
    uri, client = store
    client.refuse = {"log_batch"}
    w = _writer(store)
    try:
        with caplog.at_level(logging.ERROR, logger="ranksweep.sweeps.tracking.writer"):
            w.trial("bad", {}, 0, 100, {})
            w.result("bad", _result(100, 0.1))
            w.end_sweep(0)
            assert w.flush(30) is True
        assert "MLflow refused a write of trial bad" in caplog.text
        (parent,) = _runs(client, "sweep")
        assert parent.info.status == "FINISHED"
        (child,) = _runs(client, "trial")
        assert _steps(client, child.info.run_id) == []
    finally:
        w.close()


def test_flush_returns_at_its_timeout_while_the_server_stays_away(store):
    uri, client = store
    client.down = True
    w = _writer(store)
    try:
        w.trial("t", {}, 0, 100, {})
        w.result("t", _result(50, 0.1))
        w.end_trial("t", "FINISHED")
        t0 = time.monotonic()
        assert w.flush(0.5) is False and w.drain(0.5) is False
        assert time.monotonic() - t0 < 10  # it returns at its timeout, not when MLflow comes back
        assert w.waiting() == (1, 1)
        assert w.ending("t") == {"status": "FINISHED", "tags": {STOPPED_EARLY: "true"}}  # 50 of 100 documents
    finally:
        w.close()


def test_the_writer_does_not_import_ray():
    import subprocess

    code = "import sys, ranksweep.sweeps.tracking.writer; sys.exit('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
