"""A real multi-node Ray on loopback (``ray.cluster_utils.Cluster``): a head with 0 CPUs and two workers.

Preparation shards, neural ones with ``num_gpus`` requests, run on the workers and write the same
cache as the single-process path; a sweep's trials run on the workers; a worker removed mid-trial
sends its trial to the other worker, resumed from its checkpoint, still one MLflow run per trial.
The workers declare one (fake) GPU each, so GPU tasks are scheduled as on a GPU cluster and then
run on the CPU, where CUDA is absent.
"""

from __future__ import annotations

import filecmp
import json
import threading
import time
from pathlib import Path

import pytest
from conftest import fast_config

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [c.add_node(num_cpus=2, num_gpus=1) for _ in range(2)]
    c.wait_for_nodes()
    ray.init(address=c.address, include_dashboard=False, log_to_driver=False)
    head = ray.get_runtime_context().get_node_id()
    try:
        yield c, head, workers
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_model):
    """A tiny random cross-encoder (BERT with its classification head saved, so every process loads the same one)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    path = tmp_path_factory.mktemp("tiny_cross")
    torch.manual_seed(1)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    BertForSequenceClassification(BertConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                             intermediate_size=128, num_labels=1)).save_pretrained(path)
    tok.save_pretrained(path)
    return tiny_model, str(path)


def _collection(tmp_path_factory):
    from ranksweep.core.data.synthetic import write_synthetic_beir

    return write_synthetic_beir(tmp_path_factory.mktemp("syn"), 2000, seed=5)


def _stage_files(root: Path) -> dict[str, Path]:
    """Every file of every stage, by path relative to the cache root; build.json (timings, host) and the
    tantivy index (segment files are named by random UUIDs; its results are compared as bm25_candidates) left out."""
    out = {}
    for f in root.rglob("*"):
        rel = f.relative_to(root)
        if f.is_file() and rel.parts[0] not in ("bm25_index", "fingerprints") and f.name != "build.json" \
                and not f.name.endswith(".lock"):
            out[str(rel)] = f
    return out


def test_preparation_runs_on_the_workers_and_writes_the_single_process_cache(cluster, models, tmp_path_factory):
    from ranksweep.core import LocalExecutor, PrepareOptions, TrialConfig, prepare
    from ranksweep.sweeps.prepare import RayExecutor

    c, head, workers = cluster
    student, cross = models
    col = _collection(tmp_path_factory)
    tmp = tmp_path_factory.mktemp("prep")
    caches = {"ray": tmp / "ray-cache", "local": tmp / "local-cache"}
    placements = None
    for name, cache in caches.items():
        d = fast_config(tmp, **{"student.model": student, "student.num_layers": None})
        d["data"].update(train=f"local:{col}:train", eval=[f"local:{col}:test"], cache_dir=str(cache), eval_max_queries=None)
        d["candidates"].update(dense_depth=30, dense_model=student)
        # every neural stage: dense candidates and a bi teacher (embeddings), a cross-encoder teacher (pairs)
        d["teacher"] = {"kind": "ensemble", "members": [{"kind": "bm25"}, {"kind": "bi", "model": student},
                                                        {"kind": "cross", "model": cross}]}
        cfg = TrialConfig.from_dict(d)
        ex = RayExecutor() if name == "ray" else LocalExecutor()
        opts = PrepareOptions(cpus=1, gpus=1, shard_docs=700, shard_queries=50, shard_pairs=6000)
        p = prepare(cfg, samplers=["random", "bm25", "dense", "ensemble", "teacher"], executor=ex, options=opts)
        assert p.pools.dense is not None and p.pools.teacher is not None and set(p.teacher.tables) == {"bm25", "dense", "random"}
        if name == "ray":
            placements = ex.placements
    worker_ids = {w.node_id for w in workers}
    nodes = {x["node_id"] for x in placements}
    assert nodes == worker_ids and head not in nodes  # both workers, never the head (it has no CPU)
    by_label = {}
    for x in placements:
        by_label.setdefault(x["label"].split(" (")[0], []).append(x)
    for label in ("doc_embeddings", "query_embeddings", "dense search", "cross teacher pairs"):
        assert by_label[label] and all(x["gpus"] == 1 and x["node_id"] in worker_ids for x in by_label[label]), label
    for label in ("doc_tokens", "bm25 retrieval", "bm25 pair scores", "doc_embeddings"):
        assert len({x["node_id"] for x in by_label[label]}) == 2, f"{label} shards ran on one worker only"
    ray_files, local_files = _stage_files(caches["ray"]), _stage_files(caches["local"])
    assert sorted(ray_files) == sorted(local_files) and len(ray_files) > 50
    different = [k for k in ray_files if not filecmp.cmp(ray_files[k], local_files[k], shallow=False)]
    assert different == []


def _sweep_spec(tmp: Path, col: Path, student: str, budget: int) -> dict:
    trial = fast_config(tmp, **{"student.model": student, "student.num_layers": None})
    trial.pop("output_dir")
    trial["data"].update(train=f"local:{col}:train", eval=[f"local:{col}:test"], cache_dir=str(tmp / "cache"))
    trial.update(budget_docs=budget, eval_every_docs=32)
    return {"name": "cluster", "base": trial, "space": {"axes": {"loss": ["kl", "lce"]}}, "search": "grid",
            "scheduler": {"name": "none"}, "resources": {"cpu": 1}, "max_concurrent": 2, "retries": 2,
            "prepare": {"cpus": 1, "shard_docs": 1000, "shard_queries": 100},
            "storage": str(tmp / "ray"), "tracking": {"uri": f"sqlite:///{tmp}/mlflow.db", "experiment": "cluster"}}


def test_a_relative_storage_path_on_a_cluster_is_refused_before_any_work(cluster, models, tmp_path_factory, monkeypatch):
    from ranksweep.sweeps.spec import SpecError, load_sweep
    from ranksweep.sweeps.tuner import run_sweep

    c, _, _ = cluster
    tmp = tmp_path_factory.mktemp("relative")
    monkeypatch.chdir(tmp)
    spec = _sweep_spec(tmp, _collection(tmp_path_factory), models[0], 64)
    spec["storage"] = "runs/ray"
    with pytest.raises(SpecError, match=r"storage: 'runs/ray' is a relative path; on a cluster of 3 nodes"):
        run_sweep(load_sweep(spec), address=c.address)
    assert not (tmp / "cache").exists() and not (tmp / "runs").exists()  # nothing was prepared or written


def test_a_gpu_trial_on_a_node_without_usable_cuda_fails_loudly(cluster, models, tmp_path_factory):
    """The workers declare a GPU that CUDA cannot use: the trial fails (after its retry), never trains on the CPU."""
    from mlflow.tracking import MlflowClient

    from ranksweep.sweeps.spec import load_sweep
    from ranksweep.sweeps.tuner import run_sweep

    c, _, _ = cluster
    tmp = tmp_path_factory.mktemp("gpu")
    spec = _sweep_spec(tmp, _collection(tmp_path_factory), models[0], 64)
    spec.update(space={"axes": {"loss": ["kl"]}}, resources={"cpu": 1, "gpu": 1}, retries=1, prepare={"cpus": 1, "gpus": 0})
    results = run_sweep(load_sweep(spec), address=c.address)
    assert len(results.errors) == 1 and "CUDA is not available on" in str(results.errors[0])
    client = MlflowClient(load_sweep(spec).tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("cluster").experiment_id], "tags.`ranksweep.role` = 'trial'")
    assert run.info.status == "FAILED" and "a GPU trial does not fall back to the CPU" in run.data.tags["ranksweep.error"]


def test_sweep_trials_run_on_workers_and_a_lost_worker_resumes_elsewhere(cluster, models, tmp_path_factory):
    from mlflow.tracking import MlflowClient

    from ranksweep.sweeps.runs import NODE_ID
    from ranksweep.sweeps.spec import load_sweep
    from ranksweep.sweeps.tuner import run_sweep

    c, head, workers = cluster
    student, _ = models
    col = _collection(tmp_path_factory)
    tmp = tmp_path_factory.mktemp("sweep")
    budget = 320
    sweep = load_sweep(_sweep_spec(tmp, col, student, budget))
    uri = sweep.tracking_uri
    removed: dict = {}

    def kill_a_worker_mid_trial() -> None:
        """Once a trial has reported twice, remove the worker node it runs on."""
        deadline = time.time() + 600
        while time.time() < deadline and not removed:
            time.sleep(1)
            try:
                client = MlflowClient(uri)
                exp = client.get_experiment_by_name("cluster")
                runs = client.search_runs([exp.experiment_id], "tags.`ranksweep.role` = 'trial'") if exp else []
            except Exception:  # noqa: BLE001 (the database may not exist yet)
                continue
            for r in runs:
                node = r.data.tags.get(NODE_ID)
                if r.info.status == "RUNNING" and node and 64 <= r.data.metrics.get("docs_seen", 0) < budget - 64:
                    victim = next(w for w in workers if w.node_id == node)
                    c.remove_node(victim)
                    removed.update(node=node, trial=r.data.tags["ranksweep.trial_id"], at=r.data.metrics["docs_seen"])
                    return

    killer = threading.Thread(target=kill_a_worker_mid_trial, daemon=True)
    killer.start()
    results = run_sweep(sweep, address=c.address)
    killer.join(timeout=5)
    assert removed, "no trial reached the point where its worker was to be removed"
    assert not results.errors and len(results) == 2
    survivor = next(w.node_id for w in workers if w.node_id != removed["node"])
    for r in results:
        assert r.metrics["docs_seen"] == budget
        if r.metrics["trial_id"] == removed["trial"]:
            # resumed from its checkpoint on the other worker, not from the start
            assert r.metrics["node_id"] == survivor and 0 < r.metrics["restored_docs"] <= removed["at"]
        else:
            assert r.metrics["node_id"] in {w.node_id for w in workers} and r.metrics["node_id"] != head
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("cluster")
    children = client.search_runs([exp.experiment_id], "tags.`ranksweep.role` = 'trial'")
    assert sorted(r.data.tags["ranksweep.trial_id"] for r in children) == sorted(r.metrics["trial_id"] for r in results)
    for r in children:
        assert r.info.status == "FINISHED" and r.data.metrics["docs_seen"] == budget
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "docs_seen")]
        assert steps == sorted(set(steps)) and steps[-1] == budget  # no evaluation logged twice
        arts = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert {"final.json", "metrics.jsonl", "runs", "per_query"} <= arts
        lines = Path(client.download_artifacts(r.info.run_id, "metrics.jsonl", str(tmp))).read_text().splitlines()
        assert [json.loads(x)["docs_seen"] for x in lines] == steps  # the resumed trial kept its earlier evaluations
    # the storage check passed: the cache and the storage are shared by every node (one machine)
