"""Entropy, diameter and KL against hand computations; nDCG, RR and recall against values computed by hand, through the run files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ranksweep.core.metrics import diameter, evaluate, kl_divergence, listwise_entropy, pairwise_entropy, read_trec_run
from ranksweep.core.writers import write_trec_run


def test_listwise_entropy_by_hand():
    t = torch.tensor([[0.0, 0.0, 0.0, 0.0], [math.log(3.0), 0.0, -1e9, -1e9]])
    h = listwise_entropy(t, 1.0)
    assert h[0].item() == pytest.approx(math.log(4))
    p = [0.75, 0.25]
    assert h[1].item() == pytest.approx(-sum(x * math.log(x) for x in p), abs=1e-6)


def test_listwise_entropy_temperature_flattens():
    t = torch.tensor([[3.0, 1.0, 0.0]])
    assert listwise_entropy(t, 0.5) < listwise_entropy(t, 1.0) < listwise_entropy(t, 10.0) < math.log(3)


def test_pairwise_entropy_by_hand():
    t = torch.tensor([[2.0, 0.0, 0.0]])
    T = 2.0
    h = lambda p: -(p * math.log(p) + (1 - p) * math.log(1 - p))  # noqa: E731
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected = (h(sig(1.0)) + h(sig(1.0)) + h(0.5)) / 3
    assert pairwise_entropy(t, T).item() == pytest.approx(expected, rel=1e-6)
    # large gaps are stable (no NaN) and near zero
    assert pairwise_entropy(torch.tensor([[1e4, 0.0]]), 1.0).item() == pytest.approx(0.0, abs=1e-6)


def test_diameter_by_hand():
    # three unit vectors at 0°, 90°, 180° (after normalisation): distances sqrt2, 2, sqrt2
    e = torch.tensor([[[2.0, 0.0], [0.0, 5.0], [-1.0, 0.0]]])
    d = sorted([math.sqrt(2), 2.0, math.sqrt(2)])
    assert diameter(e, 1.0).item() == pytest.approx(2.0)
    # linear interpolation at alpha = 0.75 over 3 sorted values: position 1.5
    assert diameter(e, 0.75).item() == pytest.approx(d[1] + 0.5 * (d[2] - d[1]), rel=1e-6)
    assert diameter(e, 0.5).item() == pytest.approx(math.sqrt(2), rel=1e-6)


def test_diameter_matches_numpy_quantile():
    gen = torch.Generator().manual_seed(0)
    e = torch.randn(5, 7, 16, generator=gen)
    n = torch.nn.functional.normalize(e, dim=-1).numpy()
    for b in range(5):
        dists = [np.linalg.norm(n[b, i] - n[b, j]) for i in range(7) for j in range(i + 1, 7)]
        assert diameter(e, 0.99)[b].item() == pytest.approx(np.quantile(dists, 0.99), rel=1e-5)


def test_shape_errors():
    with pytest.raises(ValueError, match=r"\(B, G, D\)"):
        diameter(torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"\(B, G\)"):
        listwise_entropy(torch.zeros(3))


def test_kl_divergence_zero_iff_equal():
    t = torch.tensor([[1.0, 2.0, 3.0]])
    assert kl_divergence(t, t + 5.0).item() == pytest.approx(0.0, abs=1e-7)
    assert kl_divergence(t, -t).item() > 0.1


QRELS = {"q1": {"a": 2, "b": 0, "c": 1}, "q2": {"x": 1}}
RUN = {"q1": {"a": 0.5, "b": 0.9, "c": 0.1, "d": 0.3}, "q2": {"y": 1.0, "x": 0.2}}


def test_ndcg_by_hand():
    agg, pq = evaluate(RUN, QRELS, ["nDCG@10", "RR@10"])
    # q1 ranking b, a, d, c -> gains 0, 3 (2^2-1? trec_eval uses rel), use trec_eval's linear gain: 0,2,0,1
    dcg = 2 / math.log2(3) + 1 / math.log2(5)
    idcg = 2 / math.log2(2) + 1 / math.log2(3)
    assert pq["q1"]["nDCG@10"] == pytest.approx(dcg / idcg, rel=1e-6)
    assert pq["q2"]["RR@10"] == pytest.approx(0.5)
    assert agg["RR@10"] == pytest.approx((0.5 + 0.5) / 2)


def test_missing_query_counts_as_zero():
    agg, pq = evaluate({"q1": RUN["q1"]}, QRELS, ["RR@10"])
    assert pq["q2"]["RR@10"] == 0.0
    assert agg["RR@10"] == pytest.approx(0.25)


def test_measures_equal_hand_computed_values_through_the_projects_run_file(tmp_path):
    """A run written and read back by the project, scored by ``evaluate``, equals trec_eval's definitions worked by hand:
    gains are the judgement grades, the discount log2(rank + 1), and a judged query the run lacks counts as zero."""
    qrels = {"q1": {"d1": 2, "d3": 1, "d9": 1, "d4": 0}, "q2": {"d5": 1}, "q3": {"d7": 1}}
    run = {"q1": {"d2": 3.0, "d1": 2.0, "d4": 1.5, "d3": 1.0}, "q2": {"d5": 0.5, "d6": 0.1}}
    ids = {q: list(docs) for q, docs in run.items()}
    path = tmp_path / "hand.run"
    with path.open("w") as f:
        for q, docs in run.items():
            for rank, (d, score) in enumerate(docs.items(), 1):
                f.write(f"{q} Q0 {d} {rank} {score} hand\n")
    back = read_trec_run(path)
    assert {q: list(v) for q, v in back.items()} == ids
    ours, per_query = evaluate(back, qrels, ["nDCG@10", "RR@10", "R@100"])
    # q1: relevant at ranks 2 (grade 2) and 4 (grade 1); d9 (grade 1) never retrieved
    dcg = 2 / math.log2(3) + 1 / math.log2(5)
    idcg = 2 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    hand = {"q1": {"nDCG@10": dcg / idcg, "RR@10": 1 / 2, "R@100": 2 / 3},
            "q2": {"nDCG@10": 1.0, "RR@10": 1.0, "R@100": 1.0},
            "q3": {"nDCG@10": 0.0, "RR@10": 0.0, "R@100": 0.0}}
    for q, values in hand.items():
        for m, v in values.items():
            assert per_query.get(q, {}).get(m, 0.0) == pytest.approx(v, abs=1e-9), (q, m)
    for m in ("nDCG@10", "RR@10", "R@100"):
        assert ours[m] == pytest.approx(sum(hand[q][m] for q in hand) / 3, abs=1e-9)


def test_bm25_run_file_of_scifact_matches_the_reference_numbers(tmp_path):
    from ranksweep.core.data.bm25 import bm25_candidates
    from ranksweep.core.data.cache import cache_root
    from ranksweep.core.data.collections import load_collection, query_set

    col = load_collection("beir/scifact/test")
    qids = col.judged_queries()
    cand = bm25_candidates(cache_root(), col.corpus, query_set(col.queries, qids), 100)
    path = write_trec_run(tmp_path / "bm25.run", cand.to_run(col.corpus.store(), np.arange(len(qids)), qids))
    ours, _ = evaluate(read_trec_run(path), col.qrels, ["nDCG@10", "RR@10", "R@100"])
    # the BM25 reference numbers of this collection (shared/README: 0.662 / 0.631 / 0.876, measured with
    # bm25s); tantivy's BM25 (k1 = 1.2, one-byte length norms) gives 0.661 / 0.629 / 0.873
    assert ours["nDCG@10"] == pytest.approx(0.662, abs=0.01)
    assert ours["RR@10"] == pytest.approx(0.631, abs=0.01)
    assert ours["R@100"] == pytest.approx(0.876, abs=0.01)
