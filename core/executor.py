"""Where preparation work runs: a ``map`` over shards, with the resources each shard needs.

The core describes preparation as pure, picklable shard functions (tokenize documents
``[a, b)``, retrieve BM25 for queries ``[a, b)``, score pairs ``[a, b)``, …) whose outputs are files
inside the stage being built. An executor only decides where those calls run:

- ``LocalExecutor`` (here): in this process, one after another. A notebook, a test or the
  ``ranksweep trial`` command need nothing else.
- ``ranksweep.sweeps.prepare.RayExecutor``: each call becomes a Ray task with ``num_cpus`` /
  ``num_gpus``, so the cluster's workers (and their GPUs) do the work and Ray does the scheduling.

The core never imports Ray: an executor is anything with this ``map``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from .progress import Progress

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class Executor(Protocol):
    def map(self, fn: Callable[[T], R], items: Sequence[T], *, cpus: float = 1, gpus: float = 0, label: str = "") -> list[R]:
        """``[fn(x) for x in items]``, each call given ``cpus`` CPUs and ``gpus`` GPUs; results in order."""
        ...


class LocalExecutor:
    """Runs every call in this process, in order (``cpus``/``gpus`` are hints the calls read themselves)."""

    def map(self, fn: Callable[[T], R], items: Sequence[T], *, cpus: float = 1, gpus: float = 0, label: str = "") -> list[R]:
        progress = Progress(label or fn.__name__, len(items), "shards", log=logger) if len(items) > 1 else None
        out = []
        for x in items:
            out.append(fn(x))
            if progress is not None:
                progress.update()
        return out


LOCAL = LocalExecutor()
