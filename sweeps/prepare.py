"""Shared preparation of a sweep as Ray work: every shard a Ray task on the cluster's workers.

``RayExecutor`` is the core's executor interface on Ray: ``map(fn, shards, cpus=…, gpus=…)``
submits one task per shard with those resources and waits for them, so tokenizing, BM25
retrieval, embeddings and teacher scoring run wherever Ray finds room (GPU tasks on GPU
workers, the autoscaler adding nodes for them). Ray does the scheduling and the retries; the
shards write into the stage being built on shared storage, and the driver only orchestrates.

``prepare_shared`` runs one preparation per distinct data configuration of the space (its configs'
``shared_data_key``: collections, candidates, teacher), each covering every sampler and student
model of the space, and returns the prepared folders that trials open, by that key.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional, TypeVar

from ranksweep.core import PrepareOptions, prepare
from ranksweep.core.config import TrialConfig
from ranksweep.core.data.cache import cache_location
from ranksweep.core.preflight import check_inputs
from ranksweep.core.progress import Progress
from ranksweep.search_spaces import Axis

from .spec import SpecError, Sweep

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB (``VmHWM``; unlike ``ru_maxrss`` it does not carry a parent's peak
    across fork and exec); 0 where ``/proc`` is absent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _run_shard(fn: Callable[[Any], Any], item: Any) -> tuple[Any, str, str, float, float]:
    import ray

    progress = logging.getLogger("ranksweep.core.progress")
    if not progress.handlers:  # a Ray worker logs nothing below WARNING: the shard's progress lines reach the driver
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        progress.addHandler(handler)
        progress.setLevel(logging.INFO)
        progress.propagate = False
    t0 = time.perf_counter()
    out = fn(item)
    return out, ray.get_runtime_context().get_node_id(), socket.gethostname(), time.perf_counter() - t0, peak_rss_mb()


class RayExecutor:
    """Runs each shard as a Ray task (``num_cpus``/``num_gpus``); ``placements`` records where each ran."""

    def __init__(self, retries: int = 3) -> None:
        self.retries = retries
        self.placements: list[dict[str, Any]] = []

    def map(self, fn: Callable[[T], R], items: Sequence[T], *, cpus: float = 1, gpus: float = 0, label: str = "") -> list[R]:
        import ray

        if not items:
            return []
        label = label or fn.__name__
        # SPREAD: shards are data-parallel, so every node's CPUs and disk bandwidth take a share
        task = ray.remote(_run_shard).options(num_cpus=cpus, num_gpus=gpus, max_retries=self.retries, retry_exceptions=False,
                                              scheduling_strategy="SPREAD", name=f"prepare:{label.split(' (')[0]}")
        refs = [task.remote(fn, x) for x in items]
        index = {r: i for i, r in enumerate(refs)}
        results: list[Any] = [None] * len(refs)
        pending, done_n, t0 = list(refs), 0, time.perf_counter()
        progress = Progress(label, len(refs), "shards", every=0.0, log=logger)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=30)
            for r in ready:
                out, node, host, seconds, peak_mb = ray.get(r)
                i = index[r]
                results[i] = out
                self.placements.append({"label": label, "shard": i, "node_id": node, "host": host, "seconds": seconds,
                                        "cpus": cpus, "gpus": gpus, "peak_rss_mb": peak_mb})
                done_n += 1
            progress.done = done_n
            if ready and (done_n == len(refs) or done_n % max(1, len(refs) // 10) == 0):
                logger.info(progress.line())  # the stage across its shards, wherever they run: done/total, rate, ETA
            elif not ready:
                logger.info("%s: %d/%d shards done, the others running or waiting for resources (%.0f s)", label, done_n,
                            len(refs), time.perf_counter() - t0)
        return results


def prepare_options(sweep: Sweep) -> PrepareOptions:
    """The sweep's ``prepare`` section, with defaults taken from its per-trial resources."""
    p = sweep.fields.prepare
    r = sweep.fields.resources
    return PrepareOptions(
        cpus=int(p.cpus if p.cpus is not None else max(1, int(r.cpu))),
        gpus=float(p.gpus if p.gpus is not None else (1.0 if r.gpu > 0 else 0.0)),
        shard_docs=p.shard_docs, shard_queries=p.shard_queries, shard_pairs=p.shard_pairs)


def data_axes(sweep: Sweep) -> list[Axis]:
    """The axes whose values change a trial's prepared data, found by asking the resolved configs
    (``TrialConfig.shared_data_key``) rather than by the axes' names."""
    base = sweep.base_config().shared_data_key
    out = []
    for a in sweep.space.axes:
        probes = list(a.values) if a.categorical else [int(x) if a.dist in ("int", "logint") else x for x in (a.low, a.high)]
        if any(sweep.trial({a.key: v}).shared_data_key != base for v in probes):
            if not a.categorical:
                raise SpecError(f"space: axis {a.key!r} changes shared data and must be categorical")
            out.append(a)
    return out


