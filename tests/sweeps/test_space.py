"""Search spaces, sweep specs, dry runs and cluster.yaml: validated offline, errors naming the field."""

from __future__ import annotations

import json
import random

import pytest
import yaml
from conftest import REPO

from ranksweep.search_spaces import SearchSpace, SpaceError, load_space
from ranksweep.sweeps.spec import SpecError, load_sweep

SPACE = {"axes": {
    "sampler.name": ["random", "bm25"],
    "loss": ["lce", "kl", "margin_mse"],
    "temperature": {"values": [1.0, 4.0], "when": {"loss": ["kl", "margin_mse"]}},
}}


def test_grid_honours_conditions_without_duplicates():
    cells = SearchSpace.from_dict(SPACE).grid()
    assert len(cells) == 2 * (1 + 2 * 2)
    assert len({json.dumps(c, sort_keys=True) for c in cells}) == len(cells)
    for c in cells:
        assert ("temperature" in c) == (c["loss"] != "lce")


class FakeTrial:
    """Optuna's define-by-run interface, answering at random."""

    def __init__(self, rng):
        self.rng, self.asked = rng, []

    def suggest_categorical(self, name, choices):
        self.asked.append(name)
        return self.rng.choice(choices)

    def suggest_float(self, name, low, high, log=False):
        self.asked.append(name)
        return self.rng.uniform(low, high)

    def suggest_int(self, name, low, high, log=False):
        self.asked.append(name)
        return self.rng.randint(low, high)


def test_ray_grid_and_optuna_define_by_run_cover_the_same_keys():
    space = SearchSpace.from_dict(SPACE)
    ray_space = space.to_ray_param_space([0, 1])
    grid_cells = ray_space["params"]["grid_search"]
    assert ray_space["seed"]["grid_search"] == [0, 1]
    import pickle

    fn = pickle.loads(pickle.dumps(space.to_optuna_define_by_run()))  # Tune pickles its searcher's state
    rng = random.Random(0)
    optuna_cells = []
    for _ in range(200):
        t = FakeTrial(rng)
        out = fn(t)
        assert set(t.asked) == set(out["params"])  # asks only what applies
        assert ("temperature" in out["params"]) == (out["params"]["loss"] != "lce")
        optuna_cells.append(out["params"])
    keys = lambda cells: set().union(*(c.keys() for c in cells))  # noqa: E731
    assert keys(grid_cells) == keys(optuna_cells) == set(space.keys())
    assert {json.dumps(c, sort_keys=True) for c in optuna_cells} == {json.dumps(c, sort_keys=True) for c in grid_cells}


@pytest.mark.parametrize("axes, words", [
    ({"samplr.name": ["bm25"]}, "unknown axis 'samplr.name'; did you mean 'sampler.name'"),
    ({"sampler.name": ["bm25", "hardest"]}, "axis 'sampler.name': value 'hardest' is not allowed"),
    ({"group_size": [1, 8]}, "axis 'group_size': value 1 is not allowed"),
    ({"loss": ["kl"], "temperature": {"values": [1.0], "when": {"los": ["kl"]}}}, "condition on unknown axis 'los'"),
    ({"loss": ["kl"], "temperature": {"values": [1.0], "when": {"loss": ["listnet"]}}}, "not values of axis 'loss'"),
    ({"optim.lr": {"loguniform": [0, 1e-3]}}, "low > 0"),
    ({"optim.lr": {"values": [1e-4], "uniform": [0, 1]}}, "either values or a distribution"),
])
def test_bad_spaces_name_the_axis(axes, words):
    with pytest.raises(SpaceError, match=None) as e:
        SearchSpace.from_dict({"axes": axes})
    assert words in str(e.value), str(e.value)


def test_continuous_axis_has_no_grid():
    space = load_space("optuna_lr_temperature")
    with pytest.raises(SpaceError, match="continuous"):
        space.grid()


def test_shipped_sweeps_resolve_and_dry_run():
    from ranksweep.sweeps.cost import dry_run_summary

    counts = {}
    for p in sorted((REPO / "sweeps").glob("*.yaml")):
        s = load_sweep(p)
        counts[s.name] = s.trial_count()
        summary = dry_run_summary(s)
        n = s.trial_count()
        assert (f"= {n} trials" in summary if s.fields.search == "grid" else f"trials: {n} (" in summary) and f"{s.base_config().budget_docs} docs per trial" in summary, summary
    assert counts["quickstart"] == 6 * 2  # 6 cells x 2 seeds
    assert counts["scifact-optuna"] == 48
    assert counts["scifact-ablation"] == (4 * (1 + 4 * 4)) * 3
    assert counts["paper-msmarco"] == 2 * 4 * 4 * 4
    assert counts["scifact-pilot"] == 2 * 4 * 3


def _spec(tmp_path, **over):
    d = {"name": "t", "base": str(REPO / "sweeps" / "trials" / "scifact_bi.yaml"), "space": "quickstart"}
    d.update(over)
    return d


