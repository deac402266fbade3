"""The ``ranksweep`` command: one ``main(args)`` per verb, listed in ``COMMANDS``.

Heavy libraries are imported inside the verbs, so ``ranksweep --help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable

logger = logging.getLogger("ranksweep")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("ir_datasets", "urllib3", "filelock", "faiss"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main_trial(args: list[str]) -> int:
    """ranksweep trial <trial.yaml> [--set key=value ...] [--output-dir DIR]"""
    p = argparse.ArgumentParser(prog="ranksweep trial", description="Run one distillation trial and print its metrics.")
    p.add_argument("config", help="trial YAML (see README: trial configuration)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value by dotted key, e.g. --set optim.lr=1e-4 (value parsed as YAML)")
    p.add_argument("--output-dir", help="write metrics, run files and per-query values here")
    p.add_argument("--json", action="store_true", help="print the final metrics as JSON")
    p.add_argument("-v", "--verbose", action="store_true")
    a = p.parse_args(args)
    _setup_logging(a.verbose)
    import yaml

    from ranksweep.core.config import ConfigError, TrialConfig, load_yaml, set_dotted

    try:  # the config's own errors say "invalid config"; every other expected error is handled by main()
        d = load_yaml(a.config)
        for kv in a.set:
            if "=" not in kv:
                raise ConfigError(f"--set {kv!r}: expected KEY=VALUE")
            k, v = kv.split("=", 1)
            set_dotted(d, k, yaml.safe_load(v))
        if a.output_dir:
            d["output_dir"] = a.output_dir
        cfg = TrialConfig.from_dict(d)
    except ConfigError as e:
        raise ConfigError(f"invalid config: {e}") from None
    from ranksweep.core import run_trial
    from ranksweep.core.evaluation import DIAMETER
    from ranksweep.core.training import ENTROPY

    def report(metrics: dict[str, float], docs: int) -> None:
        keys = [k for k in (f"dev/{cfg.eval.selection}", "train/loss", DIAMETER, ENTROPY, "train/docs_per_s") if k in metrics]
        logger.info("docs %d: %s", docs, "  ".join(f"{k}={metrics[k]:.4f}" for k in keys))

    from ranksweep.core.preflight import check_inputs

    check_inputs(cfg)  # every collection and model, before any stage is built
    final = run_trial(cfg, report=report)  # bad input or an unusable cache: main() prints one line; finished files stay
    if a.json:
        print(json.dumps(final, indent=1, sort_keys=True))
    else:
        width = max(len(k) for k in final)
        for k in sorted(final):
            print(f"{k:<{width}}  {final[k]:.4f}")
    return 0


def main_run(args: list[str]) -> int:
    """ranksweep run <sweep.yaml> [--resume] [--dry-run] [--address auto] [--tracking-uri URI]"""
    p = argparse.ArgumentParser(prog="ranksweep run", description="Run a sweep with Ray Tune, tracked in MLflow.")
    p.add_argument("spec", help="sweep YAML (see sweeps/*.yaml)")
    p.add_argument("--resume", action="store_true", help="continue a sweep whose driver stopped (Tuner.restore)")
    p.add_argument("--dry-run", action="store_true", help="resolve the space, print the trial count and cost; run nothing")
    p.add_argument("--address", default=None, help="Ray cluster address (auto: the cluster this node belongs to)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (overrides the spec)")
    p.add_argument("--docs-per-s", type=float, default=None, help="dry run: training throughput assumed per trial")
    p.add_argument("--top", type=int, default=5, help="best settings printed at the end")
    p.add_argument("-v", "--verbose", action="store_true")
    a = p.parse_args(args)
    _setup_logging(a.verbose)
    from ranksweep.sweeps.spec import SpecError, load_sweep

    try:
        overrides = {"tracking": {"uri": a.tracking_uri}} if a.tracking_uri else None
        if overrides:
            import yaml as _yaml

            raw = _yaml.safe_load(open(a.spec))
            overrides = {"tracking": {**(raw.get("tracking") or {}), "uri": a.tracking_uri}}
        sweep = load_sweep(a.spec, overrides)
    except SpecError as e:
        raise SpecError(f"invalid sweep: {e}") from None
    if a.dry_run:
        from ranksweep.sweeps.cost import dry_run_summary

        print(dry_run_summary(sweep, a.docs_per_s))
        return 0
    from ranksweep.core.errors import RanksweepError
    from ranksweep.sweeps.best import best, format_rows
    from ranksweep.sweeps.tuner import SweepInterrupted, run_sweep

    resume = f"ranksweep run {a.spec}" + (f" --tracking-uri {a.tracking_uri}" if a.tracking_uri else "") + \
        (f" --address {a.address}" if a.address else "")
    try:
        results = run_sweep(sweep, address=a.address, resume=a.resume)
    except SweepInterrupted as e:
        print(f"\nranksweep run: sweep {sweep.name!r} {e}", file=sys.stderr)
        if e.stage == "preparation":
            print(f"to start it: {resume}" + (" --resume" if a.resume else ""), file=sys.stderr)
        else:
            print(f"finished trials are in MLflow experiment {sweep.experiment!r} at {sweep.tracking_uri}; no best settings "
                  f"from a partial sweep\nto continue it: {resume} --resume", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"\nranksweep run: sweep {sweep.name!r} interrupted before it started; to start it: {resume}"
              + (" --resume" if a.resume else ""), file=sys.stderr)
        return 130
    errors = len(results.errors)
    print(f"\n{len(results)} trials, {errors} failed; MLflow experiment {sweep.experiment!r} at {sweep.tracking_uri}")
    try:
        rows = best(sweep.experiment, sweep.tracking_uri, metric=sweep.fields.metric, mode=sweep.fields.mode, top=a.top, sweep=sweep.name)
    except RanksweepError as e:  # MLflow away: the sweep itself is done, and its results are kept by Ray
        print(f"best settings: not read ({e})")
        return 0
    print(f"best settings by {sweep.fields.metric} (mean ± std over seeds):")
    print(format_rows(rows, sweep.fields.metric))
    print(f"\nreport: ranksweep report --experiment {sweep.experiment} --tracking-uri {sweep.tracking_uri} --out reports/{sweep.name}")
    return 0


def main_best(args: list[str]) -> int:
    """ranksweep best --experiment NAME [--metric M] [--filter F] [--group-by a,b] [--top N] [--format table|json|csv]"""
    p = argparse.ArgumentParser(prog="ranksweep best", description="Best settings of a sweep, from MLflow.")
    p.add_argument("--experiment", required=True)
    p.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    p.add_argument("--metric", default="dev/nDCG@10")
    p.add_argument("--mode", default="max", choices=["max", "min"])
    p.add_argument("--filter", default=None, help="MLflow filter string, e.g. \"params.`axis.loss` = 'kl'\"")
    p.add_argument("--group-by", default=None, help="comma-separated axes: dotted keys or the short names sampler, loss, T, g, L, "
                                                    "student, mix, lr; default: the whole cell")
    p.add_argument("--sweep", default=None, help="sweep (parent run) name; default: the latest")
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--format", default="table", choices=["table", "json", "csv"])
    p.add_argument("--include-stopped", action="store_true",
                   help="also rank trials stopped early, comparing every trial at the largest step all of them reached")
    a = p.parse_args(args)
    from ranksweep.sweeps.best import best, format_rows
    from ranksweep.sweeps.spec import absolute_uri

    rows = best(a.experiment, absolute_uri(a.tracking_uri), a.metric, a.mode, a.filter,
                a.group_by.split(",") if a.group_by else None, a.top, a.sweep, a.include_stopped)
    print(format_rows(rows, a.metric, a.format))
    return 0


def main_export(args: list[str]) -> int:
    """ranksweep export --experiment NAME (--trial RUN_NAME | --best [--metric M]) --out DIR [--mlflow] [--register NAME]"""
    p = argparse.ArgumentParser(prog="ranksweep export", description="A trial's kept final weights as a model folder "
                                "(sentence-transformers for a bi-encoder, transformers for a cross-encoder) with a model card.")
    p.add_argument("--experiment", required=True)
    p.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--trial", help="the trial's run name (as `ranksweep best` lists it) or run id")
    which.add_argument("--best", action="store_true", help="the best trial that trained its full budget, by --metric")
    p.add_argument("--metric", default=None, help="default: the sweep's selection metric")
    p.add_argument("--mode", default="max", choices=["max", "min"])
    p.add_argument("--sweep", default=None, help="sweep (parent run) name; default: the latest")
    p.add_argument("--out", required=True, help="a new (or empty) folder")
    p.add_argument("--mlflow", action="store_true", help="also log the folder to the trial's MLflow run as a model")
    p.add_argument("--register", default=None, metavar="NAME", help="register the logged model under NAME (implies --mlflow)")
    a = p.parse_args(args)
    from ranksweep.sweeps.export import export
    from ranksweep.sweeps.spec import absolute_uri

    r = export(a.experiment, absolute_uri(a.tracking_uri), a.out, a.trial, a.metric, a.mode, a.sweep, a.mlflow, a.register)
    print(f"exported {r['kind']} trial {r['name']} (run {r['run_id']}) to {r['out']}"
          + (f"; logged as {r['model_uri']}" if "model_uri" in r else "") + (f", registered as {a.register!r}" if a.register else ""))
    return 0


def main_report(args: list[str]) -> int:
    """ranksweep report --experiment NAME --out DIR [--metric M] [--margin 0.01] [--color-by AXIS]"""
    p = argparse.ArgumentParser(prog="ranksweep report",
                                description="Report of a sweep from MLflow: marginal effects per axis, entropy/diameter against "
                                            "effectiveness, TOST equivalence to the best cell, learning curves, parameter importance. "
                                            "Writes report.html (self-contained), report.md, report.json, figures/ and tables/.")
    p.add_argument("--experiment", required=True, help="MLflow experiment of the sweep")
    p.add_argument("--out", required=True, help="folder to write the report into")
    p.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    p.add_argument("--sweep", default=None, help="sweep (parent run) name; default: the latest")
    p.add_argument("--metric", default=None,
                   help="effectiveness metric (default: the selection measure on the first eval collection, e.g. beir-scifact-test/nDCG@10)")
    p.add_argument("--margin", type=float, default=0.01, help="absolute TOST equivalence margin in metric points (default 0.01)")
    p.add_argument("--alpha", type=float, default=0.05, help="TOST level (default 0.05)")
    p.add_argument("--level", type=float, default=0.95, help="confidence level of the marginal intervals (default 0.95)")
    p.add_argument("--top-k", type=int, default=5, help="trials drawn in the learning curves besides those stopped early")
    p.add_argument("--color-by", default=None, help="axis colouring the scatter plots (default: sampler.name when searched)")
    p.add_argument("--min-importance-trials", type=int, default=10, help="finished trials needed for parameter importance")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("-v", "--verbose", action="store_true")
    a = p.parse_args(args)
    _setup_logging(a.verbose)
    import os

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # ours covers the whole read
    from pathlib import Path

    from ranksweep.sweeps.report import report
    from ranksweep.sweeps.spec import absolute_uri

    # before anything is read (and without creating it: a failed report leaves no folder), a folder that cannot be made
    below = Path(a.out).absolute()
    while not below.exists():
        below = below.parent
    if not below.is_dir() or not os.access(below, os.W_OK | os.X_OK):
        why = "not a directory" if not below.is_dir() else "not writable"
        print(f"ranksweep report: --out {a.out}: cannot create the folder ({below} is {why})", file=sys.stderr)
        return 2
    rep = report(a.experiment, a.out, absolute_uri(a.tracking_uri), a.sweep, a.metric, a.margin, a.alpha, a.level, a.top_k,
                 a.color_by, a.min_importance_trials, progress=not a.no_progress)
    eq = rep.data["equivalence"]
    print(f"report of sweep {rep.data['sweep']!r}: {rep.files['html']}")
    print(f"  markdown {rep.files['md']}, numbers {rep.files['json']}, {sum(1 for k in rep.files if k not in ('html', 'md', 'json'))} figures")
    if eq.get("best"):
        print(f"  best cell by {eq['metric']}: {eq['best']} ({eq['best_mean']:.4f}); equivalent within ±{eq['margin']:g}: "
              f"{', '.join(eq['equivalent_to_best']) or 'none'}")
    else:
        print(f"  equivalence: {eq.get('refused')}")
    return 0


def main_plan(args: list[str]) -> int:
    """ranksweep plan --experiment NAME [--metric M] [--format table|json] [--for SPEC --gpus N --docs-per-s R]"""
    p = argparse.ArgumentParser(prog="ranksweep plan",
                                description="Replay early-stopping schedulers (ASHA, asynchronous HyperBand, the median rule; Ray "
                                            "Tune's own classes) over the learning curves of a sweep run to its full budget: the "
                                            "compute each would have spent and whether it keeps the best cell.")
    p.add_argument("--experiment", help="MLflow experiment of the pilot sweep")
    p.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    p.add_argument("--sweep", default=None, help="sweep (parent run) name; default: the latest")
    p.add_argument("--metric", default=None, help="selection metric (default: the sweep's)")
    p.add_argument("--curves", default=None, help="read the curves from this file (written by --save-curves) instead of MLflow")
    p.add_argument("--save-curves", default=None, help="also write the curves read from MLflow to this JSON file")
    p.add_argument("--orders", type=int, default=20, help="random arrival orders each setting is averaged over (default 20)")
    p.add_argument("--concurrency", type=int, default=None, help="trials training at once (default: the sweep's max_concurrent)")
    p.add_argument("--top-k", type=int, default=3, help="top cells whose survival is counted (default 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the arrival orders")
    p.add_argument("--min-best-kept", type=float, default=0.0,
                   help="recommend only settings that keep the best cell itself in at least this fraction of the orders "
                        "(default 0: within seed noise of it is enough)")
    p.add_argument("--timing", default=None, choices=["seconds", "docs"],
                   help="when results arrive: as long after a trial's start as recorded (default when MLflow has the times), "
                        "or every trial at the same speed")
    p.add_argument("--format", default="table", choices=["table", "json"])
    p.add_argument("--for", dest="target", default=None, metavar="SPEC", help="a sweep YAML to cost with and without the recommendation")
    p.add_argument("--gpus", type=float, default=8, help="with --for: GPUs of the cluster (default 8)")
    p.add_argument("--docs-per-s", type=float, default=3000.0, help="with --for: training documents per second of a trial (default 3000)")
    a = p.parse_args(args)
    from ranksweep.sweeps.plan import Curves, PlanError, cost_lines, format_plan, plan
    from ranksweep.sweeps.spec import absolute_uri, load_sweep

    if a.gpus <= 0 or a.docs_per_s <= 0:
        raise PlanError("--gpus and --docs-per-s must be > 0")
    if not 0 <= a.min_best_kept <= 1:
        raise PlanError(f"--min-best-kept: a fraction in [0, 1], got {a.min_best_kept}")
    target = load_sweep(a.target) if a.target else None
    if a.curves:
        curves = Curves.load(a.curves)
    elif a.experiment:
        curves = Curves.from_mlflow(absolute_uri(a.tracking_uri), a.experiment, a.sweep, a.metric)
    else:
        raise PlanError("give --experiment NAME (or --curves FILE)")
    if a.save_curves:
        curves.save(a.save_curves)
    result = plan(curves, orders=a.orders, concurrency=a.concurrency, top_k=a.top_k, seed=a.seed, min_best_kept=a.min_best_kept,
                  timing=a.timing)
    print(format_plan(result, a.format))
    if target is not None and a.format == "table":
        print()
        print("\n".join(cost_lines(result, target, a.gpus, a.docs_per_s)))
    return 0


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "trial": main_trial,
    "run": main_run,
    "best": main_best,
    "report": main_report,
    "export": main_export,
    "plan": main_plan,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: ranksweep <command> [options]\n\ncommands:")
        for name, fn in COMMANDS.items():
            print(f"  {name:<8} {(fn.__doc__ or '').strip().splitlines()[0]}")
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        from ranksweep.core.registry import unknown_name_message

        print(f"ranksweep: {unknown_name_message('command', cmd, list(COMMANDS))}", file=sys.stderr)
        return 2
    from ranksweep.core.errors import RanksweepError

    try:
        return COMMANDS[cmd](rest)
    except RanksweepError as e:  # bad input or an unusable environment: one line, no traceback; finished work stays
        print(f"ranksweep {cmd}: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
