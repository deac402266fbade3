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