@pytest.mark.parametrize("over, words", [
    ({"search": "bayes"}, "search: 'bayes' is not one of"),
    ({"metric": "dev/nDCG@20"}, "metric: 'dev/nDCG@20' is not reported"),
    ({"scheduler": {"name": "asha", "grace": 3}}, "unknown key 'scheduler.grace'"),
    ({"space": {"axes": {"sampler.nam": ["bm25"]}}}, "unknown axis 'sampler.nam'"),
    ({"space": "no_such_space"}, "search space not found"),
    ({"seeds": 3, "search": "optuna"}, "repeats per cell need search: grid"),
    ({"trial": {"group_size": 1}}, "base trial: group_size"),
    ({"sweeps": 3}, "unknown key 'sweeps'"),
    ({"seeds": 0}, "seeds: expected a positive count or a list of integer seeds, got 0"),
    ({"keep_weights": 0}, "keep_weights: expected all, none or a number of trials >= 1, got 0"),
    ({"prepare": {"shard_docs": 0}}, "prepare.shard_docs: must be >= 1, got 0"),
    ({"resources": {"cpu": 0}}, "resources.cpu: must be > 0, got 0"),
    ({"space": {"axes": {"optim.lr": {"unifrom": [1e-5, 1e-4]}}}}, "axis 'optim.lr': unknown key 'unifrom'; did you mean 'uniform'"),
    ({"space": {"axes": {"optim.lr": {"uniform": [1e-5]}}}}, "axis 'optim.lr': uniform: expected 2 values"),
])
def test_bad_spec_names_the_field(tmp_path, over, words):
    with pytest.raises(SpecError) as e:
        load_sweep(_spec(tmp_path, **over))
    assert words in str(e.value), str(e.value)


def test_gpu_requested_without_gpu_fails_before_any_work(tmp_path, monkeypatch):
    import torch

    from ranksweep.sweeps.tuner import run_sweep

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)  # on a GPU machine too: nothing may start

    sweep = load_sweep(_spec(tmp_path, resources={"cpu": 1, "gpu": 1}, storage=str(tmp_path / "ray")))
    with pytest.raises(SpecError, match="resources.gpu: 1.0 GPU per trial requested but this machine has none"):
        run_sweep(sweep)


def test_cluster_yaml_passes_ray_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load((REPO / "cluster.yaml").read_text())
    validate_config(prepare_config(cfg))
    gpu = cfg["available_node_types"]["gpu_worker"]
    assert gpu["min_workers"] == 0 and gpu["max_workers"] >= 1
    assert any("ranksweep" in c for c in cfg["setup_commands"])
    from jsonschema.exceptions import ValidationError

    broken = dict(cfg, max_wrkers=3)
    with pytest.raises(ValidationError, match="max_wrkers"):
        validate_config(prepare_config(broken))


def test_a_budget_axis_is_read_per_trial(tmp_path):
    """``budget_docs`` as an axis: each trial's budget comes from its own resolved config (cost, ASHA's max_t,
    the MLflow params and whether a finished trial was stopped early), not from the base trial's."""
    from ranksweep.sweeps.cost import sweep_docs
    from ranksweep.sweeps.tracking import MLflowWriter, trial_params
    from ranksweep.sweeps.cost import max_budget

    sweep = load_sweep(_spec(tmp_path, space={"axes": {"budget_docs": [256, 512, 1024]}}, seeds=2))
    assert sweep.base_config().budget_docs not in (256, 512, 1024)
    assert max_budget(sweep) == 1024
    assert sweep_docs(sweep) == (6, 2 * (256 + 512 + 1024))
    budget, params = trial_params(sweep.base, {"budget_docs": 256}, 3)
    assert budget == 256 and params["budget_docs"] == "256" and params["axis.budget_docs"] == "256" and params["seed"] == "3"
    assert params["eval.diameter_alpha"] == "0.99"  # defaults are logged too
    writer = MLflowWriter("sqlite:///unused.db", "e", "s", "k")  # not started: nothing is written
    for tid, budget in (("short", 256), ("long", 1024)):
        writer.trial(tid, {"budget_docs": budget}, 0, budget, {})
        writer.result(tid, {"docs_seen": 256})
        writer.end_trial(tid, "FINISHED")
    assert writer.ending("short")["tags"]["ranksweep.stopped_early"] == "false"  # its own whole budget
    assert writer.ending("long")["tags"]["ranksweep.stopped_early"] == "true"


def test_a_conditional_data_axis_prepares_the_base_data_for_the_cells_it_does_not_apply_to():
    """teacher.model only for kl: the lce cell, where it is absent, uses the base teacher's prepared data, which is also
    the kl cell's with the base's model: one preparation for both, found from the resolved configs, not the axis names."""
    from ranksweep.sweeps.prepare import data_axes, data_combos
    from ranksweep.sweeps.spec import load_sweep

    spec = {"name": "t", "base": str(REPO / "sweeps" / "trials" / "scifact_bi.yaml"), "trial": {"teacher": {"kind": "bi", "model": "minilm", "members": []}},
            "space": {"axes": {"loss": ["lce", "kl"], "teacher.model": {"values": ["minilm", "other/model"], "when": {"loss": ["kl"]}}}}}
    sweep = load_sweep(spec)
    assert [a.key for a in data_axes(sweep)] == ["teacher.model"]
    prepared = {cfg.shared_data_key for _, cfg in data_combos(sweep)}
    cells = {sweep.trial(c).shared_data_key for c in sweep.space.grid()}
    assert cells == prepared and len(prepared) == 2 and sweep.base_config().shared_data_key in prepared
    optuna = load_sweep({**spec, "search": "optuna", "seeds": 1, "num_samples": 4})
    assert {cfg.shared_data_key for _, cfg in data_combos(optuna)} == prepared
    assert sweep.trial({"loss": "kl"}) is sweep.trial({"loss": "kl"})  # resolved once per process
    axis_only = load_sweep({**spec, "space": {"axes": {"teacher.weight": [1.0]}}})  # a teacher axis that changes nothing
    assert data_axes(axis_only) == [] and len(data_combos(axis_only)) == 1
