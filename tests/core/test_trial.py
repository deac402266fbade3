"""Whole trials on SciFact: budget, determinism, reporting, files, bad input, and that distillation helps."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch
from conftest import TINY_BEIR, fast_config, tiny_config

from ranksweep.core import Trial, TrialConfig, metric_keys, prepare, run_trial
from ranksweep.core.trial import start_metric_keys
from ranksweep.core.losses import LOSSES
from ranksweep.core.metrics import read_trec_run
from ranksweep.core.teachers import TeacherError


def _assert_emits_exactly(cfg, calls):
    """Every evaluation reports exactly ``metric_keys(cfg)``; the final one adds the eval sets and reference metrics."""
    p = prepare(cfg)
    for _, m in calls[:-1]:
        assert set(m) == set(metric_keys(cfg))
    assert set(calls[-1][1]) == set(metric_keys(cfg, [es.name for es in p.evals], final=True)) | set(p.reference_metrics)


def test_trial_trains_exactly_the_budget_and_reports(tmp_path, tiny_model):
    # 72 docs with 4 queries x 4 docs per micro-batch: 4 full batches + one of 2 queries
    cfg = tiny_config(tmp_path, tiny_model, budget_docs=72, eval_every_docs=32, **{"eval.at_start": True})
    calls = []
    final = run_trial(cfg, report=lambda m, docs: calls.append((docs, dict(m))))
    assert [d for d, _ in calls] == [0, 32, 64, 72]  # the student's start first, then every eval_every_docs
    assert final["docs_seen"] == 72 and final["steps"] == 5
    start, calls = calls[0][1], calls[1:]
    assert set(start) == set(start_metric_keys(cfg)) | set(prepare(cfg).reference_metrics)
    assert start["steps"] == 0 and np.isfinite(start["dev/nDCG@10"]) and np.isfinite(start["probe/kl"])
    _assert_emits_exactly(cfg, calls)
    for docs, m in calls:
        assert m["docs_seen"] == docs
        for key in ("dev/nDCG@10", "train/loss", "train/kl", "probe/diameter", "probe/kl",
                    "train/teacher_entropy", "train/teacher_entropy_q25", "train/teacher_pairwise_entropy", "train/docs_per_s"):
            assert np.isfinite(m[key]), key
    for key in ("beir-scifact-test/nDCG@10", "beir-scifact-test/RR@10", "beir-scifact-test/R@100",
                "teacher/beir-scifact-test/nDCG@10", "bm25/beir-scifact-test/nDCG@10", "teacher/dev/nDCG@10"):
        assert key in final
    assert "beir-scifact-test/nDCG@10" not in calls[0][1]  # eval collections only at the end
    out = tmp_path / "trial"
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["docs_seen"] for x in lines] == [0, 32, 64, 72]
    assert json.loads((out / "final.json").read_text())["docs_seen"] == 72
    assert TrialConfig.from_yaml(out / "config.yaml") == cfg
    run = read_trec_run(out / "runs" / "beir-scifact-test.run")
    assert len(run) == 20 and all(len(v) == 20 for v in run.values())  # 20 queries, bi retrieves top-20
    rows = [x.split("\t") for x in (out / "per_query" / "beir-scifact-test.tsv").read_text().splitlines()]
    assert rows[0] == ["query_id", "R@100", "RR@10", "nDCG@10", "teacher_entropy"]
    # the per-query teacher entropy: the BM25 teacher's softmax over each query's BM25 top-G, from the candidates
    es = prepare(cfg).evals[0]
    for qid, *_, h in rows[1:]:
        i = es.rows[es.qids.index(qid)]
        p = scipy.special.softmax(es.bm25.scores[i, :cfg.group_size].astype(np.float64) / cfg.temperature)
        assert float(h) == pytest.approx(scipy.stats.entropy(p), abs=1e-5)


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_every_loss_trains_a_cross_encoder(tmp_path, tiny_model, loss):
    cfg = tiny_config(tmp_path, tiny_model, loss=loss, budget_docs=32, **{"student.kind": "cross", "eval.depth": 10,
                                                                    "data.eval_max_queries": 5})
    calls = []
    final = run_trial(cfg, report=lambda m, docs: calls.append((docs, m)))
    _assert_emits_exactly(cfg, calls)
    assert np.isfinite(final[f"train/{loss}"]) and 0.0 <= final["dev/nDCG@10"] <= 1.0
    assert final["probe/diameter"] > 0.0  # the probe groups' [CLS] states are distinct pairs, not one collapsed point


@pytest.mark.parametrize("sampler", ["random", "bm25", "teacher"])
def test_samplers_and_augmentations_run(tmp_path, tiny_model, sampler):
    cfg = tiny_config(tmp_path, tiny_model, sampler=sampler, budget_docs=32,
               augment={"negatives_mix": 0.5, "in_batch": True, "entropy_band": [0.0, 0.5]})
    calls = []
    t = Trial(cfg, report=lambda m, docs: calls.append((docs, m)))
    assert len(t.trainer.rows) == pytest.approx(len(t.p.train_rows) / 2, abs=2)
    final = t.run()
    assert np.isfinite(final["train/in_batch_lce"])
    _assert_emits_exactly(cfg, calls)


def test_in_batch_negatives_without_a_teacher_report_their_own_keys(tmp_path, tiny_model):
    # the contrastive baseline: no teacher (no entropy, no probe KL), lce over the whole batch
    cfg = tiny_config(tmp_path, tiny_model, loss="lce", teacher={"kind": "none"}, budget_docs=32, eval_every_docs=16, augment={"in_batch": True})
    calls = []
    final = run_trial(cfg, report=lambda m, docs: calls.append((docs, m)))
    _assert_emits_exactly(cfg, calls)
    assert "train/lce" not in final and "probe/kl" not in final and "train/teacher_entropy" not in final
    assert np.isfinite(final["train/in_batch_lce"])


def test_random_fills_count_the_negatives_a_short_window_lacked(tmp_path, tiny_model):
    # groups of 4 need 3 negatives from BM25 ranks [47, 50); a query with a judged document in its top 50 has
    # only 49 negatives listed, so its window holds 2 and the third comes from the random pool (contrastive:
    # random-pool documents of such queries have no teacher score)
    t = Trial(tiny_config(tmp_path, tiny_model, sampler={"name": "bm25", "depth": [47, 50]}, budget_docs=32, eval_every_docs=32,
                   loss="lce", teacher={"kind": "none"}))
    final = t.run()
    trained = t.trainer.order[:t.trainer.cursor]
    assert t.trainer.epoch == 1 and len(trained) == 8  # the first epoch: 32 docs in groups of 4
    expected = sum(max(0, 3 - len(t.sampler.window(int(r)))) for r in trained)
    assert expected > 0 and final["train/random_fills"] == expected
    final = Trial(tiny_config(tmp_path, tiny_model, sampler={"name": "bm25", "depth": [0, 10]}, budget_docs=32, eval_every_docs=32)).run()
    assert final["train/random_fills"] == 0
    # with a teacher, the same window is refused before training: the random pool of those queries has no teacher score
    with pytest.raises(TeacherError, match=r"depth \[47, 50\]: \d+ training queries have fewer than 3 negatives"):
        Trial(tiny_config(tmp_path, tiny_model, sampler={"name": "bm25", "depth": [47, 50]}, budget_docs=32, eval_every_docs=32))


def test_eval_sets_on_one_corpus_share_one_streamed_index(tmp_path, tiny_model, monkeypatch):
    import ranksweep.core.evaluation as trial_mod

    made = []

    def counting(dim, **kw):
        made.append(trial_mod.flat_ip_index.__wrapped__(dim, **kw))
        return made[-1]

    counting.__wrapped__ = trial_mod.flat_ip_index
    monkeypatch.setattr(trial_mod, "flat_ip_index", counting)
    folder = tmp_path / "tiny"  # two query sets over one corpus
    shutil.copytree(TINY_BEIR, folder)
    shutil.copy(folder / "qrels" / "test.tsv", folder / "qrels" / "dev.tsv")
    test, dev = f"local:{folder}:test", f"local:{folder}:dev"
    final = Trial(tiny_config(tmp_path, tiny_model, budget_docs=32, eval_every_docs=32, output_dir=None, **{"data.eval": [test, dev]})).run()
    assert len(made) == 1 and made[0].ntotal == 8  # the corpus, encoded once for both sets
    assert final["tiny-test/nDCG@10"] == final["tiny-dev/nDCG@10"] > 0
    made.clear()
    alone = Trial(tiny_config(tmp_path, tiny_model, budget_docs=32, eval_every_docs=32, output_dir=None, **{"data.eval": [test]})).run()
    assert len(made) == 1
    assert {k: v for k, v in alone.items() if k.startswith("tiny-test/")} == {k: v for k, v in final.items() if k.startswith("tiny-test/")}


def test_random_negatives_are_less_local_than_bm25(tmp_path):
    """Locality: BM25 groups sit closer together in MiniLM's space than random groups."""
    diam = {}
    for sampler in ("random", "bm25"):
        cfg = TrialConfig.from_dict(fast_config(tmp_path, sampler=sampler, **{"eval.probe_queries": 16, "student.num_layers": 6}))
        diam[sampler] = Trial(cfg).evaluator.probe()["probe/diameter"]
    assert diam["bm25"] < diam["random"]


