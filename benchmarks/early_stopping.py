"""Grid against early stopping on the scheduler pilot, in one run: trial-seconds and the cell each picks.

1. runs the pilot grid (``sweeps/scifact_pilot.yaml``, every trial to the full budget);
2. replays schedulers over its learning curves (``ranksweep plan``) and takes the recommended one,
   or the one given with ``--scheduler``;
3. runs the same grid live with that scheduler, on the same machine, right after;
4. prints each run's total trial-seconds (Ray's ``time_total_s`` of every trial: training, evaluations
   and start-up) and wall-clock, their ratio, the compute fraction the replay predicted and the one the
   live run spent (training documents), and the cell each run picks (``ranksweep best``: full-budget
   trials, seeds pooled) with that cell's grid mean of the selection and test metrics.

Both runs are tracked in one SQLite MLflow database in ``--out`` (experiments ``<name>-grid`` and
``<name>-<scheduler>``), so ``ranksweep plan`` and ``ranksweep report`` can be run on them afterwards.

Usage::

    python benchmarks/early_stopping.py --out runs/early-stopping
    python benchmarks/early_stopping.py --scheduler '{"name": "asha", "grace_docs": 256, "reduction_factor": 4}'
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def run(spec: Path, out: Path, label: str, scheduler: dict) -> tuple[float, float, list]:
    """Run the pilot as sweep ``<name>-<label>`` with ``scheduler``; (trial-seconds, wall-clock, Ray results)."""
    import ray

    from ranksweep.sweeps.spec import load_sweep
    from ranksweep.sweeps.tuner import run_sweep

    base = load_sweep(spec)
    sweep = load_sweep(spec, {"name": f"{base.name}-{label}", "scheduler": scheduler, "storage": str(out / "ray"),
                              "tracking": {"uri": f"sqlite:///{out / 'mlflow.db'}", "experiment": f"{base.experiment}-{label}"}})
    t0 = time.perf_counter()
    try:
        results = run_sweep(sweep)
    finally:
        ray.shutdown()
    wall = time.perf_counter() - t0
    if results.errors:
        sys.exit(f"{label}: {len(results.errors)} trials failed")
    return sum(r.metrics["time_total_s"] for r in results), wall, list(results)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", default=str(REPO / "sweeps" / "scifact_pilot.yaml"))
    p.add_argument("--out", default="runs/early-stopping", help="storage and MLflow database of both runs")
    p.add_argument("--scheduler", default=None, help="JSON scheduler spec for the second run (default: plan's recommendation)")
    p.add_argument("--orders", type=int, default=20, help="arrival orders of the replay")
    p.add_argument("--test-metric", default="beir-scifact-test/nDCG@10")
    a = p.parse_args(argv)
    from ranksweep.sweeps.best import best
    from ranksweep.sweeps.plan import Curves, format_plan, plan
    from ranksweep.sweeps.runs import SweepReader, cell_label, count_trials
    from ranksweep.sweeps.spec import load_sweep

    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    sweep = load_sweep(a.spec)
    uri = f"sqlite:///{out / 'mlflow.db'}"
    grid_s, grid_wall, _ = run(Path(a.spec), out, "grid", {"name": "none"})
    curves = Curves.from_mlflow(uri, f"{sweep.experiment}-grid")
    pl = plan(curves, orders=a.orders)
    print(format_plan(pl))
    if a.scheduler:
        scheduler = json.loads(a.scheduler)
        predicted = None
    elif pl.recommended is not None:
        scheduler = pl.settings[pl.recommended].spec(curves.budget)
        predicted = pl.rows[pl.recommended].compute_fraction
    else:
        print("plan recommends no scheduler: nothing to compare")
        return 0
    label = scheduler["name"]
    sched_s, sched_wall, results = run(Path(a.spec), out, label, scheduler)
    spent = sum(r.metrics["docs_seen"] for r in results) / sum(c.budget for c in curves.trials)

    def picked(experiment: str) -> tuple[str, dict]:
        rows = best(experiment, uri, metric=sweep.fields.metric, mode=sweep.fields.mode, top=1)
        cell = rows[0]["settings"]
        return json.dumps(cell, sort_keys=True), {k: cell[k] for k in sweep.space.keys() if k in cell}  # in axis order

    grid_runs = count_trials(SweepReader(uri, f"{sweep.experiment}-grid").trials()).full

    def grid_mean(cell_key: str, metric: str) -> float:
        xs = [r.metrics[metric] for r in grid_runs if r.cell_key() == cell_key and metric in r.metrics]
        return sum(xs) / len(xs)

    print(f"\nscheduler {json.dumps(scheduler)} against the grid, {len(results)} trials each, "
          f"{sweep.fields.max_concurrent or 'all'} at once")
    print(f"{'':24} {'grid':>10} {label:>10} {'ratio':>8}")
    print(f"{'trial-seconds':24} {grid_s:>10.0f} {sched_s:>10.0f} {sched_s / grid_s:>8.3f}")
    print(f"{'wall-clock seconds':24} {grid_wall:>10.0f} {sched_wall:>10.0f} {sched_wall / grid_wall:>8.3f}")
    print(f"{'training documents':24} {1.0:>10.3f} {spent:>10.3f} {spent:>8.3f}"
          + (f"   (replay predicted {predicted:.3f})" if predicted is not None else ""))
    for lab, exp in (("grid", f"{sweep.experiment}-grid"), (label, f"{sweep.experiment}-{label}")):
        key, cell = picked(exp)
        print(f"{lab} picks {cell_label(cell)}: grid mean {sweep.fields.metric} {grid_mean(key, sweep.fields.metric):.4f}, "
              f"{a.test_metric} {grid_mean(key, a.test_metric):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
