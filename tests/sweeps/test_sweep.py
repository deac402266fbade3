"""Sweeps on local Ray: the quickstart, a killed-and-resumed driver, and a remote MLflow server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from conftest import REPO, MlflowServer, S3Server, fast_config, tracebacks

from ranksweep.sweeps.runs import mlflow_key

pytestmark = pytest.mark.ray


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _runs(uri, experiment):
    c = _client(uri)
    exp = c.get_experiment_by_name(experiment)
    runs = c.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("ranksweep.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("ranksweep.role") == "trial"]
    return c, parents, children


class Quickstart:
    """The shipped quickstart, run once for this module's tests (see ``quickstart``)."""

    def __init__(self, tmp_path, uri, sweep, results, table) -> None:
        self.tmp_path, self.uri, self.sweep, self.results, self.table = tmp_path, uri, sweep, results, table
        self.budget = sweep.base_config().budget_docs
        self.client, self.parents, self.children = _runs(uri, "qs")
        self.stopped = [r for r in self.children if r.data.tags.get("ranksweep.stopped_early") == "true"]
        self.full = [r for r in results if r.metrics["docs_seen"] == self.budget]  # Ray's results of full-budget trials


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """The shipped quickstart with one seed per cell and ASHA (it ships with 2 seeds and no early stopping), trained to 512
    of its 4,096 documents with an evaluation every 128 (the mechanics of a sweep; tests/test_learning.py checks that its
    trial learns)."""
    import contextlib
    import io

    import ray

    from ranksweep.sweeps.spec import load_sweep
    from ranksweep.sweeps.tuner import run_sweep

    tmp_path = tmp_path_factory.mktemp("quickstart")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    trial = {**yaml.safe_load((REPO / "sweeps" / "quickstart.yaml").read_text())["trial"], "budget_docs": 512, "eval_every_docs": 128}
    sweep = load_sweep(REPO / "sweeps" / "quickstart.yaml", {"storage": str(tmp_path / "ray"), "seeds": 1, "trial": trial,
                                                             "scheduler": {"name": "asha", "grace_docs": 128, "reduction_factor": 2},
                                                             "tracking": {"uri": uri, "experiment": "qs"}})
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            results = run_sweep(sweep)
    finally:
        ray.shutdown()
    return Quickstart(tmp_path, uri, sweep, results, out.getvalue())


def test_quickstart_trials_run_and_are_tracked_under_one_sweep_run_as_ray_names_them(quickstart):
    q = quickstart
    assert not q.results.errors and len(q.results) == 6
    assert "bm25-kl-T4-s0" in q.table and "random-lce-s0" in q.table  # Ray's progress table names trials as MLflow names the runs
    assert len(q.parents) == 1 and len(q.children) == 6
    assert all(r.data.tags["mlflow.parentRunId"] == q.parents[0].info.run_id for r in q.children)
    assert all(r.info.status == "FINISHED" for r in q.children)
    names = {r.info.run_name for r in q.children}
    assert "bm25-kl-T4-s0" in names and "random-lce-s0" in names
    for key in ("probe/diameter", "train/teacher_entropy", "train/loss", "train/docs_per_s"):
        assert mlflow_key(key) in q.children[0].data.metrics


def test_quickstart_asha_stops_trials_early_and_every_evaluation_is_logged_once(quickstart):
    q = quickstart
    assert q.stopped, "ASHA stopped no trial early"
    for r in q.children:
        steps = [m.step for m in q.client.get_metric_history(r.info.run_id, mlflow_key("dev/nDCG@10"))]
        assert steps == sorted(set(steps))  # one value per evaluation, no duplicates
        if r in q.stopped:
            assert max(steps) < q.budget
        else:
            assert max(steps) == q.budget
            arts = {a.path for a in q.client.list_artifacts(r.info.run_id)}
            assert {"final.json", "metrics.jsonl", "runs", "per_query"} <= arts
    # artifacts sit beside the SQLite database, not in the driver's working directory
    assert list((q.tmp_path / "mlartifacts" / "qs").rglob("final.json")) and not (REPO / "mlruns").exists()


