"""Reading a sweep back from MLflow (``sweeps/runs.py``): which trials count, the latest sweep, histories, bad input.

The runs are written with MLflow's own client, tagged as the tracking writer tags them, into a real SQLite store.
"""

from __future__ import annotations

import json

import pytest

from ranksweep.sweeps.runs import (CELL, PARENT, ROLE, SEED, RunsError, SweepReader, TrialRun, cell_label, count_trials,
                                   from_mlflow_key, mlflow_key, parse_value)


def _run(status: str, docs: int, budget=None, name="t") -> TrialRun:
    params = {"budget_docs": str(budget)} if budget is not None else {}
    return TrialRun("id-" + name, name, status, {}, 0, False, {"docs_seen": float(docs)}, params)


def test_a_trial_counts_when_it_trained_its_own_budget():
    runs = [_run("FINISHED", 4096, 4096, "a"), _run("FINISHED", 2048, 2048, "b"),  # budget_docs an axis: both trained it all
            _run("FINISHED", 1024, 4096, "c"),  # stopped by the scheduler at a quarter of its budget
            _run("FAILED", 512, 4096, "d"), _run("RUNNING", 256, 4096, "e"), _run("KILLED", 0, 4096, "f")]
    c = count_trials(runs)
    assert [r.name for r in c.full] == ["a", "b"] and [r.name for r in c.stopped] == ["c"]
    assert [r.name for r in c.failed] == ["d", "f"] and c.running == 1 and c.budget == 4096
    # runs that did not log their budget: the sweep's, else the most any finished trial saw
    old = [_run("FINISHED", 4096, name="a"), _run("FINISHED", 1024, name="b")]
    assert [r.name for r in count_trials(old).full] == ["a"]
    assert [r.name for r in count_trials(old, fallback_budget=1024).full] == ["a", "b"]


def test_keys_and_values_round_trip():
    assert mlflow_key("dev/nDCG@10") == "dev/nDCG_at_10" and from_mlflow_key("dev/nDCG_at_10") == "dev/nDCG@10"
    assert parse_value("4.0") == 4.0 and parse_value("[1, 2]") == [1, 2] and parse_value("bm25") == "bm25"
    assert parse_value("a: [") == "a: [" and parse_value(None) is None
    assert cell_label({"sampler.name": "bm25", "loss": "kl", "temperature": 2.0, "optim.weight_decay": 0.01}) == "bm25 kl T2 weight_decay=0.01"
    assert cell_label({}) == "(base)"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two sweeps in one experiment; the later one has three trials (one of them still running) with dev curves."""
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    uri = f"sqlite:///{db}"
    client = MlflowClient(uri)
    exp = client.create_experiment("ranksweep-t", artifact_location=str(db.parent / "artifacts"))
    sweeps = {}
    for i, name in enumerate(("first", "second")):
        parent = client.create_run(exp, run_name=name, tags={ROLE: "sweep"}, start_time=1000 * (i + 1))
        client.log_param(parent.info.run_id, "spec.metric", "dev/nDCG@10")
        client.set_terminated(parent.info.run_id, "FINISHED")
        sweeps[name] = parent.info.run_id
    curves = {"bm25-kl-s0": ([0, 32, 64], [0.1, 0.3, 0.5], "FINISHED"), "random-kl-s0": ([0, 32], [0.1, 0.2], "FINISHED"),
              "bm25-lce-s1": ([0, 32, 48], [0.1, 0.4, 0.45], "RUNNING")}
    for name, (steps, values, status) in curves.items():
        sampler, loss, seed = name.split("-")
        run = client.create_run(exp, run_name=name, tags={ROLE: "trial", PARENT: sweeps["second"], SEED: seed[1:],
                                                          CELL: json.dumps({"sampler.name": sampler, "loss": loss})})
        client.log_param(run.info.run_id, "budget_docs", "64")
        for step, value in zip(steps, values):
            client.log_metric(run.info.run_id, mlflow_key("dev/nDCG@10"), value, step=step)
            client.log_metric(run.info.run_id, "docs_seen", step, step=step)
        if status != "RUNNING":
            client.set_terminated(run.info.run_id, status)
    return uri, db


def test_the_latest_sweep_is_read_with_its_trials_in_ir_measures_notation(store):
    uri, _ = store
    r = SweepReader(uri, "ranksweep-t")
    assert r.name == "second" and r.spec_value("metric") == "dev/nDCG@10" and r.spec_value("absent", 7) == 7
    finished = r.trials()
    assert [t.name for t in finished] == ["bm25-kl-s0", "random-kl-s0"]
    a = finished[0]
    assert a.cell == {"sampler.name": "bm25", "loss": "kl"} and a.seed == 0 and a.budget == 64
    assert a.metrics["dev/nDCG@10"] == 0.5 and a.docs_seen == 64  # the last value, its key back in ir_measures notation
    assert [t.name for t in r.trials(statuses=None)] == ["bm25-kl-s0", "bm25-lce-s1", "random-kl-s0"]
    assert r.history(a.run_id, "dev/nDCG@10") == [(0, 0.1), (32, 0.3), (64, 0.5)]
    # the largest step every run reached (32), and each run's value there
    step, values = r.values_at_common_step(r.trials(statuses=None), "dev/nDCG@10")
    assert step == 32 and sorted(values.values()) == [0.2, 0.3, 0.4]
    c = count_trials(r.trials(statuses=None))
    assert [t.name for t in c.full] == ["bm25-kl-s0"] and [t.name for t in c.stopped] == ["random-kl-s0"] and c.running == 1
    assert SweepReader(uri, "ranksweep-t", sweep="first").trials() == []


def test_what_cannot_be_read_is_named(store, tmp_path):
    uri, db = store
    with pytest.raises(RunsError, match=r"no MLflow database at .*missing\.db"):
        SweepReader(f"sqlite:///{tmp_path / 'missing.db'}", "ranksweep-t")
    assert not (tmp_path / "missing.db").exists()  # and none was created
    with pytest.raises(RunsError, match=r"experiment 'ranksweep-x' not found .*ranksweep-t"):
        SweepReader(uri, "ranksweep-x")
    with pytest.raises(RunsError, match=r"no sweep named 'third' .*\['second', 'first'\]"):
        SweepReader(uri, "ranksweep-t", sweep="third")
