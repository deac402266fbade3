"""A sweep keeps the best trial's final weights in MLflow; `ranksweep export` makes them a model sentence-transformers loads."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import yaml
from conftest import fast_config

from ranksweep.core.metrics import read_trec_run

pytestmark = pytest.mark.ray


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "ranksweep.sweeps.cli", *args], capture_output=True, text=True)


def test_kept_weights_export_and_load_with_the_trials_own_scores(tmp_path, tiny_model):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    trial = fast_config(tmp_path, **{"student.model": tiny_model, "student.num_layers": None, "data.max_query_length": 64})
    trial.pop("output_dir")
    trial.update(budget_docs=64, eval_every_docs=32)
    spec = {"name": "keep", "base": trial, "space": {"axes": {"loss": ["kl", "lce"]}}, "search": "grid", "scheduler": {"name": "none"},
            "resources": {"cpu": 1}, "max_concurrent": 1, "storage": str(tmp_path / "ray"), "keep_weights": 1,
            "tracking": {"uri": uri, "experiment": "keep"}}
    path = tmp_path / "keep.yaml"
    path.write_text(yaml.safe_dump(spec))
    run = _cli("run", str(path))
    assert run.returncode == 0, run.stderr[-3000:]

    import mlflow
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("keep")
    trials = [r for r in c.search_runs([exp.experiment_id]) if r.data.tags.get("ranksweep.role") == "trial"]
    best = max(trials, key=lambda r: r.data.metrics["dev/nDCG_at_10"])
    other = next(r for r in trials if r.info.run_id != best.info.run_id)
    # keep_weights 1: only the best trial's run holds model/, whichever finished first
    assert best.data.tags["ranksweep.weights"] == "kept" and other.data.tags["ranksweep.weights"] in ("not kept", "dropped")
    assert [f.path for f in c.list_artifacts(other.info.run_id) if f.path == "model"] == []

    out = tmp_path / "exported"
    ok = _cli("export", "--experiment", "keep", "--tracking-uri", uri, "--best", "--out", str(out), "--register", "keep-best")
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert f"trial {best.info.run_name}" in ok.stdout and "registered as 'keep-best'" in ok.stdout
    card = (out / "README.md").read_text()
    assert best.info.run_id in card and "dev/nDCG@10" in card and "budget_docs: 64" in card

    # the exported model's scores on the dev pool equal the trial's own final dev run
    from sentence_transformers import SentenceTransformer

    from ranksweep.core import TrialConfig, prepare

    st = SentenceTransformer(str(out), device="cpu")
    dev = read_trec_run(mlflow.artifacts.download_artifacts(run_id=best.info.run_id, artifact_path="runs/dev.run", tracking_uri=uri))
    cfg = TrialConfig.from_dict({**trial, "output_dir": None})
    p = prepare(cfg)
    qtext = dict(zip(p.queries.store.ids_of(range(len(p.queries))), p.queries.store.texts()))
    scale = cfg.student.score_scale
    worst = 0.0
    for q, docs in dev.items():
        ids = list(docs)
        texts = [p.docs.text(int(i)) for i in p.docs.index_of(ids)]
        s = scale * st.similarity(st.encode([qtext[q]], convert_to_tensor=True), st.encode(texts, convert_to_tensor=True))[0].numpy()
        worst = max(worst, float(np.abs(s - np.array([docs[d] for d in ids])).max()))
    assert worst < 1e-5, worst
    # and as registered in MLflow
    mlflow.set_tracking_uri(uri)
    loaded = mlflow.sentence_transformers.load_model("models:/keep-best/1")
    assert np.allclose(loaded.encode(["a claim"]), st.encode(["a claim"]), atol=1e-6)

    # bad input: one line, exit 2
    for args, says in ((["--trial", "nope"], "no finished trial 'nope'"),
                       (["--trial", other.info.run_name], "has no kept weights"),
                       (["--best"], "exists and is not empty")):
        bad = _cli("export", "--experiment", "keep", "--tracking-uri", uri, *args, "--out", str(out if args == ["--best"] else tmp_path / "x"))
        lines = [x for x in bad.stderr.splitlines() if x.strip()]
        assert bad.returncode == 2 and len(lines) == 1 and lines[0].startswith("ranksweep export: ") and says in lines[0], bad.stderr
