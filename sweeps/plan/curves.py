"""The learning curves a plan replays: read from a sweep's MLflow runs (through ``runs``) or from a saved JSON file."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ranksweep.core.errors import RanksweepError

from ..runs import SweepReader, count_trials


class PlanError(RanksweepError, ValueError):
    """A sweep ``plan`` cannot replay; the message names why."""


@dataclass
class Curve:
    """One trial's learning curve: ``points`` are ``(docs seen, metric)`` at every evaluation."""

    trial_id: str
    name: str
    cell: dict[str, Any]
    seed: int
    budget: int
    points: list[tuple[int, float]]
    start: float = 0.0  # when it started (the live arrival order)
    seconds: Optional[list[float]] = None  # seconds from its start to each point, as recorded

    def clock(self, timing: str) -> list[float]:
        """When each point arrives after the trial started: its documents seen, or its recorded seconds."""
        return list(self.seconds) if timing == "seconds" and self.seconds else [float(d) for d, _ in self.points]

    @property
    def final(self) -> float:
        return self.points[-1][1]

    @property
    def complete(self) -> bool:
        return bool(self.points) and self.points[-1][0] >= self.budget

    def cell_key(self) -> str:
        return json.dumps(self.cell, sort_keys=True, default=list)


@dataclass
class Curves:
    """The learning curves of one sweep, as read from MLflow or from a JSON file written by ``save``."""

    sweep: str
    metric: str
    mode: str
    trials: list[Curve]
    concurrency: Optional[int] = None  # the sweep's max_concurrent
    budget_key: str = "budget_docs"

    @classmethod
    def from_mlflow(cls, tracking_uri: str, experiment: str, sweep: Optional[str] = None, metric: Optional[str] = None,
                    include_stopped: bool = False) -> "Curves":
        """The curves of the latest sweep of ``experiment`` (or the one named ``sweep``).

        By default only trials that trained their own full budget (``runs.count_trials``); with
        ``include_stopped`` the trials a live scheduler stopped, too (their curves end where they stopped).
        """

        reader = SweepReader(tracking_uri, experiment, sweep)
        metric = metric or reader.spec_value("metric", "dev/nDCG@10")
        mode = reader.spec_value("mode", "max")
        counted = count_trials(reader.trials())
        runs = counted.full + (counted.stopped if include_stopped else [])
        if not runs:
            raise PlanError(f"sweep {reader.name!r} of experiment {experiment!r} has no trial that trained its full budget "
                            f"({len(counted.stopped)} stopped early, {len(counted.failed)} failed, {counted.running} running); "
                            "plan replays a pilot run with `scheduler: {name: none}`")
        trials = []
        for r in runs:
            hist = reader.history(r.run_id, metric, times=True)
            if not hist:
                continue
            seconds = None
            if r.start_time and all(ts for _, _, ts in hist):  # Ray's result timestamps (1 s resolution)
                seconds = list(np.maximum.accumulate([max(1e-3, (ts - r.start_time) / 1000) for _, _, ts in hist]))
                seconds = [float(x) for x in seconds]
            trials.append(Curve(r.trial_id or r.name, r.name, r.cell, r.seed, r.budget or counted.budget,
                                [(d, v) for d, v, _ in hist], r.start_time, seconds))
        if not trials:
            raise PlanError(f"no trial of sweep {reader.name!r} recorded {metric!r} (known metrics: "
                            f"{sorted({k for r in runs for k in r.metrics})})")
        trials.sort(key=lambda c: (c.start, c.name))
        concurrency = reader.spec_value("max_concurrent")
        return cls(reader.name, metric, mode, trials, int(concurrency) if isinstance(concurrency, (int, float)) else None)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "Curves":
        try:
            d = json.loads(Path(path).read_text())
            d["trials"] = [Curve(**{**t, "points": [tuple(p) for p in t["points"]]}) for t in d["trials"]]
            return cls(**d)
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise PlanError(f"--curves {path}: not a curves file written by `ranksweep plan --save-curves` ({e})") from None

    @property
    def budget(self) -> int:
        return max(c.budget for c in self.trials)

    def steps(self) -> list[int]:
        """The evaluation steps (documents seen) of the sweep's full-budget curves."""
        return sorted({d for c in self.trials for d, _ in c.points})

    def live_order(self) -> list[int]:
        """The trials in the order they started."""
        return sorted(range(len(self.trials)), key=lambda i: (self.trials[i].start, self.trials[i].name))
