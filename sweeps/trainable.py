"""One sweep trial as a Ray Tune function trainable around ``ranksweep.core.Trial``."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch

from ranksweep.core import Trial, TrialConfig
from ranksweep.search_spaces.space import apply

logger = logging.getLogger(__name__)


def resolve_trial(base: dict, cell: dict, seed: int) -> dict:
    """The trial-config dict of one cell and seed."""
    d = apply(base, cell)
    d["seed"] = seed
    return d


def train_trial(config: dict, *, base: dict, output_root: str, cpus: float, gpus: float) -> None:
    """Run (or resume) one trial, reporting metrics and a checkpoint at every evaluation.

    ``config`` holds ``params`` (the cell: dotted keys → values) and ``seed``; everything that is
    not searched (base trial, output root, resources) is bound with ``tune.with_parameters``.
    """
    from ray import tune

    cell, seed = config["params"], int(config.get("seed", 0))
    trial_id = tune.get_context().get_trial_id()
    d = resolve_trial(base, cell, seed)
    d["output_dir"] = str(Path(output_root) / trial_id)
    if gpus <= 0:
        d["num_threads"] = max(1, int(cpus))
        d["device"] = "cpu"
    cfg = TrialConfig.from_dict(d)
    trial = Trial(cfg)
    ckpt = tune.get_checkpoint()
    if ckpt:
        with ckpt.as_directory() as folder:
            trial.load_state_dict(torch.load(Path(folder) / "state.pt", weights_only=False))
        logger.info("trial %s resumed at %d docs", trial_id, trial.docs_seen)

    def report(metrics: dict, docs: int) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(trial.state_dict(), Path(tmp) / "state.pt")
            tune.report({**metrics, "output_dir": d["output_dir"]}, checkpoint=tune.Checkpoint.from_directory(tmp))

    trial.report = report
    trial.run()
