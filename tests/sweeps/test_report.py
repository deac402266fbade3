"""Reports of real sweeps (tiny BERT students on SciFact, BM25 teacher) against MLflow read independently."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, fast_config
from scipy import stats as sps
from test_stats import _welch_tost_by_hand

pytestmark = pytest.mark.ray

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")


def _run_sweep(tmp, tiny_model, name: str, space: dict, budget: int = 64, **spec_over) -> str:
    """Run a small sweep in-process; return its SQLite tracking URI."""
    import ray

    from ranksweep.sweeps.spec import load_sweep
    from ranksweep.sweeps.tuner import run_sweep

    # a cross-encoder re-ranking BM25's top 20: its test nDCG moves with every trial (a tiny random
    # bi-encoder retrieving from the whole corpus finds next to nothing, the same for all trials)
    trial = fast_config(tmp, **{"student.model": tiny_model, "student.num_layers": None, "student.kind": "cross"})
    trial.pop("output_dir")
    trial.update(budget_docs=budget, eval_every_docs=32)
    uri = f"sqlite:///{tmp}/mlflow.db"
    spec = {"name": name, "base": trial, "space": space, "search": "grid", "scheduler": {"name": "none"},
            "resources": {"cpu": 1}, "max_concurrent": 2, "storage": str(tmp / "ray"),
            "tracking": {"uri": uri, "experiment": name}, **spec_over}
    (tmp / f"{name}.yaml").write_text(yaml.safe_dump(spec))
    try:
        results = run_sweep(load_sweep(tmp / f"{name}.yaml"))
    finally:
        ray.shutdown()
    assert not results.errors
    return uri


GRID_SPACE = {"axes": {"sampler.name": ["random", "bm25"], "loss": ["kl", "lce"],
                       "temperature": {"values": [1.0, 4.0], "when": {"loss": ["kl"]}}}}


@pytest.fixture(scope="module")
def grid(tmp_path_factory, tiny_model):
    """6 cells (temperature only under kl) x 2 seeds, every trial to its budget, and its report."""
    from ranksweep.sweeps.report import report

    tmp = tmp_path_factory.mktemp("grid")
    uri = _run_sweep(tmp, tiny_model, "grid", GRID_SPACE, seeds=2)
    rep = report("grid", tmp / "report", tracking_uri=uri, margin=0.05, top_k=3)
    return uri, rep


def _raw_runs(uri: str, experiment: str) -> list[dict]:
    """Finished trial runs straight from the MLflow client: cell, seed, metrics in ir_measures notation."""
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    exp = c.get_experiment_by_name(experiment)
    out = []
    for r in c.search_runs([exp.experiment_id], max_results=1000):
        if r.data.tags.get("ranksweep.role") != "trial" or r.info.status != "FINISHED":
            continue
        out.append({"id": r.info.run_id, "name": r.info.run_name, "cell": json.loads(r.data.tags["ranksweep.cell"]),
                    "seed": int(r.data.tags["ranksweep.seed"]),
                    "m": {k.replace("_at_", "@"): v for k, v in r.data.metrics.items()}})
    return out


def test_marginal_means_and_intervals_equal_the_runs_with_each_value(grid):
    from statsmodels.stats.weightstats import DescrStatsW

    uri, rep = grid
    runs = _raw_runs(uri, "grid")
    assert len(runs) == 12
    r = rep.data
    metric = r["metric"]
    assert metric == "beir-scifact-test/nDCG@10" and r["counts"] == {"finished": 12, "stopped_early": 0, "failed": 0, "running": 0}
    for axis, labels in (("sampler.name", ["random", "bm25"]), ("loss", ["kl", "lce"]), ("temperature", ["1", "4"])):
        levels = r["marginal"][axis]["levels"]
        assert [x["label"] for x in levels] == labels  # the space's order
        for lv in levels:
            vals = [x["m"][metric] for x in runs if axis in x["cell"] and x["cell"][axis] == lv["value"]]
            ci = lv["metrics"][metric]
            assert lv["n"] == len(vals) and ci["mean"] == pytest.approx(np.mean(vals))
            assert (ci["low"], ci["high"]) == pytest.approx(DescrStatsW(np.array(vals)).tconfint_mean(alpha=0.05))
            ent = [x["m"]["train/teacher_entropy"] for x in runs if axis in x["cell"] and x["cell"][axis] == lv["value"]]
            assert lv["metrics"]["train/teacher_entropy"]["mean"] == pytest.approx(np.mean(ent))
    assert r["marginal"]["sampler.name"]["levels"][0]["n"] == 6
    assert r["marginal"]["temperature"]["n"] == 8 and r["marginal"]["temperature"]["inactive"] == 4  # only under kl


def test_cells_correlations_and_equivalence_match_independent_computations(grid):
    uri, rep = grid
    runs = _raw_runs(uri, "grid")
    r = rep.data
    metric = r["metric"]
    cells: dict[str, list[float]] = {}
    for x in runs:
        cells.setdefault(json.dumps(x["cell"], sort_keys=True), []).append(x["m"][metric])
    assert len(r["cells"]) == 6 and all(c["n"] == 2 and c["seeds"] == [0, 1] for c in r["cells"])
    for c in r["cells"]:
        assert c["mean"][metric] == pytest.approx(np.mean(cells[json.dumps(c["cell"], sort_keys=True)]))
    means = [c["mean"][metric] for c in r["cells"]]
    assert means == sorted(means, reverse=True)
    # final effectiveness against entropy and diameter: scipy on the raw metrics
    y = [x["m"][metric] for x in runs]
    for key in ("train/teacher_entropy", "probe/diameter"):
        x = [x["m"][key] for x in runs]
        got = r["correlations"][key]
        assert got["n"] == 12
        assert got["pearson"] == pytest.approx(sps.pearsonr(x, y).statistic)
        assert got["spearman"] == pytest.approx(sps.spearmanr(x, y).statistic)
    # TOST: every comparison with the best, by hand
    eq = r["equivalence"]
    assert "refused" not in eq and eq["margin"] == 0.05
    by_label = {c["label"]: cells[json.dumps(c["cell"], sort_keys=True)] for c in r["cells"]}
    assert eq["best"] == r["cells"][0]["label"]
    assert len(eq["to_best"]) == 5 and len(eq["pairs"]) == 15
    for t in eq["to_best"]:
        d, df, _, _, p, _ = _welch_tost_by_hand(by_label[eq["best"]], by_label[t["b"]], 0.05, 0.05)
        assert t["diff"] == pytest.approx(d) and t["p"] == pytest.approx(p) and t["equivalent"] == (p < 0.05)
    assert eq["equivalent_to_best"] == [t["b"] for t in eq["to_best"] if t["p"] < 0.05]


def test_per_query_entropy_correlation_uses_each_trials_files(grid):
    import mlflow

    uri, rep = grid
    pq = rep.data["per_query"]
    assert pq["measure"] == "nDCG@10" and len(pq["trials"]) == 12
    row = pq["trials"][0]
    path = mlflow.artifacts.download_artifacts(run_id=row["run_id"], artifact_path="per_query/beir-scifact-test.tsv",
                                               tracking_uri=uri)
    lines = [x.split("\t") for x in Path(path).read_text().splitlines()]
    col = {c: i for i, c in enumerate(lines[0])}
    h = [float(x[col["teacher_entropy"]]) for x in lines[1:]]
    n = [float(x[col["nDCG@10"]]) for x in lines[1:]]
    assert row["n"] == len(h) == 20
    assert row["spearman"] == pytest.approx(sps.spearmanr(h, n).statistic, nan_ok=True)  # NaN when a column is constant
    assert pq["spearman_mean"]["mean"] == pytest.approx(np.mean([t["spearman"] for t in pq["trials"]]))


def test_learning_curves_and_files(grid):
    from mlflow.tracking import MlflowClient

    uri, rep = grid
    r = rep.data
    assert len(r["curves"]["top"]) == 3 and r["curves"]["stopped"] == []
    c = MlflowClient(tracking_uri=uri)
    runs = {x["name"]: x["id"] for x in _raw_runs(uri, "grid")}
    for name in r["curves"]["top"]:
        hist = sorted((m.step, m.value) for m in c.get_metric_history(runs[name], "dev/nDCG_at_10"))
        assert [tuple(p) for p in r["curves"]["series"][name]] == hist and [s for s, _ in hist] == [32, 64]
    assert r["importance"]["skipped"].startswith("the sweep searched a grid")
    out = rep.out
    figs = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert figs == sorted(["marginal_sampler_name.png", "marginal_loss.png", "marginal_temperature.png", "locality_entropy.png",
                           "per_query_entropy.png", "equivalence.png", "learning_curves.png"])
    md = (out / "report.md").read_text()
    for f in figs:
        assert f"](figures/{f})" in md
    assert "## Equivalence to the best" in md and "| cell | n | difference from best" in md
    assert json.loads((out / "report.json").read_text())["equivalence"]["best"] == r["equivalence"]["best"]
    rows = (out / "tables" / "marginal_loss.csv").read_text().splitlines()
    assert rows[0].startswith("loss,finished,stopped early") and len(rows) == 3
    tex = (out / "tables" / "cells.tex").read_text()  # booktabs, ready for a paper
    assert tex.startswith("\\begin{tabular}{llllll}") and tex.count(" \\\\\n") == 1 + len(r["cells"])
    assert "beir-scifact-test/nDCG@10 mean $\\pm$ sd" in tex


@pytest.mark.skipif(not (BROWSER and DRIVER) and not os.environ.get("RANKSWEEP_REQUIRE_BROWSER"),
                    reason="needs chromium and chromedriver (CI installs them and sets RANKSWEEP_REQUIRE_BROWSER)")
def test_html_report_renders_every_figure_in_headless_chromium(grid, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service


    _, rep = grid
    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,900"):
        opts.add_argument(a)
    opts.binary_location = BROWSER
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    pages = {"fresh": rep.files["html"], "readme": REPO / "docs" / "quickstart-report" / "report.html"}  # this run's, and the README's
    seen = {}
    try:
        for name, page in pages.items():
            driver.get(page.resolve().as_uri())
            seen[name] = {
                "images": driver.execute_script(
                    "return [...document.images].map(i => ({alt: i.alt, ok: i.complete && i.naturalWidth > 0, w: i.naturalWidth,"
                    " external: !i.src.startsWith('data:image/png;base64,')}))"),
                "headings": driver.execute_script("return [...document.querySelectorAll('h2')].map(h => h.textContent)"),
                "tables": driver.execute_script("return document.querySelectorAll('table').length"),
                "errors": [e for e in driver.get_log("browser") if e["level"] == "SEVERE"],
            }
            driver.save_screenshot(str(tmp_path / f"{name}.png"))
    finally:
        driver.quit()
    figures = [k for k in rep.files if k not in ("html", "md", "json")]
    assert len(figures) == 7
    for name, page in seen.items():
        assert len(page["images"]) == 7, name
        assert all(i["ok"] and i["w"] > 200 and not i["external"] for i in page["images"]), (name, page["images"])
        assert page["headings"] == ["Summary", "Marginal effects", "Locality and entropy", "Equivalence to the best", "Learning curves",
                                    "Parameter importance"]
        assert page["tables"] >= 7 and not page["errors"], (name, page["errors"])
        assert (tmp_path / f"{name}.png").stat().st_size > 20_000


def test_optuna_sweep_gets_parameter_importance(tmp_path, tiny_model):
    import optuna

    from ranksweep.sweeps.report import report

    space = {"axes": {"loss": ["kl", "lce"], "optim.lr": {"loguniform": [1.0e-5, 1.0e-3]},
                      "temperature": {"loguniform": [0.5, 4.0], "when": {"loss": ["kl"]}}}}
    uri = _run_sweep(tmp_path, tiny_model, "opt", space, budget=32, search="optuna", num_samples=8)
    rep = report("opt", tmp_path / "report", tracking_uri=uri, min_importance_trials=8)
    imp = rep.data["importance"]
    assert imp["trials"] == 8 and set(imp["importances"]) == {"loss", "optim.lr"}
    assert imp["conditional_axes_left_out"] == ["temperature"]
    assert sum(imp["importances"].values()) == pytest.approx(1.0)
    # the same study rebuilt from the raw runs gives the same importances
    runs = _raw_runs(uri, "opt")
    dists = {"loss": optuna.distributions.CategoricalDistribution(['"kl"', '"lce"']),
             "optim.lr": optuna.distributions.FloatDistribution(1e-5, 1e-3, log=True)}
    study = optuna.create_study(direction="maximize")
    for x in sorted(runs, key=lambda x: x["name"]):  # fANOVA's forest depends on the order: the report's (by run name)
        study.add_trial(optuna.trial.create_trial(params={"loss": json.dumps(x["cell"]["loss"]), "optim.lr": x["cell"]["optim.lr"]},
                                                  distributions=dists, value=x["m"]["dev/nDCG@10"]))
    ref = optuna.importance.get_param_importances(study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    assert imp["importances"] == pytest.approx(dict(ref))
    assert (rep.out / "figures" / "importance.png").exists()
    cont = rep.data["marginal"]["optim.lr"]
    assert cont["continuous"] and cont["n"] == 8
    lr = [x["cell"]["optim.lr"] for x in sorted(runs, key=lambda x: x["name"])]
    assert sorted(cont["points"]["x"]) == pytest.approx(sorted(lr))


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ranksweep.sweeps.cli", "report", *args], capture_output=True, text=True,
                          env=dict(os.environ), timeout=300)


def test_report_cli_writes_the_report_and_names_bad_input(grid, tmp_path):
    uri, rep = grid
    out = _cli("--experiment", "grid", "--tracking-uri", uri, "--out", str(tmp_path / "r"), "--margin", "0.05", "--color-by", "loss")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "per-query beir-scifact-test" in out.stderr and "learning curves" in out.stderr  # progress while MLflow is read
    assert f"best cell by beir-scifact-test/nDCG@10: {rep.data['equivalence']['best']}" in out.stdout
    assert (tmp_path / "r" / "report.html").exists()
    assert json.loads((tmp_path / "r" / "report.json").read_text())["color_by"] == "loss"
    bad = _cli("--experiment", "nope", "--tracking-uri", uri, "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "MLflow experiment 'nope' not found" in bad.stderr and "'grid'" in bad.stderr
    bad = _cli("--experiment", "grid", "--tracking-uri", f"sqlite:///{tmp_path}/missing.db", "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "no MLflow database" in bad.stderr
    bad = _cli("--experiment", "grid", "--tracking-uri", uri, "--out", str(tmp_path / "x"), "--color-by", "sampler")
    assert bad.returncode == 2 and "did you mean 'sampler.name'" in bad.stderr
    bad = _cli("--experiment", "grid", "--tracking-uri", uri, "--out", str(tmp_path / "x"), "--margin", "-1")
    assert bad.returncode == 2 and "--margin must be a positive number" in bad.stderr
    bad = _cli("--experiment", "grid", "--tracking-uri", uri, "--out", str(tmp_path / "x"), "--metric", "test/nDCG@10")
    assert bad.returncode == 2 and "no finished trial has metric 'test/nDCG@10'" in bad.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("args, says", [
    (["--metric", "dev/nDCG@11"], "no trial of sweep 'grid' recorded 'dev/nDCG@11' (known metrics: ["),
    (["--filter", "params.`axis.loss` = 'zzz'"], "no trial of sweep 'grid' matches the filter \"params.`axis.loss` = 'zzz'\""),
    (["--group-by", "sampler,nosuchaxis"], "--group-by nosuchaxis: not an axis or config key of sweep 'grid'"),
    (["--top", "0"], "--top must be at least 1, got 0"),
    (["--experiment", "nope"], "MLflow experiment 'nope' not found"),
    (["--sweep", "nope"], "no sweep named 'nope'"),
])
def test_best_asked_for_what_no_trial_has_exits_2_with_one_line(grid, args, says):
    """Each question ``best`` cannot answer gets one line and exit 2, never an empty table and exit 0."""
    uri, _ = grid
    base = {"--experiment": "grid", "--tracking-uri": uri}
    for k, v in zip(args[::2], args[1::2]):
        base[k] = v
    out = subprocess.run([sys.executable, "-m", "ranksweep.sweeps.cli", "best", *[x for kv in base.items() for x in kv]],
                         capture_output=True, text=True, timeout=300)
    lines = [x for x in out.stderr.splitlines() if x.strip() and " INFO " not in x]
    assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith("ranksweep best: "), out.stderr[-2000:]
    assert says in lines[0], lines[0]
    assert out.stdout == ""
