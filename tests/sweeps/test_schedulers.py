"""The journaled scheduler when Tune's restored state lags its journal (storage synced less often, S3 especially)."""

from __future__ import annotations

import json

from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

from ranksweep.sweeps.schedulers import Resumable


class _Trial:
    def __init__(self, trial_id: str) -> None:
        self.trial_id, self.config, self.evaluated_params = trial_id, {}, {}


def _asha() -> AsyncHyperBandScheduler:
    return AsyncHyperBandScheduler(time_attr="docs_seen", metric="m", mode="max", grace_period=32, max_t=128, reduction_factor=2)


def test_a_trial_the_journal_saw_complete_but_tune_resumed_is_stopped_not_an_error(tmp_path):
    journal = tmp_path / "journal.jsonl"
    events = [{"trial": "a", "event": "result", "result": {"docs_seen": 32, "m": 1.0}, "decision": TrialScheduler.CONTINUE},
              {"trial": "a", "event": "complete", "result": {"docs_seen": 128, "m": 1.0}}]
    journal.write_text("".join(json.dumps(e) + "\n" for e in events))
    bare = _asha()  # what the journal's replay leaves ASHA in: the trial added, reported, completed
    t = _Trial("a")
    bare.on_trial_add(None, t)
    bare.on_trial_result(None, t, events[0]["result"])
    bare.on_trial_complete(None, t, events[1]["result"])
    try:
        bare.on_trial_result(None, t, {"docs_seen": 64, "m": 1.0})
        raise AssertionError("ASHA accepted a result of a completed trial: the guard below tests nothing")
    except KeyError:
        pass
    s = Resumable(_asha(), str(journal))  # a restored driver: Tune resumed "a" from an older checkpoint (64 docs)
    t = _Trial("a")
    s.on_trial_add(None, t)
    assert s.on_trial_result(None, t, {"docs_seen": 64, "m": 1.0}) == TrialScheduler.STOP
    s.on_trial_complete(None, t, {"docs_seen": 64, "m": 1.0})  # and its end is not a second completion either


def _drive(scheduler, events, trials: dict) -> list[str]:
    """Feed ``(trial, docs seen, metric)`` results to ``scheduler`` (adding unseen trials first); its decisions."""
    out = []
    for tid, docs, m in events:
        if tid not in trials:
            trials[tid] = _Trial(tid)
            scheduler.on_trial_add(None, trials[tid])
        out.append(scheduler.on_trial_result(None, trials[tid], {"docs_seen": docs, "m": m}))
    return out


def test_a_resumed_sweep_decides_as_an_uninterrupted_one_where_ray_alone_forgets(tmp_path):
    before = [("a", 32, 0.9), ("b", 32, 0.8), ("c", 32, 0.7)]
    after = [("d", 32, 0.1), ("a", 64, 0.9), ("b", 64, 0.5)]  # d reaches the first rung below its median: stopped
    whole = _drive(Resumable(_asha(), tmp_path / "whole.jsonl"), before + after, {})
    assert whole[3] == TrialScheduler.STOP
    first = Resumable(_asha(), tmp_path / "journal.jsonl")
    first.start_fresh()
    _drive(first, before, {})
    # the driver is killed; the resumed sweep builds a new scheduler on the same journal and Tune re-adds a, b, c
    resumed, trials = Resumable(_asha(), tmp_path / "journal.jsonl"), {}
    for tid in "abc":
        trials[tid] = _Trial(tid)
        resumed.on_trial_add(None, trials[tid])
    assert _drive(resumed, after, trials) == whole[len(before):]
    bare, trials = _asha(), {}  # what Ray's restore leaves (#30838): a scheduler that never saw the first rung
    for tid in "abc":
        trials[tid] = _Trial(tid)
        bare.on_trial_add(None, trials[tid])
    assert _drive(bare, after, trials)[0] == TrialScheduler.CONTINUE  # d would train on: the journal is what stops it
    fresh = Resumable(_asha(), tmp_path / "journal.jsonl")
    fresh.start_fresh()  # a new sweep at the same path forgets the old journal
    assert _drive(fresh, after[:1], {}) == [TrialScheduler.CONTINUE]
