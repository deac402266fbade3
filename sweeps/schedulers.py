"""Early-stopping schedulers that keep their state when a sweep's driver is killed and the sweep resumed.

``Tuner.restore`` does not restore a scheduler's state (Ray #30838): a resumed ASHA forgets its rungs
and lets through a trial the first run would have stopped. ``Resumable`` wraps Ray's scheduler (it
re-implements none of its logic): every result it is shown and every decision it makes are appended
to a journal beside the experiment, and after a restore each trial's journaled events are replayed
into the fresh scheduler when Tune adds the trial again (Tune re-adds every restored trial, finished
ones included, before any new result). Replayed decisions are discarded, except a STOP the first run
made that Tune had not yet carried out, which is made again at the trial's next result.

ASHA's rungs and the median rule's per-trial results are rebuilt exactly, whatever the order of the
replay (their state does not depend on it). Synchronous HyperBand pauses and resumes trials from
inside its result handler, which a replay cannot do safely: it is journaled but not rebuilt, and a
resumed HyperBand sweep says so.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Optional

from ray.tune.schedulers import AsyncHyperBandScheduler, MedianStoppingRule, TrialScheduler

logger = logging.getLogger(__name__)

REPLAYABLE = (AsyncHyperBandScheduler, MedianStoppingRule)


def early_stopping(name: str, grace: int, reduction_factor: float = 2.0, brackets: int = 1, max_t: Optional[int] = None,
                   metric: Optional[str] = None, mode: Optional[str] = None) -> TrialScheduler:
    """Ray Tune's scheduler for a spec's ``scheduler:`` (time in documents seen): the one a sweep runs and ``plan`` replays."""
    from ray.tune.schedulers import FIFOScheduler, HyperBandScheduler

    if name == "asha":
        return AsyncHyperBandScheduler(time_attr="docs_seen", metric=metric, mode=mode, max_t=max_t, grace_period=grace,
                                       reduction_factor=reduction_factor, brackets=brackets)
    if name == "median":
        return MedianStoppingRule(time_attr="docs_seen", metric=metric, mode=mode, grace_period=grace, min_samples_required=3)
    if name == "hyperband":
        return HyperBandScheduler(time_attr="docs_seen", metric=metric, mode=mode, max_t=max_t, reduction_factor=reduction_factor)
    return FIFOScheduler()


def _slim(result: dict) -> dict:
    """The numbers of a result (what a scheduler reads), JSON-safe."""
    return {k: v for k, v in result.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}


class Resumable(TrialScheduler):
    """A Ray Tune scheduler whose state survives ``Tuner.restore``: journaled, then replayed per trial."""

    def __init__(self, inner: TrialScheduler, journal: str | Path) -> None:
        self.inner = inner
        self.journal = str(journal)
        self._events: Optional[dict[str, list[dict]]] = None  # the journal as found, by trial
        self._replayed: set[str] = set()
        self._forced: dict[str, str] = {}
        self._completed: set[str] = set()  # completed in the journal: the scheduler let go of them

    def __getstate__(self) -> dict:  # pickled with the Tuner: the journal is read again after a restore
        return {"inner": self.inner, "journal": self.journal, "_events": None, "_replayed": set(), "_forced": {}, "_completed": set()}

    # -- the journal -------------------------------------------------------------------------------
    def start_fresh(self) -> None:
        """A new sweep: forget any journal left at this path."""
        Path(self.journal).unlink(missing_ok=True)
        self._events = {}

    def _append(self, event: dict) -> None:
        p = Path(self.journal)
        p.parent.mkdir(parents=True, exist_ok=True)
        with p.open("a") as f:
            f.write(json.dumps(event) + "\n")

    def _load(self) -> dict[str, list[dict]]:
        if self._events is None:
            self._events = {}
            p = Path(self.journal)
            if p.exists():
                for line in p.read_text().splitlines():
                    if line.strip():
                        e = json.loads(line)
                        self._events.setdefault(e["trial"], []).append(e)
                if self._events and not isinstance(self.inner, REPLAYABLE):
                    logger.warning("%s's state is not rebuilt on resume: its decisions after the resume may differ from an "
                                   "uninterrupted sweep", type(self.inner).__name__)
        return self._events

    def _replay(self, tune_controller, trial) -> None:
        if trial.trial_id in self._replayed:
            return
        self._replayed.add(trial.trial_id)
        events = self._load().get(trial.trial_id, [])
        if not events or not isinstance(self.inner, REPLAYABLE):
            return
        last = None
        for e in events:
            if e["event"] == "result":
                self.inner.on_trial_result(tune_controller, trial, e["result"])
                last = e["decision"]
            elif e["event"] == "complete":
                self.inner.on_trial_complete(tune_controller, trial, e["result"])
                self._completed.add(trial.trial_id)
                last = "COMPLETE"
        if last == TrialScheduler.STOP:  # decided, not yet carried out when the driver stopped
            self._forced[trial.trial_id] = TrialScheduler.STOP
        logger.info("scheduler: replayed %d journaled events of trial %s", len(events), trial.trial_id)

    # -- TrialScheduler, delegated --------------------------------------------------------------------
    def set_search_properties(self, metric: Optional[str], mode: Optional[str], **spec) -> bool:
        return self.inner.set_search_properties(metric, mode, **spec)

    @property
    def metric(self):
        return self.inner.metric

    @property
    def supports_buffered_results(self) -> bool:
        return self.inner.supports_buffered_results

    def on_trial_add(self, tune_controller, trial) -> None:
        self.inner.on_trial_add(tune_controller, trial)
        self._replay(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial) -> None:
        self.inner.on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        self._replay(tune_controller, trial)
        if trial.trial_id in self._completed:
            # the journal saw it end, but Tune's state (synced to storage less often than the journal is written,
            # an S3 bucket especially) resumed it: it is done, and the inner scheduler no longer knows it
            return TrialScheduler.STOP
        decision = self._forced.pop(trial.trial_id, None) or self.inner.on_trial_result(tune_controller, trial, result)
        self._append({"trial": trial.trial_id, "event": "result", "result": _slim(result), "decision": decision})
        return decision

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self._replay(tune_controller, trial)
        if trial.trial_id in self._completed:
            return  # completed once already (see on_trial_result)
        self.inner.on_trial_complete(tune_controller, trial, result)
        self._append({"trial": trial.trial_id, "event": "complete", "result": _slim(result or {})})

    def on_trial_remove(self, tune_controller, trial) -> None:
        self.inner.on_trial_remove(tune_controller, trial)

    def choose_trial_to_run(self, tune_controller) -> Any:
        return self.inner.choose_trial_to_run(tune_controller)

    def debug_string(self) -> str:
        return self.inner.debug_string()

    def save(self, checkpoint_path: str):
        return self.inner.save(checkpoint_path)

    def restore(self, checkpoint_path: str):
        return self.inner.restore(checkpoint_path)
