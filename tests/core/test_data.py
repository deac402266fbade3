"""Data path on real collections: loading, splits, candidates cache, samplers, teacher stores, batching."""

from __future__ import annotations

import gzip
import json
import uuid

import numpy as np
import pytest
import torch
from conftest import TINY_BEIR

from ranksweep.core.config import SamplerConfig, TeacherConfig
from ranksweep.core.data import cache as cache_mod
from ranksweep.core.data.batching import SpecialTokens, padding_efficiency, pair_chunks, plan_chunks, single_chunks
from ranksweep.core.data.cache import cache_root
from ranksweep.core.data.candidates import bm25_candidates
from ranksweep.core.data.collections import DatasetError, load_collection, split_train_dev
from ranksweep.core.data.samplers import SAMPLERS, SamplingPools, mix_negatives, random_pools, rrf
from ranksweep.core.teachers import ScoringContext, TeacherError, read_teacher_file, teacher_scores


@pytest.fixture(scope="module")
def scifact():
    return load_collection("beir/scifact/train")


def test_scifact_and_ood_collections_load():
    train, test = load_collection("beir/scifact/train"), load_collection("beir/scifact/test")
    assert train.corpus.count == 5183 and len(train.queries) == 809 and len(test.queries) == 300
    assert train.corpus.key == test.corpus.key  # one corpus, one set of caches
    assert sum(len(v) for v in test.qrels.values()) == 339
    cran = load_collection("cranfield")
    assert cran.corpus.count == 1400 and len(cran.judged_queries()) > 200
    assert load_collection("vaswani").corpus.count == 11429


def test_unknown_dataset_id_is_named():
    with pytest.raises(DatasetError, match="unknown dataset id 'beir/scifakt/test'; did you mean 'beir/scifact/test'"):
        load_collection("beir/scifakt/test")


def test_local_beir_folder():
    col = load_collection(f"local:{TINY_BEIR}:test")
    assert col.corpus.count == 8 and col.corpus.doc_ids[0] == "d1"
    assert col.qrels["q3"] == {"d6": 2}
    assert col.name == "tiny_beir-test"
    assert next(col.corpus.iter_docs())[1].startswith("Cats Cats are")
    with pytest.raises(DatasetError, match="lacks"):
        load_collection(f"local:{TINY_BEIR}:dev")


def test_split_is_seeded_disjoint_and_covers_judged(scifact):
    a, b = split_train_dev(scifact, 0.1, seed=0), split_train_dev(scifact, 0.1, seed=0)
    assert a == b
    assert not set(a.train) & set(a.dev)
    assert set(a.train) | set(a.dev) == set(scifact.judged_queries())
    assert len(a.dev) == round(0.1 * len(scifact.judged_queries()))
    assert split_train_dev(scifact, 0.1, seed=1).dev != a.dev


def test_candidates_are_cached_by_content(scifact, monkeypatch):
    root = cache_root()
    qids = list(scifact.queries)[:5]
    texts = [scifact.queries[q] for q in qids]
    first = bm25_candidates(root, scifact.corpus, qids, texts, 10)
    builds = []
    real = cache_mod.stage

    def spy(root, kind, key, build):
        return real(root, kind, key, lambda tmp: (builds.append(kind), build(tmp)))

    import ranksweep.core.data.candidates as cand_mod

    monkeypatch.setattr(cand_mod, "stage", spy)
    again = bm25_candidates(root, scifact.corpus, qids, texts, 10)
    assert builds == [] and np.array_equal(first.doc_idx, again.doc_idx)
    fresh = f"protein folding {uuid.uuid4().hex}"  # a new text: its key was never built before
    other = bm25_candidates(root, scifact.corpus, qids, texts[:4] + [fresh], 10)
    assert builds == ["bm25_candidates"] and not np.array_equal(other.doc_idx[4], first.doc_idx[4])


def _pools(n_docs=200, n_q=6, seed=0):
    rng = np.random.default_rng(seed)
    qids = [f"q{i}" for i in range(n_q)]
    positives = {q: np.array([i]) for i, q in enumerate(qids)}
    relevant = {q: {i} for i, q in enumerate(qids)}
    bm25 = {q: rng.permutation(n_docs)[:40] for q in qids}
    dense = {q: rng.permutation(n_docs)[:40] for q in qids}
    rand = random_pools(qids, relevant, n_docs, 50, seed=3)
    return qids, SamplingPools(positives, bm25, rand, dense, relevant)


@pytest.mark.parametrize("name", ["random", "bm25", "dense", "ensemble"])
def test_samplers_deterministic_positive_first_no_relevant_negatives(name):
    qids, pools = _pools()
    cfg = SamplerConfig(name=name, depth=(5, 25))
    s = SAMPLERS[name](cfg, pools)
    a = s.sample(qids, 8, np.random.default_rng(42))
    b = SAMPLERS[name](cfg, pools).sample(qids, 8, np.random.default_rng(42))
    assert np.array_equal(a, b)
    assert a.shape == (6, 8)
    for r, q in enumerate(qids):
        assert a[r, 0] in pools.positives[q]
        assert not set(a[r, 1:]) & pools.relevant[q]
        assert len(set(a[r])) == 8
        allowed = set(s.window(q))
        assert set(a[r, 1:]) <= allowed
    if name == "bm25":
        for r, q in enumerate(qids):
            ranked = [d for d in pools.bm25[q] if d not in pools.relevant[q]]
            assert set(a[r, 1:]) <= set(ranked[5:25])


def test_rrf_by_hand():
    fused = rrf([np.array([1, 2, 3]), np.array([3, 1, 4])], k=60)
    # 1: 1/61 + 1/62; 3: 1/63 + 1/61; 2: 1/62; 4: 1/63
    assert fused.tolist() == [1, 3, 2, 4]


