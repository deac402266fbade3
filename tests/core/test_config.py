"""Config validation: every bad input names its field."""

from __future__ import annotations

import pytest

from ranksweep.core.config import ConfigError, TrialConfig


def _err(d: dict) -> str:
    with pytest.raises(ConfigError) as e:
        TrialConfig.from_dict(d)
    return str(e.value)


def test_defaults_are_valid_and_round_trip():
    cfg = TrialConfig.from_dict({})
    assert cfg.teacher.kind == "ensemble" and [m.kind for m in cfg.teacher.members] == ["bi", "bm25"]
    assert cfg.student.kind == "bi" and cfg.student.num_layers == 2
    assert TrialConfig.from_dict(cfg.to_dict()) == cfg


def test_shorthands():
    cfg = TrialConfig.from_dict({"sampler": "teacher", "loss": "margin_mse", "teacher": "bm25"})
    assert cfg.sampler.name == "teacher"
    assert [t.name for t in cfg.loss] == ["margin_mse"]
    assert cfg.teacher.kind == "bm25"
    cfg = TrialConfig.from_dict({"loss": [{"name": "kl"}, {"name": "ranknet", "weight": 0.5, "params": {"mode": "hard"}}],
                                 "optim": {"lr": "3e-5"}})
    assert cfg.loss[1].params == {"mode": "hard"} and cfg.optim.lr == 3e-5


@pytest.mark.parametrize(
    "d, field, words",
    [
        ({"sampler": "bm52"}, "sampler.name", "did you mean 'bm25'"),
        ({"loss": "margn_mse"}, "loss[0].name", "did you mean 'margin_mse'"),
        ({"student": {"kind": "poly"}}, "student.kind", "unknown student kind 'poly'"),
        ({"teacher": {"kind": "oracle"}}, "teacher.kind", "unknown teacher kind"),
        ({"group_size": 1}, "group_size", "must be >= 2"),
        ({"budget_docs": 0}, "budget_docs", "must be > 0"),
        ({"budget_docs": -8}, "budget_docs", "must be > 0"),
        ({"budget_docs": 1001, "group_size": 8}, "budget_docs", "use 1000 or 1008"),
        ({"data": {"train": "beir/scifcat/train"}}, "data.train", "did you mean 'beir/scifact/train'"),
        ({"data": {"eval": ["cranfeld"]}}, "data.eval[0]", "did you mean 'cranfield'"),
        ({"data": {"train": "local:/nonexistent/folder:test"}}, "data.train", "lacks"),
        ({"samplr": "bm25"}, "samplr", "did you mean 'sampler'"),
        ({"optim": {"learning_rate": 1e-4}}, "optim.learning_rate", "optim.grad_accum, optim.lr,"),
        ({"temperature": 0}, "temperature", "must be > 0"),
        ({"teacher": {"kind": "file", "path": "/nonexistent/scores.json.gz"}}, "teacher.path", "not found"),
        ({"teacher": "none", "loss": "kl"}, "loss[0].name", "needs teacher scores"),
        ({"loss": {"name": "kl", "params": {"alpha": 1}}}, "loss[0].params", "has no parameter"),
        ({"augment": {"in_batch": True}, "student": {"kind": "cross"}}, "augment.in_batch", "bi-encoder"),
        ({"augment": {"entropy_band": [0.5, 0.2]}}, "augment.entropy_band", "lo < hi"),
        ({"augment": {"negatives_mix": 1.5}}, "augment.negatives_mix", "[0, 1]"),
        ({"eval": {"measures": ["nDCG@10", "nDGC@10"]}}, "eval.measures[1]", "nDGC"),
        ({"group_size": "eight"}, "group_size", "expected an integer"),
        ({"student": {"pooling": "max"}}, "student.pooling", "not one of"),
        ({"data": {"eval": ["beir/scifact/train"]}}, "data.eval[0]", "is the training collection"),
        ({"eval": {"dev_depth": 200}}, "eval.dev_depth", "exceeds candidates.bm25_depth"),
        # values that were accepted although they cannot mean anything
        ({"optim": {"weight_decay": -0.1}}, "optim.weight_decay", "must be >= 0"),
        ({"optim": {"max_grad_norm": 0}}, "optim.max_grad_norm", "or null: no clipping"),
        ({"seed": -1}, "seed", "must be >= 0"),
        ({"student": {"scale": 0}}, "student.scale", "must be > 0"),
        ({"augment": {"in_batch_weight": -1}}, "augment.in_batch_weight", "must be > 0"),
        ({"eval": {"dev_depth": 0}}, "eval.dev_depth", "must be >= 1"),
        ({"eval": {"depth": 0}}, "eval.depth", "must be >= 1"),
        ({"eval": {"batch_tokens": 100}}, "eval.batch_tokens", "cannot hold one query and one passage"),
        ({"data": {"eval_max_queries": 0}}, "data.eval_max_queries", "must be >= 1"),
        ({"candidates": {"random_pool": 0}}, "candidates.random_pool", "must be >= 1"),
        ({"teacher": {"kind": "ensemble", "members": [{"kind": "bm25", "weight": -1}]}}, "teacher.members[0].weight", "must be > 0"),
    ],
)
def test_errors_name_the_field(d, field, words):
    msg = _err(d)
    assert msg.startswith(field) or f" {field}" in msg or f"'{field}'" in msg, msg
    assert words in msg, msg


