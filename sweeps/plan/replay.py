"""Ray Tune's own schedulers fed a sweep's recorded curves in a simulated arrival order (nothing of them re-implemented)."""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from ray.tune.schedulers import TrialScheduler

from .curves import Curve, Curves


class _Trial:
    """The part of Ray Tune's ``Trial`` a scheduler reads: its id and status."""

    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id
        self.status = "PENDING"

    def __repr__(self) -> str:
        return self.trial_id


class _Controller:
    """The part of Ray Tune's controller a scheduler calls: the live trials."""

    def __init__(self, trials: list[_Trial]) -> None:
        self.trials = trials

    def get_live_trials(self) -> list[_Trial]:
        return [t for t in self.trials if t.status in ("PENDING", "RUNNING", "PAUSED")]


@dataclass
class Replay:
    """What a scheduler did with a sweep's curves: documents each trial trained, and each decision."""

    docs: dict[str, int]
    decisions: list[tuple[str, int, str]]  # (trial id, docs seen, CONTINUE | STOP | PAUSE) in arrival order
    beyond_record: list[str] = field(default_factory=list)  # trials the scheduler let run past their recorded curve


class _Simulation:
    """A live sweep's event loop over recorded curves: ``concurrency`` slots, results arriving on each trial's clock."""

    def __init__(self, curves: Curves, scheduler, order: list[int], concurrency: int, timing: str) -> None:
        self.metric = curves.metric
        self.scheduler = scheduler
        self.concurrency = concurrency
        self.trials = [_Trial(curves.trials[i].trial_id) for i in order]
        self.curves: list[Curve] = [curves.trials[i] for i in order]
        self.clock = [c.clock(timing) for c in self.curves]
        self.controller = _Controller(self.trials)
        self.queue: list[tuple[int, int]] = [(k, 0) for k in range(len(self.trials))]  # (trial, index of its next point)
        self.added: set[int] = set()
        self.events: list[tuple[float, int, int, int]] = []  # (time, tie-break, trial, point index)
        self.tick = 0
        self.out = Replay({}, [])

    def _arrive(self, at: float, k: int, p: int) -> None:
        heapq.heappush(self.events, (at, self.tick, k, p))
        self.tick += 1

    def start(self, now: float) -> None:
        """Fill free slots from the queue: new trials join the scheduler, paused ones resume at their next point."""
        while self.queue and sum(t.status == "RUNNING" for t in self.trials) < self.concurrency:
            k, p = self.queue.pop(0)
            if k not in self.added:
                self.scheduler.on_trial_add(self.controller, self.trials[k])
                self.added.add(k)
            self.trials[k].status = "RUNNING"
            since = self.clock[k][p - 1] if p else 0.0
            self._arrive(now + self.clock[k][p] - since, k, p)

    def end(self, k: int, result: dict) -> None:
        self.scheduler.on_trial_complete(self.controller, self.trials[k], result)
        self.trials[k].status = "TERMINATED"
        self.out.docs[self.trials[k].trial_id] = int(result["docs_seen"])

    def step(self) -> None:
        """The next result arrives; the scheduler decides; the trial goes on, pauses or ends, and freed slots fill."""
        now, _, k, p = heapq.heappop(self.events)
        curve, trial = self.curves[k], self.trials[k]
        d, v = curve.points[p]
        result = {"docs_seen": d, self.metric: v, "training_iteration": p + 1}
        decision = self.scheduler.on_trial_result(self.controller, trial, result)
        self.out.decisions.append((trial.trial_id, d, decision))
        last = p + 1 == len(curve.points)
        if decision == TrialScheduler.STOP or (last and d >= curve.budget):
            self.end(k, result)
        elif last:  # a live scheduler's curve that ends before its budget, and this scheduler would go on
            self.out.beyond_record.append(trial.trial_id)
            self.end(k, result)
        elif decision == TrialScheduler.PAUSE:
            trial.status = "PAUSED"
            self.queue.append((k, p + 1))
        else:
            self._arrive(now + self.clock[k][p + 1] - self.clock[k][p], k, p + 1)
        self.start(now)

    def run(self) -> Replay:
        self.start(0)
        while self.events:
            self.step()
        return self.out


def replay(curves: Curves, scheduler, order: Optional[list[int]] = None, concurrency: int = 1, seed: int = 0,
           timing: str = "docs") -> Replay:
    """Feed ``curves`` to a fresh Ray Tune ``scheduler`` (``metric`` and ``mode`` set) as a live sweep would.

    ``order`` is the order trials start in (default: the live order). With ``timing="docs"`` every
    trial trains at the same speed, a result at ``d`` documents arriving ``d`` after its start; with
    ``"seconds"`` each result arrives as long after its start as it did in the recorded run (trials
    of different settings train and evaluate at different speeds). ``seed`` seeds NumPy's global
    generator, which ``AsyncHyperBandScheduler`` uses to put trials into brackets (restored after).
    """
    order = curves.live_order() if order is None else list(order)
    rng_state = np.random.get_state()
    np.random.seed(seed)
    try:
        return _Simulation(curves, scheduler, order, concurrency, timing).run()
    finally:
        np.random.set_state(rng_state)
