"""Imported teacher scores and negatives: every format, written here on SciFact ids, trains a trial whose tables equal the file."""

from __future__ import annotations

import gzip
import json
import pickle

import numpy as np
import pytest
from conftest import fast_config

from ranksweep.core import TrialConfig, prepare, run_trial
from ranksweep.core.data.cache import cache_root
from ranksweep.core.data.collections import load_collection, query_set, split_train_dev
from ranksweep.core.data.imports import FORMATS, detect, import_table, reader
from ranksweep.core.errors import TeacherError
from ranksweep.core.teachers import file_digest


@pytest.fixture(scope="module")
def scifact_ids():
    """Training queries of the trial's split, each with its judged positives and 12 non-relevant documents, and scores."""
    col = load_collection("beir/scifact/train")
    split = split_train_dev(col, 0.1, 0)
    store = col.corpus.store(cache_root())
    rng = np.random.default_rng(0)
    out = []
    for q in split.train[:40]:
        pos = [d for d, r in col.qrels[q].items() if r > 0]
        negs = []
        while len(negs) < 12:
            d = store.id(int(rng.integers(len(store))))
            if d not in pos and d not in negs:
                negs.append(d)
        out.append((q, pos, negs, {d: round(float(rng.normal(8, 1)), 3) for d in pos} | {d: round(float(rng.normal(0, 2)), 3) for d in negs}))
    return out


def _systems(negs):
    return {"bm25": negs[:6], "tas-b": negs[6:]}


def write(fmt: str, path, data) -> dict:
    """Write ``data`` in ``fmt``; return {qid: {pid: score}} as the file states it (margins: relative to the positive)."""
    truth = {}
    if fmt == "json":
        truth = {q: dict(s) for q, _, _, s in data}
        with gzip.open(path, "wt") as f:
            json.dump(truth, f)
    elif fmt == "trec":
        with open(path, "w") as f:
            for q, pos, negs, s in data:
                for r, d in enumerate(sorted(pos + negs, key=lambda d: -s[d])):
                    f.write(f"{q} Q0 {d} {r + 1} {s[d]} teacher\n")
        truth = {q: dict(s) for q, _, _, s in data}
    elif fmt == "sbert":  # the sbert.net variant: objects with ce-score
        with gzip.open(path, "wt") as f:
            for q, pos, negs, s in data:
                rec = {"qid": int(q), "pos": [{"pid": int(p), "ce-score": s[p]} for p in pos],
                       "neg": {k: [{"pid": int(d), "ce-score": s[d]} for d in v] for k, v in _systems(negs).items()}}
                f.write(json.dumps(rec) + "\n")
        truth = {q: dict(s) for q, _, _, s in data}
    elif fmt == "pickle":  # int keys, as the cross-encoder score pickle
        with gzip.open(path, "wb") as f:
            pickle.dump({int(q): {int(d): v for d, v in s.items()} for q, _, _, s in data}, f)
        truth = {q: dict(s) for q, _, _, s in data}
    elif fmt == "tsv":
        with open(path, "w") as f:
            for q, pos, negs, s in data:
                for d in negs:
                    f.write(f"{s[pos[0]]}\t{s[d]}\t{q}\t{pos[0]}\t{d}\n")
        truth = {q: {d: s[d] for d in [pos[0], *negs]} for q, pos, negs, s in data}
    elif fmt == "tsv-margin":
        with open(path, "w") as f:
            for q, pos, negs, s in data:
                for d in negs:
                    f.write(f"{s[pos[0]] - s[d]:.6f}\t{q}\t{pos[0]}\t{d}\n")
        truth = {q: {pos[0]: 0.0} | {d: -(s[pos[0]] - s[d]) for d in negs} for q, pos, negs, s in data}
    elif fmt == "jsonl":  # Tevatron
        with open(path, "w") as f:
            for q, pos, negs, s in data:
                f.write(json.dumps({"query_id": q, "query": "...", "positive_passages": [{"docid": p, "title": "", "text": "", "score": s[p]}
                                                                                       for p in pos],
                                    "negative_passages": [{"docid": d, "title": "", "text": "", "score": s[d]} for d in negs]}) + "\n")
        truth = {q: dict(s) for q, _, _, s in data}
    elif fmt == "jsonl-texts":  # FlagEmbedding: texts only, scores beside them
        col = load_collection("beir/scifact/train")
        store = col.corpus.store(cache_root())
        text = dict(zip(store.ids_of(store.index_of([d for _, p, n, _ in data for d in p + n])),
                        [store.text(int(i)) for i in store.index_of([d for _, p, n, _ in data for d in p + n])]))
        with open(path, "w") as f:
            for q, pos, negs, s in data:
                f.write(json.dumps({"query": col.queries[q], "pos": [text[p] for p in pos], "neg": [text[d] for d in negs],
                                    "pos_scores": [s[p] for p in pos], "neg_scores": [s[d] for d in negs]}) + "\n")
        truth = {q: dict(s) for q, _, _, s in data}
    elif fmt == "colbert":
        with open(path, "w") as f:
            for q, pos, negs, s in data:
                f.write(json.dumps([int(q), *[[int(d), s[d]] for d in [pos[0], *negs]]]) + "\n")
        truth = {q: {d: s[d] for d in [pos[0], *negs]} for q, pos, negs, s in data}
    return truth