def test_entropy_band_selects_low_and_high_entropy_queries(tmp_path, tiny_model):
    from ranksweep.core.metrics import listwise_entropy

    ent = {}
    for band in ([0.0, 0.25], [0.75, 1.0]):
        t = Trial(tiny_config(tmp_path, tiny_model, augment={"entropy_band": band}))
        g = t.sampler.sample(t.trainer.rows, t.cfg.group_size, np.random.default_rng(0))
        ent[band[0]] = listwise_entropy(torch.from_numpy(t.p.teacher.lookup(t.trainer.rows, g)), 1.0).mean().item()
        assert abs(len(t.trainer.rows) - 0.25 * len(t.p.train_rows)) <= 2
    assert ent[0.0] < ent[0.75]


def test_core_imports_neither_ray_nor_mlflow():
    code = "import sys, ranksweep.core, ranksweep.core.trial; print(sorted(m for m in ('ray', 'mlflow', 'optuna') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_dense_and_ensemble_candidates_with_a_cross_encoder_teacher_end_to_end(tmp_path, tiny_model):
    """Dense candidates (a bi-encoder over the corpus), the ensemble sampler over BM25 and dense, and a
    cross-encoder teacher scoring every pool, on a synthetic collection: one trial end to end."""
    from ranksweep.core.data.synthetic import write_synthetic_beir

    col = write_synthetic_beir(tmp_path / "synthetic", 600, n_queries=60, n_test=12, seed=1)
    cfg = tiny_config(tmp_path, tiny_model, sampler={"name": "ensemble", "depth": [0, 20]}, budget_docs=32, eval_every_docs=16,
               candidates={"dense_depth": 30, "dense_model": tiny_model, "bm25_depth": 30, "random_pool": 30},
               teacher={"kind": "cross", "model": tiny_model},
               **{"data.train": f"local:{col}:train", "data.eval": [f"local:{col}:test"], "data.eval_max_queries": None})
    calls = []
    final = run_trial(cfg, report=lambda m, docs: calls.append((docs, m)))
    _assert_emits_exactly(cfg, calls)
    p = prepare(cfg)
    rows = p.train_rows[:10]
    dense = [set(p.pools.dense.row(int(r)).tolist()) for r in rows]
    bm25 = [set(p.pools.bm25.row(int(r)).tolist()) for r in rows]
    assert all(25 <= len(d) <= 30 for d in dense) and any(d != b for d, b in zip(dense, bm25))  # judged documents are left out
    groups = Trial(cfg, p).sampler.sample(rows, cfg.group_size, np.random.default_rng(0))
    assert np.isfinite(p.teacher.lookup(rows, groups)).all()  # the cross teacher scored every (query, doc) the sampler can draw
    assert 0.0 <= final["teacher/dev/nDCG@10"] <= 1.0 and np.isfinite(final["probe/kl"])
    assert 0.0 <= final["synthetic-test/nDCG@10"] <= 1.0


