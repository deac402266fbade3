"""Data path on real collections: loading, stores, splits, BM25, candidates cache, samplers, batching."""

from __future__ import annotations

import json
import shutil
import uuid

import numpy as np
import pytest
from conftest import TINY_BEIR

from ranksweep.core.config import SamplerConfig
from ranksweep.core.data import cache as cache_mod
from ranksweep.core.data.batching import SpecialTokens, padding_efficiency, pair_chunks, plan_chunks, single_chunks
from ranksweep.core.data.bm25 import BM25Searcher, analyzer, bm25_candidates, bm25_index
from ranksweep.core.data.cache import cache_root
from ranksweep.core.data.collections import DatasetError, load_collection, query_set, split_train_dev
from ranksweep.core.data.samplers import SAMPLERS, SamplingPools, mix_negatives, random_pools, rrf, teacher_order, without
from ranksweep.core.data.store import Ragged, TextStore
from ranksweep.core.data.synthetic import write_synthetic_beir


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
    assert col.corpus.count == 8 and col.corpus.store().id(0) == "d1"
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


def test_text_store_round_trip_and_id_lookup(tmp_path):
    items = [("z9", "Zebra"), ("a1", "ünïcode text"), ("m5", ""), ("b22", "two words")]
    assert TextStore.write(tmp_path / "s", iter(items)) == 4
    st = TextStore.load(tmp_path / "s")
    assert [st.id(i) for i in range(4)] == ["z9", "a1", "m5", "b22"]
    assert st.texts(0, 4) == [t for _, t in items] and st.text(1) == "ünïcode text"
    assert st.index_of(["b22", "nope", "z9", "a1", "z9-longer-than-the-width"]).tolist() == [3, -1, 0, 1, -1]
    assert st.ids_of([2, 0]) == ["m5", "z9"]
    with pytest.raises(ValueError, match="duplicate id 'x'"):
        TextStore.write(tmp_path / "dup", iter([("x", "a"), ("y", "b"), ("x", "c")]))


def test_local_corpus_key_is_read_once_then_memoised_by_stat(tmp_path, monkeypatch):
    import ranksweep.core.data.collections as collections

    folder = tmp_path / "beir"
    shutil.copytree(TINY_BEIR, folder)
    first = load_collection(f"local:{folder}:test").corpus
    reads = []
    real = collections._read_jsonl
    monkeypatch.setattr(collections, "_read_jsonl", lambda path: (reads.append(path.name), real(path))[1])
    again = load_collection(f"local:{folder}:test").corpus
    assert (again.key, again.count) == (first.key, first.count) and "corpus.jsonl" not in reads
    # a changed file is a new version: read again, new key
    with (folder / "corpus.jsonl").open("a") as f:
        f.write(json.dumps({"_id": "d99", "title": "", "text": "new"}) + "\n")
    changed = load_collection(f"local:{folder}:test").corpus
    assert "corpus.jsonl" in reads and changed.count == first.count + 1 and changed.key != first.key


def test_candidates_are_cached_by_content(scifact, monkeypatch):
    root = cache_root()
    qids = list(scifact.queries)[:5]
    first = bm25_candidates(root, scifact.corpus, query_set(scifact.queries, qids, root), 10)
    builds = []
    real = cache_mod.stage

    def spy(root, kind, key, build):
        return real(root, kind, key, lambda tmp: (builds.append(kind), build(tmp)))

    import ranksweep.core.data.bm25 as bm25_mod

    monkeypatch.setattr(bm25_mod, "stage", spy)
    again = bm25_candidates(root, scifact.corpus, query_set(scifact.queries, qids, root), 10)
    assert builds == [] and np.array_equal(first.doc_idx, again.doc_idx)
    fresh = f"protein folding {uuid.uuid4().hex}"  # a new text: its key was never built before
    other_q = dict(scifact.queries, **{qids[4]: fresh})
    other = bm25_candidates(root, scifact.corpus, query_set(other_q, qids, root), 10)
    assert builds == ["bm25_candidates"] and not np.array_equal(other.doc_idx[4], first.doc_idx[4])
    assert np.array_equal(other.doc_idx[:4], first.doc_idx[:4])


def test_bm25_analyzer_matches_the_earlier_tokenizer():
    # the pattern (?u)\b\w\w+\b, lowercased, Lucene's 33 English stopwords: what bm25s did
    assert analyzer().analyze("The Ünïcode naïve CAFÉ x 12 a1 don't e-mail of such") == ["ünïcode", "naïve", "café", "12", "a1", "don", "mail"]