def test_best_ranks_the_full_budget_trials_as_ray_does(quickstart):
    """One rule for which trials count: only trials that trained their whole budget are ranked."""
    from ranksweep.sweeps.best import best

    q = quickstart
    ray_best = max(q.full, key=lambda r: r.metrics["dev/nDCG@10"])
    rows = best("qs", q.uri, metric="dev/nDCG@10", top=10)
    assert rows[0]["settings"] == ray_best.config["params"]
    assert rows[0]["mean"] == pytest.approx(ray_best.metrics["dev/nDCG@10"])
    assert len(rows) == len(q.full) and sorted(rows.stopped) == sorted(r.info.run_name for r in q.stopped)
    assert not {n for row in rows for n in row["runs"]} & set(rows.stopped)


def test_best_with_stopped_trials_compares_every_trial_at_the_largest_common_step(quickstart):
    from ranksweep.sweeps.best import best

    q = quickstart
    step = min(r.metrics["docs_seen"] for r in q.results)
    at_step = {json.dumps(r.config["params"], sort_keys=True):
               float(r.metrics_dataframe.set_index("docs_seen").loc[step, "dev/nDCG@10"]) for r in q.results}
    everyone = best("qs", q.uri, metric="dev/nDCG@10", top=10, include_stopped=True)
    assert len(everyone) == 6 and everyone.stopped == [] and all(row["at_docs"] == step for row in everyone)
    for row in everyone:
        assert row["mean"] == pytest.approx(at_step[json.dumps(row["settings"], sort_keys=True)])


def test_best_groups_by_an_axis_filters_and_writes_csv_and_json(quickstart):
    from ranksweep.sweeps.best import best, format_rows

    q = quickstart
    by_sampler = best("qs", q.uri, metric="dev/nDCG@10", group_by=["sampler"], top=10)
    for row in by_sampler:
        xs = [r.metrics["dev/nDCG@10"] for r in q.full if r.config["params"]["sampler.name"] == row["settings"]["sampler.name"]]
        assert row["n"] == len(xs) and row["mean"] == pytest.approx(sum(xs) / len(xs))
    assert sorted(row["settings"]["sampler.name"] for row in by_sampler) == sorted({r.config["params"]["sampler.name"] for r in q.full})
    kl_only = best("qs", q.uri, metric="dev/nDCG@10", filter="params.`axis.loss` = 'kl'", top=10)
    assert len(kl_only) == sum(r.config["params"]["loss"] == "kl" for r in q.full) and all(row["settings"]["loss"] == "kl" for row in kl_only)
    rows = best("qs", q.uri, metric="dev/nDCG@10", top=10)
    assert json.loads(format_rows(rows, "dev/nDCG@10", "json"))[0]["mean"] == pytest.approx(rows[0]["mean"])
    csv_lines = format_rows(rows, "dev/nDCG@10", "csv").splitlines()
    assert csv_lines[0].endswith("dev/nDCG@10 mean,std,n") and len(csv_lines) == len(rows) + 1


def test_plan_replays_the_quickstart_full_budget_curves(quickstart, capsys):
    from ranksweep.sweeps.cli import main_plan

    q = quickstart
    assert main_plan(["--experiment", "qs", "--tracking-uri", q.uri, "--format", "json", "--orders", "4"]) == 0
    plan_rows = json.loads(capsys.readouterr().out)
    assert plan_rows[0] == {"scheduler": "none", "params": {}, "compute_fraction": 1.0, "best_kept": 1.0, "regret": 0.0,
                            "topk_kept": float(min(3, len(q.full)))}
    assert {r["scheduler"] for r in plan_rows} == {"none", "asha", "hyperband", "median"}
    assert all(0 < r["compute_fraction"] <= 1 and 0 <= r["best_kept"] <= 1 and r["regret"] >= 0 for r in plan_rows)


