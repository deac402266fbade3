"""``ranksweep plan``: replaying Ray Tune's schedulers over recorded learning curves.

The replay of a live ASHA sweep is checked against that sweep's own decisions in test_sweep.py;
here, hand-worked cases of the simulation and the scores, and the CLI's errors.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from ranksweep.sweeps.plan import Curve, Curves, PlanError, Setting, cell_means, plan, replay, score, settings_grid

STEPS = [100, 200, 300, 400]


def _curves(levels: dict[str, list[float]], seeds: int = 1, jitter: float = 0.0) -> Curves:
    """One trial per cell and seed; a cell's curve takes its ``levels`` at the four steps (seed s adds s*jitter)."""
    trials = []
    for i, (cell, lv) in enumerate(levels.items()):
        for s in range(seeds):
            trials.append(Curve(f"{cell}_{s}", f"{cell}-s{s}", {"cell": cell}, s, 400,
                                [(d, v + s * jitter) for d, v in zip(STEPS, lv)], start=i * seeds + s))
    return Curves("pilot", "dev/nDCG@10", "max", trials, concurrency=1)


def test_asha_one_at_a_time_stops_what_the_rung_cutoff_stops():
    # rungs at 100 and 200 (grace 100, rf 2, budget 400): the first trial sets each rung; a later trial
    # below the median of a rung's recorded values is stopped there
    c = _curves({"a": [0.5, 0.6, 0.7, 0.8], "b": [0.4, 0.5, 0.6, 0.9], "c": [0.6, 0.5, 0.5, 0.5]})
    s = Setting("asha", {"grace_docs": 100, "reduction_factor": 2}).build("dev/nDCG@10", "max", 400)
    rep = replay(c, s, order=[0, 1, 2], concurrency=1)
    assert rep.docs == {"a_0": 400, "b_0": 100, "c_0": 200}
    assert [(t, d, x) for t, d, x in rep.decisions if x != "CONTINUE"] == [("a_0", 400, "STOP"), ("b_0", 100, "STOP"),
                                                                          ("c_0", 200, "STOP")]
    assert not rep.beyond_record


def test_concurrent_trials_see_each_other_in_time_order():
    # two at once: a and b report at the same times, a first; c starts when b is stopped at 100
    c = _curves({"a": [0.5, 0.6, 0.7, 0.8], "b": [0.4, 0.5, 0.6, 0.9], "c": [0.6, 0.5, 0.5, 0.5]})
    s = Setting("asha", {"grace_docs": 100, "reduction_factor": 2}).build("dev/nDCG@10", "max", 400)
    rep = replay(c, s, order=[0, 1, 2], concurrency=2)
    assert rep.decisions[:3] == [("a_0", 100, "CONTINUE"), ("b_0", 100, "STOP"), ("a_0", 200, "CONTINUE")]
    # c reports its 100 at time 200, after a's 200 (a was added first): the rung at 100 holds a and b, c passes
    assert rep.decisions[3] == ("c_0", 100, "CONTINUE")
    assert rep.docs["b_0"] == 100 and rep.docs["a_0"] == 400


def test_recorded_times_decide_who_reaches_a_rung_first():
    # a starts first but is slow; with recorded times the fast b reaches the rung at 100 first and a, below
    # it, is stopped there; with equal speeds a reaches it first and b, above it, goes on too
    c = _curves({"a": [0.4, 0.5, 0.6, 0.7], "b": [0.6, 0.6, 0.6, 0.6]})
    c.trials[0].seconds, c.trials[1].seconds = [10.0, 20.0, 30.0, 40.0], [1.0, 2.0, 3.0, 4.0]
    asha = Setting("asha", {"grace_docs": 100, "reduction_factor": 2})
    timed = replay(c, asha.build("dev/nDCG@10", "max", 400), order=[0, 1], concurrency=2, timing="seconds")
    assert timed.decisions[:2] == [("b_0", 100, "CONTINUE"), ("b_0", 200, "CONTINUE")]
    assert timed.docs == {"a_0": 100, "b_0": 400}
    equal = replay(c, asha.build("dev/nDCG@10", "max", 400), order=[0, 1], concurrency=2, timing="docs")
    assert equal.decisions[:2] == [("a_0", 100, "CONTINUE"), ("b_0", 100, "CONTINUE")]
    assert equal.docs == {"a_0": 400, "b_0": 400}