def test_bm25_pair_scores_equal_retrieval_scores_and_ties_follow_doc_index(tmp_path):
    col = load_collection(f"local:{write_synthetic_beir(tmp_path / 'syn', 3000, seed=3)}:train")
    root = cache_root()
    index = BM25Searcher(bm25_index(root, col.corpus))
    qids = list(col.queries)[:40]
    texts = [col.queries[q] for q in qids] + ["the of and", ""]  # only stopwords; empty
    idx, sc = index.search(texts, 50, threads=2)
    assert (idx[-2:] == -1).all() and (sc[-2:] == 0).all()
    for i in range(len(qids)):
        keep = idx[i] >= 0
        d, s = idx[i][keep], sc[i][keep]
        # best first, equal scores by ascending document index
        assert all((s[j] > s[j + 1]) or (s[j] == s[j + 1] and d[j] < d[j + 1]) for j in range(len(d) - 1))
        # the same pairs scored directly, plus documents sharing no term with the query (score 0)
        far = np.setdiff1d(np.arange(0, 3000, 37), d)[:20]
        pool = np.concatenate([d[::-1], far])
        got = index.scores_for(texts[i], pool)
        assert np.allclose(got[: len(d)], s[::-1], rtol=1e-6)
        hit = set(d.tolist())
        assert all(got[len(d) + j] <= s[-1] + 1e-6 or int(x) in hit for j, x in enumerate(far))
    # one query's relevant passage is its best hit most of the time (queries are drawn from it)
    store = col.corpus.store(root)
    top1 = store.ids_of(idx[: len(qids), 0])
    assert np.mean([col.qrels[q].get(t, 0) > 0 for q, t in zip(qids, top1)]) > 0.6


def _pools(n_docs=200, n_q=6, seed=0):
    rng = np.random.default_rng(seed)
    positives = Ragged.from_rows([np.array([i]) for i in range(n_q)])
    bm25 = without([rng.permutation(n_docs)[:40] for _ in range(n_q)], positives)
    dense = without([rng.permutation(n_docs)[:40] for _ in range(n_q)], positives)
    rand = random_pools(positives, n_docs, 50, seed=3)
    return np.arange(n_q), SamplingPools(positives, bm25, rand, dense)


def test_random_pools_are_seeded_uniform_and_exclude_relevant():
    positives = Ragged.from_rows([np.array([0, 5]), np.array([7]), np.array([], dtype=np.int64)])
    a, b = random_pools(positives, 1000, 60, seed=1), random_pools(positives, 1000, 60, seed=1)
    assert np.array_equal(a.values, b.values) and (a.lengths() == 60).all()
    for i in range(3):
        r = a.row(i)
        assert (np.diff(r) > 0).all() and not np.isin(r, positives.row(i)).any()
    assert not np.array_equal(random_pools(positives, 1000, 60, seed=2).values, a.values)


@pytest.mark.parametrize("name", ["random", "bm25", "dense", "ensemble"])
def test_samplers_deterministic_positive_first_no_relevant_negatives(name):
    rows, pools = _pools()
    cfg = SamplerConfig(name=name, depth=(5, 25))
    s = SAMPLERS[name](cfg, pools)
    a = s.sample(rows, 8, np.random.default_rng(42))
    b = SAMPLERS[name](cfg, pools).sample(rows, 8, np.random.default_rng(42))
    assert np.array_equal(a, b)
    assert a.shape == (6, 8)
    for r in rows:
        assert a[r, 0] in pools.positives.row(r)
        assert not set(a[r, 1:]) & set(pools.positives.row(r).tolist())
        assert len(set(a[r])) == 8
        assert set(a[r, 1:]) <= set(s.window(r).tolist())
    if name == "bm25":
        for r in rows:
            assert set(a[r, 1:]) <= set(pools.bm25.row(r)[5:25].tolist())


def test_rrf_by_hand():
    fused = rrf([np.array([1, 2, 3]), np.array([3, 1, 4])], k=60)
    # 1: 1/61 + 1/62; 3: 1/63 + 1/61; 2: 1/62; 4: 1/63
    assert fused.tolist() == [1, 3, 2, 4]


def test_teacher_sampler_hardest_first_with_skip():
    rows, pools = _pools()

    class Fake:
        def lookup(self, rows, docs):
            return -docs.astype(np.float32)  # lower index = higher score

    pools.teacher = teacher_order(pools.bm25, Fake())
    s = SAMPLERS["teacher"](SamplerConfig(name="teacher", skip_top=2), pools)
    g = s.sample(rows[:1], 4, np.random.default_rng(0))
    expected = sorted(pools.bm25.row(0).tolist())[2:5]
    assert g[0, 1:].tolist() == expected


def test_negatives_mix_replaces_the_fraction():
    rows, pools = _pools()
    s = SAMPLERS["bm25"](SamplerConfig(name="bm25"), pools)
    g = s.sample(rows, 9, np.random.default_rng(0))
    m = mix_negatives(g, 0.5, pools, rows, np.random.default_rng(1))
    assert (m[:, 0] == g[:, 0]).all()
    for r in rows:
        replaced = set(m[r, 1:]) - set(g[r, 1:])
        assert len(replaced) == 4 and replaced <= set(pools.random.row(r).tolist())
        assert len(set(m[r])) == 9


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
