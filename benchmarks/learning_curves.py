"""Learning curves of a shipped sweep's trial settings: does the student beat its own start?

Each run resolves one cell of a sweep spec (``--cell key=value``), applies ``--set`` overrides, and
trains it in this process with an evaluation before the first step (docs 0), printing dev
``eval.selection`` at every evaluation and the share of the trial's time spent evaluating. A
``--grid key=v1,v2`` axis repeats the run over its values (several ``--grid`` make a product).
Results are appended as JSON lines to ``--out``.

    python benchmarks/learning_curves.py sweeps/quickstart.yaml --cell sampler.name=random --cell loss=kl \
        --set budget_docs=8192 --set eval_every_docs=1024 --grid optim.lr=1e-4,3e-4 --seeds 0 1
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ranksweep.core.config import apply, resolve_trial  # noqa: E402
from ranksweep.core.trial import Trial  # noqa: E402
from ranksweep.sweeps.spec import load_sweep  # noqa: E402


def _kv(items: list[str]) -> dict:
    out = {}
    for kv in items:
        k, v = kv.split("=", 1)
        out[k] = yaml.safe_load(v)
    return out


def run_one(base: dict, cell: dict, seed: int) -> dict:
    cfg = resolve_trial(base, cell, seed)
    t0 = time.perf_counter()
    trial = Trial(cfg)
    setup = time.perf_counter() - t0
    trial.run()
    total = time.perf_counter() - t0
    sel = f"dev/{cfg.eval.selection}"
    curve = [(int(m["docs_seen"]), m[sel]) for m in trial.history]
    eval_s = sum(m["eval_seconds"] for m in trial.history)
    final = trial.history[-1]
    return {
        "cell": cell, "seed": seed, "curve": curve, "setup_s": setup, "total_s": total, "train_s": trial.trainer.train_time,
        "eval_s": eval_s, "eval_share": eval_s / max(total - setup, 1e-9),
        "test": {k: v for k, v in final.items() if "/" in k and k.split("/")[0] not in ("train", "probe", "dev", "teacher", "bm25")},
        "docs_per_s": final.get("train/docs_per_s"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("spec")
    p.add_argument("--cell", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--out", default="runs/learning_curves.jsonl")
    a = p.parse_args(argv)
    sweep = load_sweep(a.spec)
    base = apply(sweep.base, {**_kv(a.set), "eval.at_start": True})
    axes = [(k, [yaml.safe_load(v) for v in vs.split(",")]) for k, vs in (g.split("=", 1) for g in a.grid)]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    for values in itertools.product(*(vs for _, vs in axes)):
        cell = {**_kv(a.cell), **{k: v for (k, _), v in zip(axes, values)}}
        for seed in a.seeds:
            r = run_one(base, cell, seed)
            r["overrides"] = _kv(a.set)
            with open(a.out, "a") as f:
                f.write(json.dumps(r) + "\n")
            c = r["curve"]
            print(f"{cell} seed={seed}: " + " ".join(f"{d}:{v:.3f}" for d, v in c)
                  + f" | gain {c[-1][1] - c[0][1]:+.3f}  train {r['train_s']:.0f}s eval {r['eval_s']:.0f}s "
                  f"({100 * r['eval_share']:.0f}%) setup {r['setup_s']:.0f}s  {r['test']}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
