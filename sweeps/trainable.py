"""One sweep trial as a Ray Tune function trainable around ``ranksweep.core.Trial``."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch

from ranksweep.core import Trial, TrialConfig
from ranksweep.search_spaces.space import apply

from .prepare import combo_key

logger = logging.getLogger(__name__)

#: the trial's files (metrics, run files, per-query values), in its Ray working directory (the
#: trainable's current directory): Ray uploads that directory to the trial's folder in the sweep's
#: storage at every checkpoint (``SyncConfig(sync_artifacts=True)``), and the driver reads them
#: from there for MLflow, whether storage is a shared path or a URI
OUTPUTS = "outputs"


def resolve_trial(base: dict, cell: dict, seed: int) -> dict:
    """The trial-config dict of one cell and seed."""
    d = apply(base, cell)
    d["seed"] = seed
    return d


def train_trial(config: dict, *, base: dict, prepared: dict[str, str], axes: list[str], cpus: float, gpus: float) -> None:
    """Run (or resume) one trial, reporting metrics and a checkpoint at every evaluation.

    ``config`` holds ``params`` (the cell: dotted keys → values) and ``seed``; everything that is
    not searched (base trial, the prepared data of each data configuration, resources) is bound
    with ``tune.with_parameters``. The trial opens the folder its driver prepared and never
    builds shared data.
    """
    import ray
    from ray import tune

    cell, seed = config["params"], int(config.get("seed", 0))
    ctx = tune.get_context()
    d = resolve_trial(base, cell, seed)
    d["output_dir"] = str(Path.cwd() / OUTPUTS)
    if gpus <= 0:
        d["num_threads"] = max(1, int(cpus))
        d["device"] = "cpu"
    else:
        d["device"] = "cuda"  # a GPU trial never falls back to the CPU: resolve_device raises if CUDA is unusable here
    cfg = TrialConfig.from_dict(d)
    trial = Trial(cfg, prepared[combo_key(cell, axes)])
    restored = 0
    ckpt = tune.get_checkpoint()
    if ckpt:
        with ckpt.as_directory() as folder:
            trial.load_state_dict(torch.load(Path(folder) / "state.pt", weights_only=False))
        restored = trial.docs_seen
        logger.info("trial %s resumed at %d docs", ctx.get_trial_id(), restored)
    node = ray.get_runtime_context().get_node_id()

    def report(metrics: dict, docs: int) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(trial.state_dict(), Path(tmp) / "state.pt")
            tune.report({**metrics, "node_id": node, "restored_docs": restored}, checkpoint=tune.Checkpoint.from_directory(tmp))

    trial.report = report
    trial.run()
