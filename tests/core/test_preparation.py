"""Preparation (``core/preparation.py``): a prepared folder, its manifest, and trials that only open it."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import tiny_config

from ranksweep.core import Trial, prepare
from ranksweep.core.preparation import REFERENCE_METRICS, Manifest, Prepared


def test_the_manifest_names_every_stage_and_a_second_prepare_builds_nothing(tmp_path, tiny_model, monkeypatch):
    from ranksweep.core.data import cache

    cfg = tiny_config(tmp_path, tiny_model)
    p = prepare(cfg)
    m = Manifest.read(p.folder)
    assert m == p.manifest and json.loads((p.folder / "manifest.json").read_text())["corpus"] == m.corpus
    assert m.train == cfg.data.train and m.components and m.teacher_tables and m.dense is None  # dense_depth 0
    assert m.queries["n_train"] >= len(p.train_rows) > 0 and m.queries["n_dev"] == len(p.dev.qids)
    assert [e["name"] for e in m.evals] == [es.name for es in p.evals] and m.tokens
    root = p.root
    for rel in [m.corpus["store"], m.queries["store"], m.bm25, *m.teacher_tables.values(),
                *(e["bm25"] for e in m.evals), *(e["corpus_store"] for e in m.evals)]:
        assert (root / rel).exists(), rel  # every path is relative to the cache root and there
    reference = json.loads((p.folder / REFERENCE_METRICS).read_text())
    assert reference == p.reference_metrics and "bm25/dev/nDCG@10" in reference and "teacher/dev/nDCG@10" in reference
    built = []
    real = cache.stage
    monkeypatch.setattr("ranksweep.core.preparation.stage",
                        lambda root, kind, key, build: real(root, kind, key, lambda tmp: (built.append(kind), build(tmp))))
    again = prepare(cfg)
    assert again.folder == p.folder and built == [] and Prepared.open(p.folder).manifest == m


def test_a_trial_given_prepared_data_opens_it_and_builds_nothing(tmp_path, tiny_model, monkeypatch):
    from ranksweep.core import NotPrepared
    from ranksweep.core.data import cache

    cfg = tiny_config(tmp_path, tiny_model)
    folder = prepare(cfg).folder
    built = []
    real = cache.stage

    def spy(root, kind, key, build):
        return real(root, kind, key, lambda tmp: (built.append(kind), build(tmp)))

    for mod in ("ranksweep.core.data.cache", "ranksweep.core.preparation", "ranksweep.core.data.bm25", "ranksweep.core.data.tokens"):
        monkeypatch.setattr(f"{mod}.stage", spy)
    t = Trial(cfg, folder)
    t.train_until(16)
    assert built == [] and t.docs_seen == 16
    # what the preparation lacks is named, and nothing is built to make up for it
    with pytest.raises(NotPrepared, match=r"sampler 'random' needs candidate component\(s\) \['random'\]"):
        Trial(cfg.replace(**{"sampler.name": "random"}), folder)
    from transformers import AutoTokenizer

    other = tmp_path / "other_vocab"  # the tiny model with one more word in its vocabulary
    shutil.copytree(tiny_model, other)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.add_tokens(["ranksweepium"])
    tok.save_pretrained(other)
    with pytest.raises(NotPrepared, match="no tokens were prepared for the student tokenizer"):
        Trial(cfg.replace(**{"student.model": str(other)}), folder)
    with pytest.raises(NotPrepared, match="no document tokens of corpus .* at max length 40"):
        Trial(cfg.replace(**{"data.max_doc_length": 40}), folder)
    with pytest.raises(NotPrepared, match="another teacher"):
        Trial(cfg.replace(**{"teacher.kind": "ensemble", "teacher.members": [{"kind": "bm25", "weight": 2.0}]}), folder)
    assert built == []