def test_the_quickstart_report_counts_stopped_trials_and_refuses_equivalence_on_one_seed(quickstart):
    from ranksweep.sweeps.report import report

    q = quickstart
    rep = report("qs", q.tmp_path / "report", tracking_uri=q.uri).data
    assert rep["counts"] == {"finished": 6 - len(q.stopped), "stopped_early": len(q.stopped), "failed": 0, "running": 0}
    assert rep["equivalence"]["refused"].startswith("equivalence tests need at least 2 seeds per cell; too few:")
    assert sorted(rep["curves"]["stopped"]) == sorted(r.info.run_name for r in q.stopped)
    for r in q.stopped:
        assert [d for d, _ in rep["curves"]["series"][r.info.run_name]][-1] < q.budget
    assert sum(lv["stopped"] for lv in rep["marginal"]["loss"]["levels"]) == len(q.stopped)
    assert (q.tmp_path / "report" / "report.html").exists()


def _tiny_sweep(tmp_path, tiny_model, uri, trials_losses, budget=96, concurrent=1, storage=None, scheduler=None, name="tiny"):
    trial = fast_config(tmp_path, **{"student.model": tiny_model, "student.num_layers": None})
    trial.pop("output_dir")
    trial.update(budget_docs=budget, eval_every_docs=32)
    spec = {"name": name, "base": trial, "space": {"axes": {"loss": trials_losses}},
            "search": "grid", "scheduler": scheduler or {"name": "none"}, "resources": {"cpu": 1},
            "max_concurrent": concurrent, "storage": storage or str(tmp_path / "ray"), "tracking": {"uri": uri, "experiment": "tiny"}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _cli(*args, env=None, **kw):
    return subprocess.Popen([sys.executable, "-m", "ranksweep.sweeps.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=dict(os.environ, **(env or {})), **kw)


def _final_docs(uri: str, experiment: str, sweep: str) -> dict[str, float]:
    """Each trial's last docs seen, by loss (the cell), in the sweep (parent run) named ``sweep``."""
    c, parents, children = _runs(uri, experiment)
    parent = next(p.info.run_id for p in parents if p.info.run_name == sweep)
    return {json.loads(r.data.tags["ranksweep.cell"])["loss"]: r.data.metrics["docs_seen"] for r in children
            if r.data.tags["mlflow.parentRunId"] == parent}


def test_driver_killed_after_the_first_rung_resumes_with_the_same_asha_decisions_and_no_duplicates(tmp_path, tiny_model):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    losses = ["kl", "lce", "margin_mse", "ranknet"]
    asha = {"name": "asha", "grace_docs": 32, "reduction_factor": 2}  # rungs at 32 and 64 docs, budget 128
    # the same sweep without interruption, one trial at a time so the order of decisions is fixed
    whole = _tiny_sweep(tmp_path, tiny_model, uri, losses, budget=128, scheduler=asha, name="whole")
    out = _cli("run", str(whole))
    log, _ = out.communicate(timeout=600)
    assert out.returncode == 0, log[-3000:]
    reference = _final_docs(uri, "tiny", "whole")
    # `ranksweep plan` replays this live sweep's curves in its own order (one trial at a time) through a fresh
    # ASHA: it makes every decision the live ASHA made, as the live scheduler's journal recorded them
    from ranksweep.sweeps.plan import Curves, Setting, replay

    journal = [json.loads(x) for x in (tmp_path / "ray" / "whole" / "ranksweep-scheduler.jsonl").read_text().splitlines()]
    live = list(dict.fromkeys((e["trial"], int(e["result"]["docs_seen"]), e["decision"]) for e in journal if e["event"] == "result"))
    curves = Curves.from_mlflow(uri, "tiny", "whole", include_stopped=True)
    replayed = replay(curves, Setting("asha", asha).build("dev/nDCG@10", "max", 128), concurrency=1)
    assert replayed.decisions == live and not replayed.beyond_record
    assert {c.cell["loss"]: replayed.docs[c.trial_id] for c in curves.trials} == reference

    # the killed sweep keeps its Ray storage on an S3 API (moto on loopback): the resume reads it from there
    s3 = S3Server().start()
    try:
        _killed_and_resumed_on_s3(tmp_path, tiny_model, uri, losses, asha, reference, s3)
    finally:
        s3.stop()


def _killed_and_resumed_on_s3(tmp_path, tiny_model, uri, losses, asha, reference, s3):
    spec = _tiny_sweep(tmp_path, tiny_model, uri, losses, budget=128, scheduler=asha, name="killed",
                       storage=s3.storage(s3.bucket("sweeps"), "ray"))
    proc = _cli("run", str(spec), start_new_session=True, env=s3.env)
    deadline = time.time() + 400
    killed = False
    while time.time() < deadline and proc.poll() is None:
        time.sleep(1)
        try:
            _, parents, children = _runs(uri, "tiny")
        except Exception:  # noqa: BLE001 (the database may be busy)
            continue
        ours = {p.info.run_id for p in parents if p.info.run_name == "killed"}
        mine = [r for r in children if r.data.tags.get("mlflow.parentRunId") in ours]
        if len([r for r in mine if r.data.metrics.get("docs_seen", 0) >= 32]) >= 2:  # two trials past the first rung
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
            killed = True
            break
    proc.wait(timeout=60)
    assert killed, "the sweep finished before it could be killed mid-way"
    _, _, before = _runs(uri, "tiny")
    finished_before = {r.data.tags["ranksweep.trial_id"]: r.info.run_id for r in before if r.info.status == "FINISHED"}
    out = _cli("run", str(spec), "--resume", env=s3.env)
    log, _ = out.communicate(timeout=600)
    assert out.returncode == 0, log[-3000:]
    assert any(k.startswith("ray/killed/experiment_state") for k in s3.keys("sweeps"))
    # the resumed scheduler made the decisions the uninterrupted one made (Tuner.restore alone forgets its rungs)
    assert _final_docs(uri, "tiny", "killed") == reference
    assert set(reference.values()) != {128.0}, "ASHA stopped no trial: the comparison shows nothing"
    c, parents, children = _runs(uri, "tiny")
    killed_parent = [p for p in parents if p.info.run_name == "killed"]
    assert len(killed_parent) == 1
    mine = [r for r in children if r.data.tags["mlflow.parentRunId"] == killed_parent[0].info.run_id]
    trial_ids = [r.data.tags["ranksweep.trial_id"] for r in mine]
    assert sorted(trial_ids) == sorted(set(trial_ids)) and len(trial_ids) == len(losses)
    assert all(r.info.status == "FINISHED" for r in mine)
    for r in mine:
        steps = [m.step for m in c.get_metric_history(r.info.run_id, "docs_seen")]
        assert steps == sorted(set(steps)) and steps[-1] == r.data.metrics["docs_seen"]
        if r.data.tags["ranksweep.trial_id"] in finished_before:  # never rerun
            assert r.info.run_id == finished_before[r.data.tags["ranksweep.trial_id"]]


def test_small_sweep_against_a_local_mlflow_server_with_storage_as_a_uri(tmp_path, tiny_model):
    """MLflow over HTTP, and the sweep's storage given as a pyarrow URI (``file://`` takes the same path as
    ``s3://``): trial outputs reach MLflow through Ray's storage, not through a path the driver shares. The
    machine also names a Ray cluster that is gone (``RAY_ADDRESS``): without ``--address`` the sweep starts
    a fresh local Ray instead of retrying it."""
    from conftest import free_port

    server = MlflowServer(tmp_path).start()
    uri = server.url
    try:
        spec = _tiny_sweep(tmp_path, tiny_model, "sqlite:///unused.db", ["kl", "lce"], budget=64, concurrent=2,
                           storage=(tmp_path / "ray").as_uri())
        out = _cli("run", str(spec), "--tracking-uri", uri, env={"RAY_ADDRESS": f"127.0.0.2:{free_port('127.0.0.2')}"})
        log, _ = out.communicate(timeout=600)
        assert out.returncode == 0, log[-3000:]
        c, parents, children = _runs(uri, "tiny")
        assert len(parents) == 1 and len(children) == 2
        assert all(r.info.status == "FINISHED" and r.data.metrics["docs_seen"] == 64 for r in children)
        for r in children:
            assert {"final.json", "metrics.jsonl", "runs", "per_query"} <= {a.path for a in c.list_artifacts(r.info.run_id)}
        assert list((tmp_path / "ray" / "tiny").glob("*/outputs/final.json"))  # where Ray put them (trial folders are named as the runs)
        assert "best settings by" in log
    finally:
        server.stop()


def _mine(uri: str, sweep: str):
    """The sweep's parent run and its trial runs (the database may be busy: None then)."""
    try:
        _, parents, children = _runs(uri, "tiny")
    except Exception:  # noqa: BLE001
        return None, []
    parent = next((p for p in parents if p.info.run_name == sweep), None)
    if parent is None:
        return None, []
    return parent, [r for r in children if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]


def test_ctrl_c_says_the_sweep_is_interrupted_exits_130_and_resume_finishes_it_without_loss_or_duplicates(tmp_path, tiny_model):
    import re

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    losses = ["kl", "lce", "ranknet"]
    spec = _tiny_sweep(tmp_path, tiny_model, uri, losses, budget=96, name="ctrlc")
    proc = _cli("run", str(spec), start_new_session=True)
    deadline, sent = time.time() + 400, False
    while time.time() < deadline and proc.poll() is None:
        time.sleep(1)
        _, mine = _mine(uri, "ctrlc")
        done = [r for r in mine if r.info.status == "FINISHED"]
        busy = [r for r in mine if r.info.status == "RUNNING" and r.data.metrics.get("docs_seen", 0) >= 32]
        if done and busy:  # one trial finished, the next one past its first checkpoint
            os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the driver's whole process group
            sent = True
            break
    log, _ = proc.communicate(timeout=180)
    assert sent, "the sweep finished before it could be interrupted"
    assert proc.returncode == 130, log[-3000:]
    m = re.search(r"sweep 'ctrlc' interrupted by SIGINT: (\d+) of 3 trials finished, (\d+) running .*?, (\d+) pending, 0 failed", log)
    assert m, log[-3000:]
    finished, running, pending = map(int, m.groups())
    assert finished >= 1 and running == 1 and finished + running + pending == 3
    assert f"to continue it: ranksweep run {spec} --resume" in log
    assert "best settings by" not in log and "Tuner.restore" not in log and not tracebacks(log)
    parent, mine = _mine(uri, "ctrlc")
    assert parent.info.status == "RUNNING"  # the sweep is not over
    assert sum(r.info.status == "FINISHED" for r in mine) == finished
    finished_before = {r.data.tags["ranksweep.trial_id"]: r.info.run_id for r in mine if r.info.status == "FINISHED"}

    out = _cli("run", str(spec), "--resume")
    log, _ = out.communicate(timeout=600)
    assert out.returncode == 0, log[-3000:]
    assert "best settings by" in log
    c = _client(uri)
    parent, mine = _mine(uri, "ctrlc")
    assert parent.info.status == "FINISHED"
    trial_ids = [r.data.tags["ranksweep.trial_id"] for r in mine]
    assert len(trial_ids) == len(set(trial_ids)) == len(losses)  # none lost, none duplicated
    for r in mine:
        assert r.info.status == "FINISHED" and r.data.metrics["docs_seen"] == 96
        steps = [m.step for m in c.get_metric_history(r.info.run_id, "docs_seen")]
        assert steps == sorted(set(steps)) and steps[-1] == 96  # every evaluation once
        if r.data.tags["ranksweep.trial_id"] in finished_before:  # never rerun
            assert r.info.run_id == finished_before[r.data.tags["ranksweep.trial_id"]]
