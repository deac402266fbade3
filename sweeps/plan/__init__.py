"""``ranksweep plan``: what early stopping would have saved and lost on a sweep already run to its full budget.

A pilot grid trained to the full budget records every trial's learning curve (the selection metric
at every evaluation, step = documents seen). ``replay`` drives Ray Tune's own scheduler classes
(``AsyncHyperBandScheduler`` for ASHA and asynchronous HyperBand, ``MedianStoppingRule``) with those
recorded results, in a simulated arrival order: ``concurrency`` trials train at once, each result
arriving as long after its trial's start as it did in the recorded sweep (or, without recorded
times, all at the same speed: a result at ``d`` documents arrives ``d`` after its start), and a trial
that is stopped or finishes hands its slot to the next one. With equal speeds ASHA's decisions do not
depend on the concurrency (every trial reaches each rung after every trial started before it); with
recorded times they do, since settings train and evaluate at different speeds. Nothing of
the schedulers is re-implemented; the simulation only decides the order in which they see results.

For each scheduler setting, averaged over several random arrival orders (asynchronous decisions
depend on the order), ``plan`` gives:

- ``compute_fraction``: the training documents the scheduler would have spent, over the grid's;
- ``best_kept``: how often (a fraction of the orders) the grid's best cell (seeds pooled, by the
  final value of the selection metric) had a trial that trained its full budget;
- ``regret``: the best cell's grid mean minus that of the best cell that kept a full-budget trial
  (for ``mode: min`` the other way round): 0 when the best is kept, never negative;
- ``topk_kept``: how many of the grid's top-k cells kept a full-budget trial.

The recommended setting is the cheapest whose mean regret is within seed noise (the standard error
of a cell's mean over its seeds, from the pooled within-cell variance of the final metric) and,
optionally, that keeps the best cell itself in at least ``min_best_kept`` of the orders. Regret
within noise is only a criterion when the cells differ by more than noise: a pilot whose cells do
not (a one-way ANOVA of the final metric over cells, ``cells_differ``, not significant at
``alpha``), or that has no seed noise to compare them with (one seed per cell), gives no
recommendation, since any scheduler keeps "a cell within noise of the best" when every cell is one.

The package by job: ``curves`` (reading them), ``replay`` (the simulated sweep), ``recommend``
(settings, their scores, the recommendation) and ``format`` (text, and a target sweep's cost
through ``sweeps.cost``).
"""

from .curves import Curve, Curves, PlanError
from .format import cost_lines, format_plan
from .recommend import KEYS, CellTest, Plan, Row, Setting, cell_means, cells_differ, finals_by_cell, plan, recommend, score, settings_grid
from .replay import Replay, replay

__all__ = ["KEYS", "CellTest", "Curve", "Curves", "Plan", "PlanError", "Replay", "Row", "Setting", "cell_means", "cells_differ",
           "cost_lines", "finals_by_cell", "format_plan", "plan", "recommend", "replay", "score", "settings_grid"]