CASES = ["json", "trec", "sbert", "pickle", "tsv", "tsv-margin", "jsonl", "jsonl-texts", "colbert"]
CANDIDATES = {"trec", "sbert", "tsv", "tsv-margin", "jsonl", "jsonl-texts", "colbert"}


@pytest.mark.parametrize("case", CASES)
def test_a_trial_trains_from_each_format_and_its_tables_equal_the_file(tmp_path, tiny_model, scifact_ids, case):
    path = tmp_path / f"teacher-{case}{'.gz' if case in ('json', 'sbert', 'pickle') else ''}"
    truth = write(case, path, scifact_ids)
    assert detect(path) == case.split("-")[0]
    over = {"teacher": {"kind": "file", "path": str(path), "on_missing": "drop"}, "student.model": tiny_model,
            "student.num_layers": None, "budget_docs": 32}
    # the sampler draws the file's negatives; a scores-only file (json, pickle) scores a TREC run's (the paper's setting:
    # the cross-encoder pickle scores sentence-transformers' hard negatives)
    negatives = path if case in CANDIDATES else tmp_path / "negatives.run"
    if case not in CANDIDATES:
        write("trec", negatives, scifact_ids)
    over |= {"sampler": "imported", "candidates.imported": {"path": str(negatives)}}
    cfg = TrialConfig.from_dict(fast_config(tmp_path, **over))
    final = run_trial(cfg)
    assert final["docs_seen"] == 32 and np.isfinite(final["train/loss"])
    p = prepare(cfg)
    qids = p.queries.store.ids_of(range(len(p.queries)))
    checked = 0
    for q, scores in truth.items():
        row = qids.index(q)
        docs = p.docs.index_of(list(scores))
        got = p.teacher.lookup([row], docs[None, :])[0]
        want = np.array(list(scores.values()), dtype=np.float32)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
        checked += len(want)
    assert checked == sum(len(s) for s in truth.values())
    assert set(p.train_rows.tolist()) == {qids.index(q) for q in truth}  # on_missing: drop keeps the queries the file scores
    if case in CANDIDATES:
        for q, pos, negs, _ in scifact_ids:
            row = qids.index(q)
            got = p.docs.ids_of(p.pools.imported.row(row))
            if case == "sbert":  # merged by rank across systems: bm25 rank 0, tas-b rank 0, bm25 rank 1, ...
                s = _systems(negs)
                want = [d for pair in zip(s["bm25"], s["tas-b"]) for d in pair]
            elif case == "trec":  # the run's order, judged positives left out
                want = [d for d in sorted(pos + negs, key=lambda d: -scifact_ids[[x[0] for x in scifact_ids].index(q)][3][d])
                        if d not in pos]
            else:
                want = [d for d in negs if d not in pos]
            assert got == want, (case, q)