def test_teacher_sampler_hardest_first_with_skip():
    qids, pools = _pools()

    class Fake:
        def lookup(self, q, docs):
            return -docs.astype(np.float32)  # lower index = higher score

    s = SAMPLERS["teacher"](SamplerConfig(name="teacher", skip_top=2), pools, Fake())
    g = s.sample(qids[:1], 4, np.random.default_rng(0))
    expected = sorted(d for d in pools.bm25["q0"] if d not in pools.relevant["q0"])[2:5]
    assert g[0, 1:].tolist() == expected


def test_negatives_mix_replaces_the_fraction():
    qids, pools = _pools()
    s = SAMPLERS["bm25"](SamplerConfig(name="bm25"), pools)
    g = s.sample(qids, 9, np.random.default_rng(0))
    m = mix_negatives(g, 0.5, pools, qids, np.random.default_rng(1))
    assert (m[:, 0] == g[:, 0]).all()
    for r, q in enumerate(qids):
        replaced = set(m[r, 1:]) - set(g[r, 1:])
        assert len(replaced) == 4 and replaced <= set(pools.random[q])
        assert len(set(m[r])) == 9


def test_teacher_file_json_and_trec_with_missing_pairs(tmp_path, scifact):
    qids = ["0", "2"]  # scifact train query ids
    ids = scifact.corpus.doc_ids
    pools = {"bm25": [np.array([0, 1, 2]), np.array([3, 4])]}
    scores = {"0": {ids[0]: 1.0, ids[1]: 2.0, ids[2]: 3.0}, "2": {ids[3]: 0.5}}  # (2, ids[4]) missing
    js = tmp_path / "teacher.json.gz"
    with gzip.open(js, "wt") as f:
        json.dump(scores, f)
    trec = tmp_path / "teacher.run"
    trec.write_text("".join(f"{q} Q0 {d} 1 {s} t\n" for q, ds in scores.items() for d, s in ds.items()))
    assert read_teacher_file(js) == read_teacher_file(trec) == scores
    ctx = ScoringContext(cache_root(), torch.device("cpu"), 32, 128)
    for path in (js, trec):
        with pytest.raises(TeacherError, match=r"lacks 1 of 5 \(query, doc\) pairs.*on_missing: drop"):
            teacher_scores(TeacherConfig(kind="file", path=str(path)), ctx, scifact, qids, pools)
        ts = teacher_scores(TeacherConfig(kind="file", path=str(path), on_missing="drop"), ctx, scifact, qids, pools)
        got = ts.lookup(qids, np.array([[2, 0], [3, 4]]))
        assert got[0].tolist() == [3.0, 1.0] and got[1, 0] == 0.5 and np.isnan(got[1, 1])
        assert ts.scored("2").tolist() == [3]


def test_ensemble_teacher_is_weighted_sum_of_per_query_z_scores(scifact):
    qids = list(scifact.queries)[:4]
    root = cache_root()
    cand = bm25_candidates(root, scifact.corpus, qids, [scifact.queries[q] for q in qids], 20)
    pools = {"bm25": [cand.ranked(q) for q in qids]}
    ctx = ScoringContext(root, torch.device("cpu"), 32, 128)
    bm25 = teacher_scores(TeacherConfig(kind="bm25"), ctx, scifact, qids, pools)
    ens = teacher_scores(TeacherConfig(kind="ensemble", members=(TeacherConfig(kind="bm25", weight=2.0),)), ctx, scifact, qids, pools)
    for q in qids:
        docs = np.unique(cand.ranked(q))[None, :]
        raw = bm25.lookup([q], docs)[0].astype(np.float64)
        z = 2.0 * (raw - raw.mean()) / raw.std()
        assert np.allclose(ens.lookup([q], docs)[0], z, atol=1e-5)
        # BM25 teacher scores equal the BM25 retrieval scores of the same pairs
        row = dict(zip(cand.ranked(q).tolist(), cand.scores[cand.row(q)][: len(cand.ranked(q))].tolist()))
        assert np.allclose(raw, [row[d] for d in docs[0]], rtol=1e-5)


def test_plan_chunks_groups_similar_lengths_and_keeps_order():
    lengths = np.array([100, 10, 95, 12, 50, 11, 98, 9] * 4)
    chunks = plan_chunks(lengths, batch_tokens=10_000, min_rows=4)
    assert sorted(np.concatenate(chunks).tolist()) == list(range(len(lengths)))
    for c in chunks:
        assert lengths[c].max() <= 2 * lengths[c].min() or len(c) <= 4


def test_length_sorted_batches_cut_padding_and_scatter_back():
    special = SpecialTokens(101, 102, 0)
    rng = np.random.default_rng(0)
    seqs = [rng.integers(1000, 2000, size=n) for n in rng.integers(5, 200, size=64)]
    chunks = single_chunks(seqs, special, batch_tokens=4096)
    fixed = sum(len(s) + 2 for s in seqs) / (len(seqs) * 256)  # a loop padding everything to 256
    assert padding_efficiency(chunks) > 0.8 > 0.5 > fixed
    for c in chunks:
        for row, i in zip(c.input_ids, c.index):
            n = len(seqs[i]) + 2
            assert row[0] == 101 and row[n - 1] == 102 and (row[1 : n - 1].numpy() == seqs[i]).all()
            assert (row[n:] == 0).all()
    pc = pair_chunks(seqs[:4], seqs[4:8], special, 4096)
    c = pc[0]
    i = int(c.index[0])
    q, d = seqs[i], seqs[4 + i]
    assert c.token_type_ids[0, : len(q) + 2].sum() == 0 and c.token_type_ids[0, len(q) + 2 : len(q) + len(d) + 3].all()