def test_no_scheduler_trains_everything_and_is_the_grid():
    c = _curves({"a": [0.5, 0.6, 0.7, 0.8], "b": [0.4, 0.5, 0.6, 0.9]}, seeds=2, jitter=0.01)
    p = plan(c, [Setting("none", {})], orders=3)
    assert p.rows[0].as_dict() == {"scheduler": "none", "params": {}, "compute_fraction": 1.0, "best_kept": 1.0, "regret": 0.0,
                                   "topk_kept": 2.0}


def test_a_late_bloomer_is_lost_by_an_early_rung_and_the_regret_is_the_gap():
    # b is worst until its last evaluation, where it is the best cell. a is above every rung's median, so it
    # always trains to the end; when a trial of a comes first, both of b's are stopped at 100
    c = _curves({"a": [0.50, 0.60, 0.70, 0.80], "b": [0.10, 0.10, 0.10, 0.90], "c": [0.45, 0.55, 0.6, 0.7]}, seeds=2)
    asha = Setting("asha", {"grace_docs": 100, "reduction_factor": 2})
    cells, _ = cell_means(c)
    assert list(cells) == [json.dumps({"cell": x}) for x in "bac"]
    rep = replay(c, asha.build("dev/nDCG@10", "max", 400), order=[0, 1, 4, 5, 2, 3], concurrency=1)
    assert rep.docs == {"a_0": 400, "a_1": 400, "c_0": 100, "c_1": 100, "b_0": 100, "b_1": 100}
    assert score(c, rep, cells, top_k=2) == (pytest.approx(0.5), False, pytest.approx(0.10), 1)
    # over random orders: whenever b is lost, the pick is a, 0.10 below it
    row = plan(c, [asha], orders=20, concurrency=1, top_k=2).rows[0]
    assert 0 < row.best_kept < 1 and row.compute_fraction < 1
    assert row.regret == pytest.approx(0.10 * (1 - row.best_kept))
    assert row.topk_kept == pytest.approx(1 + row.best_kept)


def test_the_recommendation_is_the_cheapest_within_noise_and_none_when_nothing_is():
    good = _curves({"a": [0.5, 0.6, 0.7, 0.8], "b": [0.3, 0.35, 0.4, 0.45], "c": [0.2, 0.25, 0.3, 0.35]}, seeds=2, jitter=0.01)
    p = plan(good, orders=5)
    assert p.recommended is not None and p.rows[p.recommended].regret <= p.noise
    assert p.rows[p.recommended].compute_fraction == min(r.compute_fraction for r in p.rows if r.regret <= p.noise)
    late = _curves({"a": [0.5, 0.6, 0.7, 0.8], "b": [0.1, 0.1, 0.1, 0.95], "c": [0.45, 0.5, 0.55, 0.6]}, seeds=2, jitter=0.001)
    p = plan(late, [Setting("none", {}), Setting("asha", {"grace_docs": 100, "reduction_factor": 2})], orders=5)
    assert p.recommended is None


def test_settings_grid_graces_are_evaluation_steps_and_every_scheduler_is_there():
    steps = [256 * i for i in range(1, 9)]
    grid = settings_grid(steps, 2048)
    assert {s.name for s in grid} == {"none", "asha", "hyperband", "median"}
    assert all(s.params["grace_docs"] in steps and s.params["grace_docs"] <= 1024 for s in grid if s.name != "none")
    hb = [s for s in grid if s.name == "hyperband"]
    assert hb and all(s.params["brackets"] >= 2 for s in hb)
    # a hyperband row is what `scheduler: {name: asha, brackets: n}` runs
    assert hb[0].spec(2048, 12_000_000) == {"name": "asha", "grace_docs": round(hb[0].params["grace_docs"] * 12_000_000 / 2048),
                                            "reduction_factor": hb[0].params["reduction_factor"], "brackets": hb[0].params["brackets"]}


