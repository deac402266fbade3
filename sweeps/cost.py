"""What a sweep costs: its trials, their training documents, and the hours they take at a rate (the one cost model).

``ranksweep run --dry-run`` and ``ranksweep plan --for`` both cost a sweep here. Only training
documents are counted: evaluations and trial start-up come on top.
"""

from __future__ import annotations

from dataclasses import dataclass


#: training documents per second of one trial when the user gives no rate: a bert-base-sized student on one
#: modern GPU, or the tiny CPU students of the shipped SciFact sweeps
DEFAULT_DOCS_PER_S = {"gpu": 3000.0, "cpu": 25.0}


def max_budget(sweep) -> int:
    """The largest ``budget_docs`` of any trial of the sweep (it can be an axis)."""
    for a in sweep.space.axes:
        if a.key == "budget_docs":
            return int(max(a.values) if a.categorical else a.high)
    return sweep.base_config().budget_docs


def budgets(sweep) -> list[int]:
    """Each cell's training budget (a grid), or the largest a sampled trial can draw (Optuna, random), once per seed."""
    if sweep.fields.search == "grid":
        per = [sweep.trial(cell).budget_docs for cell in sweep.space.grid()]
        return per * len(sweep.seeds)
    return [max_budget(sweep)] * sweep.fields.num_samples


def sweep_docs(sweep) -> tuple[int, int]:
    """A sweep's trial count and the training documents of all its trials (each trial's own budget)."""
    per = budgets(sweep)
    return len(per), sum(per)


@dataclass(frozen=True)
class Cost:
    """The training cost of a sweep's trials at ``docs_per_s`` per trial, each trial holding ``gpu_per_trial`` GPUs."""

    trials: int
    docs: int
    docs_per_s: float
    gpu_per_trial: float  # 0: CPU trials

    @property
    def trial_hours(self) -> float:
        return self.docs / self.docs_per_s / 3600

    @property
    def gpu_hours(self) -> float:
        return self.trial_hours * self.gpu_per_trial

    def at_once(self, gpus: float) -> float:
        """Trials training at once on ``gpus`` GPUs (at least one)."""
        return max(1.0, gpus / (self.gpu_per_trial or 1.0))

    def wall_hours(self, gpus: float) -> float:
        return self.trial_hours / self.at_once(gpus)


def sweep_cost(sweep, docs_per_s: float | None = None, gpu_per_trial: float | None = None) -> Cost:
    """The sweep's cost at ``docs_per_s`` (default: ``DEFAULT_DOCS_PER_S`` for its device); ``gpu_per_trial`` defaults
    to the spec's ``resources.gpu``."""
    n, docs = sweep_docs(sweep)
    gpu = sweep.fields.resources.gpu if gpu_per_trial is None else gpu_per_trial
    rate = docs_per_s or DEFAULT_DOCS_PER_S["gpu" if sweep.fields.resources.gpu > 0 else "cpu"]
    return Cost(n, docs, rate, gpu)


def dry_run_summary(sweep, docs_per_s: float | None = None) -> str:
    """What ``ranksweep run --dry-run`` prints: trials, budgets, cost, scheduler."""
    cost = sweep_cost(sweep, docs_per_s)
    per = sorted(set(budgets(sweep)))
    lines = [f"sweep {sweep.name!r}: search={sweep.fields.search}, axes={sweep.space.keys()}"]
    if sweep.fields.search == "grid":
        lines.append(f"cells: {len(sweep.space.grid())} x seeds {sweep.seeds} = {cost.trials} trials")
    else:
        lines.append(f"trials: {cost.trials} ({sweep.fields.search} samples)")
    budget = f"{per[0]}" if len(per) == 1 else f"{per[0]}-{per[-1]}"
    lines.append(f"budget: {budget} docs per trial, {cost.docs:,} docs in all (an upper bound: early stopping trims it)")
    lines.append(f"cost at {cost.docs_per_s:g} docs/s per trial: {cost.trial_hours:.2f} trial-hours "
                 f"({'GPU' if sweep.fields.resources.gpu > 0 else 'CPU'}; --docs-per-s sets the rate)")
    lines.append(f"scheduler: {sweep.fields.scheduler.name}, metric {sweep.fields.metric} ({sweep.fields.mode})")
    return "\n".join(lines)