def test_malformed_yaml_and_unknown_keys(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sampler: [bm25\n  loss: kl")
    with pytest.raises(ConfigError, match="malformed YAML"):
        TrialConfig.from_yaml(bad)
    unk = tmp_path / "unknown.yaml"
    unk.write_text("sampler: bm25\ngroup_sise: 8\n")
    with pytest.raises(ConfigError, match="unknown key 'group_sise'; did you mean 'group_size'"):
        TrialConfig.from_yaml(unk)
    with pytest.raises(ConfigError, match="config file not found"):
        TrialConfig.from_yaml(tmp_path / "missing.yaml")


def test_replace_validates():
    cfg = TrialConfig.from_dict({})
    assert cfg.replace(**{"optim.lr": 1e-3}).optim.lr == 1e-3
    with pytest.raises(ConfigError, match="group_size"):
        cfg.replace(group_size=0)


def test_dotted_keys_expand_shorthands_and_name_what_they_cannot_set():
    from ranksweep.core.config import set_dotted

    d = {"sampler": "bm25", "teacher": "bm25", "loss": "kl"}
    set_dotted(d, "sampler.name", "random")
    set_dotted(d, "teacher.weight", 1.0)
    assert d["sampler"] == {"name": "random"} and d["teacher"] == {"kind": "bm25", "weight": 1.0}
    with pytest.raises(ConfigError, match=r"loss: cannot set 'loss.name' inside 'kl'"):
        set_dotted(d, "loss.name", "lce")


def test_apply_sets_dotted_keys_and_merges_nested_mappings_into_shorthands():
    from ranksweep.core.config import apply

    base = {"sampler": "teacher", "optim": {"lr": 1e-4, "batch_size": 4}, "candidates": {"imported": None}}
    out = apply(base, {"optim": {"lr": 3e-5}, "sampler": {"skip_top": 2}, "sampler.depth": [0, 50], "candidates": {"imported": {"path": "x"}}})
    assert out == {"sampler": {"name": "teacher", "skip_top": 2, "depth": [0, 50]}, "optim": {"lr": 3e-5, "batch_size": 4},
                   "candidates": {"imported": {"path": "x"}}}
    assert base["sampler"] == "teacher" and base["optim"]["lr"] == 1e-4  # the base is not changed
    assert apply({"teacher": {"kind": "file", "path": "s.json"}}, {"teacher": "bm25"}) == {"teacher": "bm25"}  # a value replaces


def test_type_and_bound_errors_are_one_line_in_the_projects_words():
    cases = {
        "optim.lr: must be > 0, got 0": {"optim": {"lr": 0}},
        "sampler.depth: expected 2 values, got [5]": {"sampler": {"depth": [5]}},
        "augment.in_batch: expected true/false, got 'maybe'": {"augment": {"in_batch": "maybe"}},
        "loss[0]: the required key 'name' is missing": {"loss": [{"weight": 1.0}]},
        "teacher.members[1]: expected a mapping, got 3": {"teacher": {"members": ["bm25", 3]}},
    }
    for words, d in cases.items():
        msg = _err(d)
        assert msg == words and "\n" not in msg, msg


def test_the_reference_table_comes_from_the_schema():
    from ranksweep.core.config import reference_rows

    rows = {k: (default, meaning) for k, default, meaning in reference_rows()}
    assert rows["group_size"][0] == "8" and rows["group_size"][1].endswith("(>= 2)")
    assert rows["optim.warmup_fraction"][1].endswith("(in [0, 1))")  # bounded on both sides: one interval
    assert rows["candidates.imported"][0] == "null" and rows["candidates.imported.path"][0] == "(required)"
    assert rows["loss"][0] == '[{"name": "kl", "weight": 1.0, "params": {}}]'
    assert set(rows) >= {f"optim.{k}" for k in TrialConfig.model_fields["optim"].annotation.model_fields}