def data_combos(sweep: Sweep) -> list[tuple[dict, TrialConfig]]:
    """One ``(assignment, config)`` per distinct data configuration of the space, distinct by ``shared_data_key``.

    A conditional data axis (``when``) is absent from the cells where it does not apply, which then
    use the base config's data: a grid's combinations are read off its cells; for a sampled search
    each conditional axis also contributes its absence. Assignments that resolve to the same data
    (an axis value equal to the base's) share one preparation.
    """
    axes = data_axes(sweep)
    if sweep.fields.search == "grid":
        combos = [{a.key: cell[a.key] for a in axes if a.key in cell} for cell in sweep.space.grid()]
    else:
        combos = [{}]
        for a in axes:
            combos = [{**c, a.key: v} for c in combos for v in a.values] + (combos if a.when else [])
    unique: dict[str, tuple[dict, TrialConfig]] = {}
    for c in combos:
        cfg = sweep.trial(c)
        unique.setdefault(cfg.shared_data_key, (c, cfg))
    return list(unique.values())


def check_sweep_inputs(sweep: Sweep) -> None:
    """Every collection, model and teacher file of every data configuration (and every student of the space),
    opened and parsed as far as its first records before Ray starts or any stage is built."""
    students = {v for a in sweep.space.axes if a.key == "student.model" and a.categorical for v in a.values}
    check_inputs(*(cfg for _, cfg in data_combos(sweep)), students=students)


def prepare_shared(sweep: Sweep, executor: Optional[Any] = None) -> dict[str, str]:
    """Build (or find) the shared data of every data configuration of the sweep.

    Returns ``{shared_data_key: prepared folder}``. Each preparation covers every sampler, every student
    model and negatives mixing wherever the space uses them.
    """
    samplers, students, mix = set(), set(), False
    for a in sweep.space.axes:
        if a.key == "sampler.name":
            samplers |= set(a.values or ())
        if a.key == "student.model":
            if not a.categorical:
                raise SpecError("space: axis 'student.model' must be categorical (each model's tokens are prepared)")
            students |= set(a.values)
        if a.key == "augment.negatives_mix":
            mix = True
    options = prepare_options(sweep)
    out = {}
    for c, cfg in data_combos(sweep):
        logger.info("preparing shared data %s", c or "(base)")
        t0 = time.perf_counter()
        p = prepare(cfg, samplers=samplers or None, negatives_mix=mix or cfg.augment.negatives_mix > 0,
                    students=students or None, executor=executor, options=options)
        logger.info("shared data ready in %.0f s: %s", time.perf_counter() - t0, p.folder)
        out[cfg.shared_data_key] = str(p.folder)
    return out


def shared_cache_path(configured: Optional[str]) -> str:
    """The cache folder as the user gave it (``data.cache_dir``, ``RANKSWEEP_CACHE`` or the default), unresolved."""
    return str(Path(cache_location(configured)).expanduser())


def check_shared(paths: dict[str, str], timeout: float = 60.0) -> None:
    """Fail before any work unless every alive node sees ``paths`` (``{what: path}``) as the driver does.

    On a multi-node cluster the cache and the sweep's storage must be one shared file system
    mounted at the same path everywhere; a node-local path would leave trials on other nodes
    without their data. Each path gets a marker file that a task on every node must read back.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    here = ray.get_runtime_context().get_node_id()
    others = [n for n in nodes if n["NodeID"] != here]
    if not others:
        return
    local = {what: path for what, path in paths.items() if "://" not in path}
    for what, path in local.items():
        if not Path(path).expanduser().is_absolute():
            raise SpecError(f"{what}: {path!r} is a relative path; on a cluster of {len(nodes)} nodes it must be an absolute "
                            "path on shared storage (NFS/EFS) mounted at the same place on every node")
    token = f"{os.getpid()}-{time.time_ns()}"
    markers = {}
    for what, path in local.items():
        d = Path(path).expanduser()
        d.mkdir(parents=True, exist_ok=True)
        m = d / f".ranksweep-shared-check-{token}"
        m.write_text(token)
        markers[what] = str(m)

    @ray.remote(num_cpus=0)
    def look(markers: dict[str, str], token: str) -> dict[str, bool]:
        return {w: Path(p).exists() and Path(p).read_text() == token for w, p in markers.items()}

    try:
        refs = {n["NodeManagerAddress"] + " " + n["NodeID"][:8]: look.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(markers, token) for n in others}
        for node, ref in refs.items():
            seen = ray.get(ref, timeout=timeout)
            for what, ok in seen.items():
                if not ok:
                    raise SpecError(f"{what}: {paths[what]!r} is not shared storage: node {node} does not see what the driver "
                                    "wrote there; use a file system mounted at the same path on every node (NFS/EFS)")
    finally:
        for m in markers.values():
            Path(m).unlink(missing_ok=True)
