"""The ``ranksweep`` command: one ``main(args)`` per verb, listed in ``COMMANDS``.

Heavy libraries are imported inside the verbs, so ``ranksweep --help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable

logger = logging.getLogger("ranksweep")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("ir_datasets", "bm25s", "urllib3", "filelock", "faiss"):
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

    try:
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
        print(f"ranksweep trial: invalid config: {e}", file=sys.stderr)
        return 2
    from ranksweep.core import run_trial

    def report(metrics: dict[str, float], docs: int) -> None:
        keys = [k for k in (f"dev/{cfg.eval.selection}", "train/loss", "probe/diameter", "train/teacher_entropy", "train/docs_per_s") if k in metrics]
        logger.info("docs %d: %s", docs, "  ".join(f"{k}={metrics[k]:.4f}" for k in keys))

    final = run_trial(cfg, report=report)
    if a.json:
        print(json.dumps(final, indent=1, sort_keys=True))
    else:
        width = max(len(k) for k in final)
        for k in sorted(final):
            print(f"{k:<{width}}  {final[k]:.4f}")
    return 0


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "trial": main_trial,
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
    return COMMANDS[cmd](rest)


if __name__ == "__main__":
    sys.exit(main())