def test_incomplete_curves_are_refused():
    c = _curves({"a": [0.5, 0.6, 0.7, 0.8]})
    c.trials[0].points = c.trials[0].points[:2]
    with pytest.raises(PlanError, match="did not train their full budget"):
        plan(c)


def _mlflow_sweep(uri: str, docs: list[int], budget: int = 400) -> None:
    """A sweep as the tracking writer writes it: a parent run and trial runs with their dev curves."""
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    exp = c.create_experiment("pilot")
    parent = c.create_run(exp, run_name="pilot", tags={"ranksweep.role": "sweep"})
    c.log_param(parent.info.run_id, "spec.max_concurrent", "2")
    c.set_terminated(parent.info.run_id)
    for i, last in enumerate(docs):
        r = c.create_run(exp, run_name=f"t{i}", tags={"ranksweep.role": "trial", "mlflow.parentRunId": parent.info.run_id,
                                                      "ranksweep.cell": json.dumps({"loss": f"l{i}"}), "ranksweep.seed": "0",
                                                      "ranksweep.trial_id": f"trial_{i}"})
        c.log_param(r.info.run_id, "budget_docs", str(budget))
        for d in range(100, last + 1, 100):
            c.log_metric(r.info.run_id, "dev/nDCG_at_10", 0.1 * i + d / 1000, step=d)
            c.log_metric(r.info.run_id, "docs_seen", d, step=d)
        c.set_terminated(r.info.run_id)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "ranksweep.sweeps.cli", "plan", *args], capture_output=True, text=True, timeout=120)