def test_sbert_systems_per_system_and_the_teacher_margin_filter(tmp_path, tiny_model, scifact_ids):
    """The seed code's filter: per system, in rank order, skip a negative the teacher scores above min(positive) - margin,
    keep the first ``per_system``; merged across the chosen systems."""
    path = tmp_path / "hard-negatives.jsonl.gz"
    write("sbert", path, scifact_ids)
    margin, per_system = 7.0, 3
    cfg = TrialConfig.from_dict(fast_config(
        tmp_path, teacher={"kind": "file", "path": str(path), "on_missing": "drop"}, sampler="imported", budget_docs=32,
        **{"candidates.imported": {"path": str(path), "systems": ["tas-b"], "per_system": per_system, "teacher_margin": margin},
           "student.model": tiny_model, "student.num_layers": None}))
    p = prepare(cfg)
    qids = p.queries.store.ids_of(range(len(p.queries)))
    kept_total = 0
    for q, pos, negs, s in scifact_ids:
        threshold = min(s[d] for d in pos) - margin
        want = [d for d in _systems(negs)["tas-b"] if s[d] <= threshold][:per_system]
        assert p.docs.ids_of(p.pools.imported.row(qids.index(q))) == want
        kept_total += len(want)
    assert 0 < kept_total < per_system * len(scifact_ids)  # the filter did remove some
    with pytest.raises(TeacherError, match=r"no system \['nope'\] \(systems in the file: bm25, tas-b\)"):
        prepare(cfg.replace(**{"candidates.imported.systems": ["nope"]}))


def _table(path, fmt="auto", on_unknown="error", qids=None):
    root = cache_root()
    col = load_collection("beir/scifact/train")
    queries = query_set(col.queries, qids or sorted(col.queries)[:50], root)
    known = query_set(col.queries, sorted(col.queries), root)
    return import_table(root, str(path), fmt, file_digest(str(path), root), col.corpus, queries, known, on_unknown, block_pairs=7,
                        chunk=5)


def test_unknown_ids_are_an_error_or_counted_and_skipped(tmp_path, scifact_ids):
    q, pos, negs, s = scifact_ids[0]
    path = tmp_path / "run.trec"
    lines = [f"{q} Q0 {d} {r + 1} {s[d]} t" for r, d in enumerate(negs)]
    lines.insert(3, f"{q} Q0 no-such-doc 99 0.5 t")
    lines.append("no-such-query Q0 " + negs[0] + " 1 0.1 t")
    lines.append(f"{scifact_ids[1][0]} Q0 no-such-doc 1 0.1 t")  # a query the trial does not use: its records are only left out
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(TeacherError, match=rf"{path}:4: document id 'no-such-doc' is not in the corpus; set on_unknown: skip"):
        _table(path, qids=[q])
    t = _table(path, on_unknown="skip", qids=[q])
    assert (t.info["unknown_docs"], t.info["unknown_queries"], t.info["outside_queries"]) == (1, 1, 1)
    assert t.info["pairs"] == len(negs) and t.info["records"] == len(lines)


def test_rows_sorted_across_chunks_and_blocks(tmp_path):
    """Queries interleaved in the file, chunks of 5 records and row blocks of 7 pairs: every row complete and sorted,
    a pair listed twice keeps its first score."""
    col = load_collection("beir/scifact/train")
    qids = sorted(col.queries)[:50]
    store = col.corpus.store(cache_root())
    rng = np.random.default_rng(1)
    truth: dict = {}
    lines = []
    for i in range(400):
        q, d = qids[int(rng.integers(50))], store.id(int(rng.integers(len(store))))
        v = round(float(rng.normal()), 4)
        lines.append(f"{q} Q0 {d} {i + 1} {v} t")
        truth.setdefault(q, {}).setdefault(d, v)
    path = tmp_path / "interleaved.run"
    path.write_text("\n".join(lines) + "\n")
    t = _table(path, qids=qids)
    for r, q in enumerate(qids):
        docs = np.asarray(t.pairs.row(r))
        assert (np.diff(docs) > 0).all()
        got = dict(zip(store.ids_of(docs), np.asarray(t.scores[t.pairs.indptr[r]:t.pairs.indptr[r + 1]]).tolist()))
        assert got == pytest.approx(truth.get(q, {}), abs=1e-6)


