"""One sweep trial as a Ray Tune function trainable around ``ranksweep.core.Trial``."""

from __future__ import annotations

import gc
import logging
import tempfile
from pathlib import Path

import torch

from ranksweep.core import Trial
from ranksweep.core.config import resolve_trial

from .runs import OUTPUTS

logger = logging.getLogger(__name__)


def share_gpu(gpus: float) -> None:
    """A trial holding a fraction of a GPU (``resources.gpu < 1``) may allocate that fraction of its memory: Ray
    places several such trials on one device (each sees it as ``cuda:0``) but does not divide its memory, and
    the caching allocator of one growing trial would otherwise take its neighbours' headroom."""
    if 0 < gpus < 1 and torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(gpus, 0)


def train_trial(config: dict, *, base: dict, prepared: dict[str, str], cpus: float, gpus: float) -> None:
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
    # a GPU trial never falls back to the CPU: resolve_device raises if CUDA is unusable here
    placement = {"device": "cpu", "num_threads": max(1, int(cpus))} if gpus <= 0 else {"device": "cuda"}
    cfg = resolve_trial(base, cell, seed, output_dir=str(Path.cwd() / OUTPUTS), **placement)
    share_gpu(gpus)
    trial = Trial(cfg, prepared[cfg.shared_data_key])
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
            torch.save(trial.state_dict(), Path(tmp) / "state.pt")  # noqa: F821 (deleted only after run() returns)
            tune.report({**metrics, "node_id": node, "restored_docs": restored}, checkpoint=tune.Checkpoint.from_directory(tmp))

    trial.report = report
    trial.run()
    # collect the trial's object graph (model, optimizer, memory maps, indexes) now, while the function still runs,
    # not while Ray tears the actor down: a weakref callback interrupted by that teardown printed a traceback
    del trial, report
    gc.collect()
