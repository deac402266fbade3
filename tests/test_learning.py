"""Training learns, for what we ship: the CPU sweeps' trial, run as shipped, beats its own start.

The quickstart (sweeps/quickstart.yaml) and the study (sweeps/scifact_study.yaml) train the same
trial: a 1-layer MiniLM bi-encoder, 4,096 documents at lr 1e-3. Its weakest quickstart cell is
trained here to the full budget with dev evaluated before the first step and at the end only (the
eval collections and the intermediate evaluations are left out: they do not change training). The
dev gain must exceed ``MARGIN``, several times the seed noise measured on the quickstart (README:
"Do the trials learn?"). This guards the optimizer, the schedule, the loss and the sampler wiring:
the quickstart's former setting (512 documents at lr 2e-4) gains nothing and fails it.
"""

from __future__ import annotations

import pytest
from conftest import REPO

from ranksweep.core import Trial
from ranksweep.core.config import resolve_trial
from ranksweep.sweeps.spec import load_sweep

#: dev nDCG@10 points a shipped trial must gain over its start: 3x the quickstart's measured seed noise
MARGIN = 0.05
#: the quickstart's cell that gained least in the README's measurement (lowest mean end value)
WEAKEST = {"sampler.name": "random", "loss": "lce"}
#: what differs between the study's trial and the quickstart's: evaluation only
EVALUATION_ONLY = {"data.eval", "data.eval_max_queries", "eval_every_docs"}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_the_study_trains_the_quickstarts_trial():
    quick = _flat(load_sweep(REPO / "sweeps" / "quickstart.yaml").base_config().to_dict())
    study = _flat(load_sweep(REPO / "sweeps" / "scifact_study.yaml").base_config().to_dict())
    differ = {k for k in quick.keys() | study.keys() if quick.get(k) != study.get(k)}
    assert differ <= EVALUATION_ONLY, differ - EVALUATION_ONLY


def test_the_shipped_cpu_trial_beats_its_start_by_more_than_the_noise(tmp_path):
    sweep = load_sweep(REPO / "sweeps" / "quickstart.yaml")
    base = sweep.base_config()
    assert base.eval.at_start and base.budget_docs >= 4096
    cell = next(c for c in sweep.space.grid() if all(c.get(k) == v for k, v in WEAKEST.items()))
    cfg = resolve_trial(sweep.base, cell, 0, eval_every_docs=base.budget_docs, output_dir=None, num_threads=2,
                        data={**sweep.base.get("data", {}), "eval": []})
    history = []
    trial = Trial(cfg, report=lambda m, docs: history.append(m))
    trial.run()
    before, after = history[0], history[-1]
    assert [m["docs_seen"] for m in history] == [0, base.budget_docs]
    gain = after["dev/nDCG@10"] - before["dev/nDCG@10"]
    assert gain > MARGIN, f"dev/nDCG@10 {before['dev/nDCG@10']:.4f} -> {after['dev/nDCG@10']:.4f}: gained {gain:+.4f}, not > {MARGIN}"
    assert after["train/lr"] == pytest.approx(0.0, abs=1e-12) and after["steps"] == base.budget_docs // (8 * base.group_size)
