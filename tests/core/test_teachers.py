"""Teachers: each kind answers for its config, cache key, files and models; file, BM25 and ensemble scores on SciFact."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from ranksweep.core.config import TeacherConfig
from ranksweep.core.data.bm25 import bm25_candidates
from ranksweep.core.data.cache import cache_root
from ranksweep.core.data.collections import load_collection, query_set
from ranksweep.core.data.store import Ragged
from ranksweep.core.errors import ConfigError
from ranksweep.core.preflight import teacher_files, teacher_models
from ranksweep.core.teachers import TEACHERS, ScoringContext, TeacherError, check_teacher, read_teacher_file, teacher_key, teacher_scores


@pytest.fixture(scope="module")
def scifact():
    return load_collection("beir/scifact/train")


def test_each_kind_answers_for_its_config_key_files_and_models(tmp_path):
    """What the config check, the score cache and preflight ask of a teacher is answered by its kind, members included."""
    scores = tmp_path / "scores.run"
    scores.write_text("q Q0 d 1 1.5 t\n")
    bi = TeacherConfig(kind="bi", model="some/encoder", similarity="dot")
    ens = TeacherConfig(kind="ensemble", members=(bi, TeacherConfig(kind="file", path=str(scores), weight=2.0)))
    check_teacher(ens)
    assert list(teacher_models(ens)) == [("some/encoder", "teacher.members[0].model")]
    assert list(teacher_files(ens)) == [(str(scores), "auto", "teacher.members[1].path")]
    key = teacher_key(ens, tmp_path)
    assert key["members"][0] == {"kind": "bi", "model": "some/encoder", "pooling": "mean", "similarity": "dot", "weight": 1.0}
    scores.write_text("q Q0 d 1 2.5 t\n")  # new scores: a new key, so a new cached table
    assert teacher_key(ens, tmp_path)["members"][1]["file"] != key["members"][1]["file"]
    assert [k for k in TEACHERS if TEACHERS[k].tokenized] == ["bi", "cross", "ensemble"]
    assert not TeacherConfig(kind="none").scores and TeacherConfig(kind="bm25").scores
    assert TEACHERS["file"].must_cover(TeacherConfig(kind="file")) and not TEACHERS["file"].must_cover(
        TeacherConfig(kind="file", on_missing="drop"))
    for bad, where in ((TeacherConfig(kind="ensemble", members=(TeacherConfig(kind="none"),)), "teacher.members[0].kind: members cannot"),
                       (TeacherConfig(kind="cross"), "teacher.model: a cross teacher needs a model"),
                       (TeacherConfig(kind="bm25", members=(bi,)), "teacher.members: only an ensemble"),
                       (TeacherConfig(kind="ensemble", members=(TeacherConfig(kind="bi2"),)), "unknown teacher kind 'bi2'; did you mean 'bi'")):
        with pytest.raises(ConfigError, match=where.replace("[", r"\[").replace("]", r"\]")):
            check_teacher(bad)


def test_teacher_file_json_and_trec_with_missing_pairs(tmp_path, scifact):
    root = cache_root()
    qids = ["0", "2"]  # scifact train query ids
    queries = query_set(scifact.queries, qids, root)
    ids = scifact.corpus.store(root).ids_of(range(5))
    pools = {"bm25": Ragged.from_rows([np.array([0, 1, 2]), np.array([3, 4])])}
    scores = {"0": {ids[0]: 1.0, ids[1]: 2.0, ids[2]: 3.0}, "2": {ids[3]: 0.5}}  # (2, ids[4]) missing
    js = tmp_path / "teacher.json.gz"
    with gzip.open(js, "wt") as f:
        json.dump(scores, f)
    trec = tmp_path / "teacher.run"
    trec.write_text("".join(f"{q} Q0 {d} 1 {s} t\n" for q, ds in scores.items() for d, s in ds.items()))
    assert read_teacher_file(js) == read_teacher_file(trec) == scores
    bad = tmp_path / "bad.run.gz"
    with gzip.open(bad, "wt") as f:
        f.write(trec.read_text() + "1 Q0 d 1 high t\n")
    with pytest.raises(TeacherError, match=rf"{bad}:{len(trec.read_text().splitlines()) + 1}: expected a TREC run line"):
        read_teacher_file(bad, "trec")
    ctx = ScoringContext(root, 32, 128)
    for path in (js, trec):
        with pytest.raises(TeacherError, match=rf"lacks 1 of 5 \(query, doc\) pairs.*\('2', '{ids[4]}'\).*on_missing: drop"):
            teacher_scores(TeacherConfig(kind="file", path=str(path)), ctx, scifact.corpus, queries, pools)
        ts = teacher_scores(TeacherConfig(kind="file", path=str(path), on_missing="drop"), ctx, scifact.corpus, queries, pools)
        got = ts.lookup([0, 1], np.array([[2, 0], [3, 4]]))
        assert got[0].tolist() == [3.0, 1.0] and got[1, 0] == 0.5 and np.isnan(got[1, 1])
        assert ts.scored(1).tolist() == [3]


def test_ensemble_teacher_is_weighted_sum_of_per_query_z_scores(scifact):
    root = cache_root()
    qids = list(scifact.queries)[:4]
    queries = query_set(scifact.queries, qids, root)
    cand = bm25_candidates(root, scifact.corpus, queries, 20)
    pools = {"bm25": Ragged.from_rows([cand.ranked(i) for i in range(4)])}
    ctx = ScoringContext(root, 32, 128)
    bm25 = teacher_scores(TeacherConfig(kind="bm25"), ctx, scifact.corpus, queries, pools)
    ens = teacher_scores(TeacherConfig(kind="ensemble", members=(TeacherConfig(kind="bm25", weight=2.0),)), ctx, scifact.corpus,
                         queries, pools)
    for i in range(4):
        docs = np.unique(cand.ranked(i))[None, :]
        raw = bm25.lookup([i], docs)[0].astype(np.float64)
        z = 2.0 * (raw - raw.mean()) / raw.std()
        assert np.allclose(ens.lookup([i], docs)[0], z, atol=1e-5)
        # BM25 teacher scores equal the BM25 retrieval scores of the same pairs
        row = dict(zip(cand.ranked(i).tolist(), cand.ranked_scores(i).tolist()))
        assert np.allclose(raw, [row[d] for d in docs[0]], rtol=1e-5)