def test_malformed_and_non_finite_records_name_file_and_line(tmp_path):
    cases = {
        "bad.tsv": ("1.0\t2.0\t0\t1\t2\n1.0\tnan\t0\t1\t3\n", r":2: the score of query '0', document '3' is nan"),
        "bad2.tsv": ("1.0\t2.0\t0\t1\t2\n1.0\t2.0\t0\t1\n", r":2: expected 'pos_score neg_score qid pos_pid neg_pid'"),
        "bad.jsonl": ('{"query_id": "0", "positive_passages": [{"docid": "1"}], "negative_passages": []}\n{"query_id": \n',
                      r":2: not valid JSON"),
        "bad.colbert": ('[0, [1, 2.5], [3, 1.0]]\n[1, [4, "x"]]\n', r":2: the score of query '1', document 4 is 'x', not a number"),
        "bad.sbert": ('{"qid": 0, "pos": [1], "neg": {"bm25": [2, 3]}}\n{"qid": 1, "pos": [1], "neg": {"bm25": 7}}\n',
                      r":2: the negatives of system 'bm25' are not a list"),
        "bad.json": ('{"0": {"1": 1.0},\n "2": {"3": Infinity}}', r":2: the score of query '2', document '3' is inf"),
    }
    for name, (text, match) in cases.items():
        p = tmp_path / name
        p.write_text(text)
        with pytest.raises(TeacherError, match=rf"{p}{match}"):
            for _ in reader(p).records():
                pass


def test_a_pickle_is_read_without_unpickling_and_objects_are_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    ok = tmp_path / "scores.pkl"
    with open(ok, "wb") as f:
        pickle.dump({1: {2: 0.5, 3: -1.0}, 4: {5: 2.0}}, f)
    rec = next(iter(reader(ok).records()))
    assert list(zip(rec.qids, rec.pids, rec.scores)) == [("1", "2", 0.5), ("1", "3", -1.0), ("4", "5", 2.0)]
    evil = tmp_path / "evil.pkl"
    with open(evil, "wb") as f:
        pickle.dump({1: {2: Payload()}}, f)
    with pytest.raises(TeacherError, match=r"holds a STACK_GLOBAL opcode .* refused"):
        list(reader(evil, "pickle").records())


def test_format_detection_reads_content_not_names(tmp_path):
    p = tmp_path / "scores.txt.gz"  # a TREC run behind a misleading name
    with gzip.open(p, "wt") as f:
        f.write("1 Q0 d1 1 3.5 run\n")
    assert detect(p) == "trec"
    unknown = tmp_path / "x.tsv"
    unknown.write_text("what is this\n")
    with pytest.raises(TeacherError, match="not a known teacher/candidate file.*known formats: " + ", ".join(FORMATS)):
        detect(unknown)


def test_preflight_names_a_malformed_first_line_before_any_work(tmp_path, scifact_ids):
    from ranksweep.core.preflight import check_inputs

    good = tmp_path / "negatives.run"
    write("trec", good, scifact_ids)
    bad = tmp_path / "scores.tsv"
    bad.write_text("1.0\t2.0\t0\t31715818\t1203035\n1.0\t2.0\t0\n")
    cfg = TrialConfig.from_dict(fast_config(tmp_path, teacher={"kind": "file", "path": str(bad), "format": "tsv"}, sampler="imported",
                                            **{"candidates.imported": {"path": str(good)}}))
    with pytest.raises(TeacherError, match=rf"^{bad}:2: expected 'pos_score neg_score qid pos_pid neg_pid'.*\(the file of teacher.path\)$"):
        check_inputs(cfg)