def test_cli_plans_from_mlflow_round_trips_curves_and_refuses_bad_input(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    _mlflow_sweep(uri, [400, 400, 400, 200])  # the last trial was stopped early: left out
    out = _cli("--experiment", "pilot", "--tracking-uri", uri, "--format", "json", "--orders", "3",
               "--save-curves", str(tmp_path / "curves.json"))
    assert out.returncode == 0, out.stderr[-2000:]
    rows = json.loads(out.stdout)
    assert all(set(r) == {"scheduler", "params", "compute_fraction", "best_kept", "regret", "topk_kept"} for r in rows)
    assert rows[0]["scheduler"] == "none" and {r["scheduler"] for r in rows} >= {"asha", "hyperband", "median"}
    curves = Curves.load(tmp_path / "curves.json")
    assert [t.trial_id for t in curves.trials] == ["trial_0", "trial_1", "trial_2"] and curves.concurrency == 2
    assert curves.trials[2].points == [(d, pytest.approx(0.2 + d / 1000)) for d in (100, 200, 300, 400)]
    again = _cli("--curves", str(tmp_path / "curves.json"), "--format", "json", "--orders", "3")
    assert json.loads(again.stdout) == rows
    table = _cli("--curves", str(tmp_path / "curves.json"), "--orders", "3", "--for", "sweeps/paper_msmarco.yaml",
                 "--gpus", "8", "--docs-per-s", "3000")
    assert table.returncode == 0 and "GPU-hours" in table.stdout and "paper-msmarco: 128 trials" in table.stdout

    for args, says in ((["--experiment", "nope", "--tracking-uri", uri], "experiment 'nope' not found"),
                       (["--experiment", "pilot", "--tracking-uri", f"sqlite:///{tmp_path}/none.db"], "no MLflow database"),
                       (["--curves", str(tmp_path / "missing.json")], "not a curves file")):
        bad = _cli(*args)
        lines = [x for x in bad.stderr.splitlines() if x.strip()]
        assert bad.returncode == 2 and len(lines) == 1 and lines[0].startswith("ranksweep plan: ") and says in lines[0], bad.stderr
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    _mlflow_sweep(f"sqlite:///{stopped}/mlflow.db", [200, 300])
    bad = _cli("--experiment", "pilot", "--tracking-uri", f"sqlite:///{stopped}/mlflow.db")
    assert bad.returncode == 2 and "has no trial that trained its full budget" in bad.stderr and "Traceback" not in bad.stderr


def test_a_recommended_hyperband_row_runs_as_asha_with_brackets(tmp_path):
    from conftest import REPO

    from ranksweep.sweeps.spec import SpecError, load_sweep
    from ranksweep.sweeps.tuner import _scheduler

    spec = REPO / "sweeps" / "scifact_pilot.yaml"
    row = Setting("hyperband", {"grace_docs": 512, "reduction_factor": 2, "brackets": 3})
    sweep = load_sweep(spec, {"scheduler": row.spec(4096), "storage": str(tmp_path)})
    inner = _scheduler(sweep, sweep.base_config()).inner
    assert type(inner).__name__ == "AsyncHyperBandScheduler" and len(inner._brackets) == 3
    assert [m for m, _ in inner._brackets[0]._rungs][::-1] == [512, 1024, 2048, 4096]
    with pytest.raises(SpecError, match="scheduler.brackets"):
        load_sweep(spec, {"scheduler": {"name": "median", "brackets": 2}})
    with pytest.raises(SpecError, match="scheduler.reduction_factor"):
        load_sweep(spec, {"scheduler": {"name": "asha", "reduction_factor": 1}})


def test_the_committed_pilot_plan_is_what_its_curves_give():
    """docs/pilot: the pilot's curves (the study's, saved from its MLflow runs) give the committed plan, shown in the README."""
    from conftest import REPO

    from ranksweep.sweeps.plan import format_plan

    folder = REPO / "docs" / "pilot"
    curves = Curves.load(folder / "curves.json")
    assert len(curves.trials) == 60 and len({t.cell_key() for t in curves.trials}) == 20
    assert all(t.complete and [d for d, _ in t.points] == [0, 1024, 2048, 3072, 4096] and t.seconds for t in curves.trials)
    assert all(t.points[-1][1] > t.points[0][1] for t in curves.trials)  # every trial learned
    p = plan(curves)
    assert json.loads(json.dumps([r.as_dict() for r in p.rows])) == json.loads((folder / "plan.json").read_text())
    text = format_plan(p)
    assert text == (folder / "plan.txt").read_text().rstrip("\n")
    readme = (REPO / "README.md").read_text()
    assert text.split("\n\n")[1] in readme  # the table, as the command printed it


def test_cells_within_seed_noise_get_no_recommendation_and_cells_beyond_it_do():
    """Regret within noise is met by any scheduler when every cell is within noise: no recommendation then,
    and a reason; the same grid with one cell far beyond noise gets one (an ANOVA over cells decides)."""
    from ranksweep.sweeps.plan import cells_differ, format_plan

    rng = np.random.default_rng(3)
    rising = [0.40, 0.43, 0.46, 0.50]

    def pilot(shift_a: float) -> Curves:
        trials = []
        for i, cell in enumerate("abcd"):
            for s in range(3):
                noise = rng.normal(0, 0.01)  # one seed's offset, the same along its curve
                up = shift_a * (cell == "a") * np.array([0.25, 0.5, 0.75, 1.0])
                trials.append(Curve(f"{cell}_{s}", f"{cell}-s{s}", {"cell": cell}, s, 400,
                                    [(d, float(v + noise + u)) for d, v, u in zip(STEPS, rising, up)], start=3 * i + s))
        return Curves("pilot", "dev/nDCG@10", "max", trials, concurrency=1)

    noise_only = pilot(0.0)
    test = cells_differ(noise_only)
    assert not test.differ and test.p >= 0.05
    p = plan(noise_only, orders=4)
    assert p.recommended is None
    assert min(r.regret for r in p.rows if r.scheduler != "none") <= p.noise  # what the old rule recommended on
    text = format_plan(p)
    assert "do not differ beyond seed noise" in text and "recommended: nothing" in text
    signal = pilot(0.2)
    assert cells_differ(signal).differ
    assert plan(signal, orders=4).recommended is not None
    one_seed = Curves("pilot", "dev/nDCG@10", "max", [t for t in signal.trials if t.seed == 0], concurrency=1)
    assert math.isnan(cells_differ(one_seed).p) and plan(one_seed, orders=2).recommended is None