def test_float16_corpus_index_retrieves_what_exact_scoring_ranks(tmp_path, tiny_model):
    """The evaluation index stores the corpus as float16: its top-20 matches exact float32 scoring of every
    document, scores within float16 rounding (score scale 20 × cosine)."""
    t = Trial(tiny_config(tmp_path, tiny_model, budget_docs=32, output_dir=None))
    t.train_until(32)
    t.model.eval()
    ev, es = t.evaluator, t.p.evals[0]
    index = ev.corpus_index(es)
    assert "ScalarQuantizer" in type(index).__name__  # float16 storage
    run = ev.retrieve(es, index, 20)
    everything = np.arange(len(es.docs))
    with torch.inference_mode():
        exact = t.model.score_pools(ev._query_seqs(es), [everything] * len(es.qids), ev._doc_store(es).get, t.evaluator.special,
                                    t.cfg.eval.batch_tokens, t.device)
    for qid, scores in zip(es.qids, exact):
        top = np.argsort(-scores, kind="stable")[:20]
        want = dict(zip(es.docs.ids_of(top), scores[top].tolist()))
        got = run[qid]
        assert len(set(got) & set(want)) >= 18
        for did in set(got) & set(want):
            assert got[did] == pytest.approx(want[did], abs=0.03)


def test_an_almost_uniform_teacher_is_warned_about(tmp_path, tiny_model, caplog):
    """A teacher whose tempered distribution over the group is nearly uniform gives the loss nothing to distil."""
    import logging

    with caplog.at_level(logging.WARNING, logger="ranksweep.core.trial"):
        Trial(tiny_config(tmp_path, tiny_model, temperature=1e4, output_dir=None))
    assert "the teacher's distribution over a group is almost uniform" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ranksweep.core.trial"):
        Trial(tiny_config(tmp_path, tiny_model, output_dir=None))  # the BM25 teacher at T = 1 is sharp
    assert "almost uniform" not in caplog.text
