"""Sweep specification: base trial, search space, search, scheduler, resources, tracking.

Validated once, before Ray starts; every error names the field::

    name: quickstart
    base: trials/scifact_bi.yaml        # a trial YAML (relative to this file) or an inline mapping
    trial: {budget_docs: 512}           # overrides on top of base
    space: sampler_loss_temperature      # a shipped space, a path, or an inline {axes: ...}
    search: grid                         # grid | optuna | random
    seeds: 1                             # repeats per cell (an int n = seeds 0..n-1, or a list)
    scheduler: {name: asha, grace_docs: 256, reduction_factor: 2}
    resources: {cpu: 1, gpu: 0}
    tracking: {uri: sqlite:///mlflow.db, experiment: ranksweep-quickstart}
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from ranksweep.core.errors import RanksweepError
from ranksweep.core import metric_keys
from ranksweep.core.config import ConfigError, TrialConfig, build_dataclass, load_yaml, resolve_trial
from ranksweep.search_spaces import SearchSpace, SpaceError, load_space

from .runs import sqlite_path


class SpecError(RanksweepError, ValueError):
    """A sweep spec is invalid; the message names the field."""


@dataclass(frozen=True)
class SchedulerSpec:
    name: Literal["none", "asha", "median", "hyperband"] = field(default="asha", metadata={"help": "early stopping"})
    grace_docs: Optional[int] = field(default=None, metadata={"help": "docs seen before a trial can be stopped (default: eval_every_docs)"})
    reduction_factor: float = field(default=2.0, metadata={"help": "ASHA/HyperBand halving rate"})
    brackets: int = field(default=1, metadata={"help": "ASHA's brackets: more than 1 is asynchronous HyperBand"})


@dataclass(frozen=True)
class ResourceSpec:
    cpu: float = field(default=1.0, metadata={"help": "CPUs per trial (also torch's thread count)"})
    gpu: float = field(default=0.0, metadata={"help": "GPU (fraction) per trial"})


@dataclass(frozen=True)
class PrepareSpec:
    cpus: Optional[int] = field(default=None, metadata={"help": "CPUs of a preparation task: BM25 threads (default: resources.cpu)"})
    gpus: Optional[float] = field(default=None, metadata={"help": "GPUs of a neural preparation task (default: 1 when trials use GPUs, else 0)"})
    shard_docs: int = field(default=500_000, metadata={"help": "documents per tokenizing / embedding / dense-search task"})
    shard_queries: int = field(default=50_000, metadata={"help": "queries per BM25 retrieval / pair-scoring task"})
    shard_pairs: int = field(default=2_000_000, metadata={"help": "(query, document) pairs per neural teacher task"})


@dataclass(frozen=True)
class TrackingSpec:
    uri: str = field(default="sqlite:///mlflow.db", metadata={"help": "MLflow tracking URI (relative sqlite paths resolve against the working directory)"})
    experiment: Optional[str] = field(default=None, metadata={"help": "MLflow experiment (default: ranksweep-<name>)"})
    flush_timeout: float = field(default=600.0, metadata={"help": "seconds the end of a sweep waits for MLflow writes held back "
                                                                  "while the tracking server was away"})


@dataclass(frozen=True)
class SweepFields:
    name: str = field(metadata={"help": "sweep name (Ray experiment and MLflow parent run)"})
    base: Any = field(default=None, metadata={"help": "trial YAML path or inline trial mapping"})
    trial: dict = field(default_factory=dict, metadata={"help": "trial overrides on top of base"})
    space: Any = field(default=None, metadata={"help": "search space: shipped name, YAML path or inline mapping"})
    search: Literal["grid", "optuna", "random"] = field(default="grid", metadata={"help": "search algorithm"})
    num_samples: int = field(default=1, metadata={"help": "trials drawn by optuna/random"})
    seeds: Any = field(default=1, metadata={"help": "repeats per grid cell: n or a list of seeds"})
    metric: str = field(default="dev/nDCG@10", metadata={"help": "selection metric (as reported)"})
    mode: Literal["max", "min"] = field(default="max", metadata={"help": "maximise or minimise the metric"})
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec, metadata={"help": "early stopping"})
    resources: ResourceSpec = field(default_factory=ResourceSpec, metadata={"help": "per trial"})
    max_concurrent: Optional[int] = field(default=None, metadata={"help": "trials at once (default: as resources allow)"})
    max_pending_trials: Optional[int] = field(default=None, metadata={"help": "pending trials Ray keeps queued (raise it so the autoscaler sees demand)"})
    storage: str = field(default="runs/ray", metadata={"help": "Ray storage: a path (shared storage on a cluster) or a URI (s3://…)"})
    prepare: PrepareSpec = field(default_factory=PrepareSpec, metadata={"help": "shared-data preparation tasks"})
    tracking: TrackingSpec = field(default_factory=TrackingSpec, metadata={"help": "MLflow"})
    retries: int = field(default=1, metadata={"help": "times a failing trial is retried before it is recorded as failed"})
    keep_weights: Any = field(default=1, metadata={"help": "final weights logged to MLflow (for `ranksweep export`): all | none | k, "
                                                           "the k best trials that trained their full budget, by the metric"})
    seed: int = field(default=0, metadata={"help": "seed of the search algorithm"})


@dataclass
class Sweep:
    """A validated sweep: the spec fields, the resolved base trial dict and the search space."""

    fields: SweepFields
    base: dict
    space: SearchSpace
    seeds: list[int]
    source: Optional[Path] = None
    raw: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.fields.name

    @property
    def experiment(self) -> str:
        return self.fields.tracking.experiment or f"ranksweep-{self.name}"

    @property
    def tracking_uri(self) -> str:
        return absolute_uri(self.fields.tracking.uri)

    @property
    def storage(self) -> str:
        """Where Ray keeps the sweep: an absolute folder, or a pyarrow URI.

        An ``s3://`` URI gets ``allow_delayed_open=true`` unless it sets it: pyarrow then writes a
        small file (a checkpoint's metadata, the experiment state) with one PUT instead of a
        multipart upload, fewer requests per sync, and it works with S3-compatible servers whose
        CompleteMultipartUpload answer pyarrow's AWS SDK rejects (moto's, with pyarrow 25).
        """
        s = self.fields.storage
        if "://" not in s:
            return str(Path(s).expanduser().resolve())
        if s.startswith("s3://") and "allow_delayed_open=" not in s:
            s += ("&" if "?" in s else "?") + "allow_delayed_open=true"
        return s

    def base_config(self) -> TrialConfig:
        return TrialConfig.from_dict(self.base)

    def trial_count(self) -> int:
        if self.fields.search == "grid":
            return len(self.space.grid()) * len(self.seeds)
        return self.fields.num_samples


def absolute_uri(uri: str) -> str:
    """``sqlite:///relative.db`` → ``sqlite:////abs/path/relative.db`` (workers and resumes agree)."""
    db = sqlite_path(uri)
    if db is not None and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(db.resolve())
    return uri


def reported_metrics(cfg: TrialConfig) -> set[str]:
    """Keys a trial of ``cfg`` reports at every evaluation (what a scheduler can act on): ``core.metric_keys``."""
    return set(metric_keys(cfg))


def load_sweep(source: str | os.PathLike | dict, overrides: Optional[dict] = None) -> Sweep:
    """Parse and validate a sweep spec (a YAML path or a dict)."""
    if isinstance(source, dict):
        raw, folder, path = copy.deepcopy(source), Path.cwd(), None
    else:
        path = Path(source)
        try:
            raw = load_yaml(path)
        except ConfigError as e:
            raise SpecError(str(e)) from None
        folder = path.resolve().parent
    raw.update(overrides or {})
    try:
        f = build_dataclass(SweepFields, raw, "")
    except ConfigError as e:
        raise SpecError(str(e)) from None
    # base trial
    if f.base is None:
        base: dict = {}
    elif isinstance(f.base, str):
        bp = (folder / f.base) if not Path(f.base).is_absolute() else Path(f.base)
        try:
            base = load_yaml(bp)
        except ConfigError as e:
            raise SpecError(f"base: {e}") from None
    elif isinstance(f.base, dict):
        base = copy.deepcopy(f.base)
    else:
        raise SpecError(f"base: expected a trial YAML path or mapping, got {f.base!r}")
    base = _merge(base, f.trial)
    base.pop("seed", None)
    base.pop("output_dir", None)
    try:
        cfg = TrialConfig.from_dict(base)
    except ConfigError as e:
        raise SpecError(f"base trial: {e}") from None
    # space
    try:
        if f.space is None:
            raise SpecError("space: a sweep needs a search space (a shipped name, a YAML path or an inline mapping)")
        if isinstance(f.space, dict):
            space = SearchSpace.from_dict(f.space, base, name=f"{f.name}.space")
        else:
            sp = folder / f.space if (folder / str(f.space)).exists() else f.space
            space = load_space(sp, base)
    except SpaceError as e:
        raise SpecError(f"space: {e}") from None
    # seeds
    seeds = list(range(f.seeds)) if isinstance(f.seeds, int) and not isinstance(f.seeds, bool) else f.seeds
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise SpecError(f"seeds: expected a positive count or a list of integer seeds, got {f.seeds!r}")
    if f.search != "grid" and len(seeds) > 1:
        raise SpecError("seeds: repeats per cell need search: grid (optuna/random draw single trials; use num_samples)")
    if f.search == "grid":
        try:
            cells = space.grid()
        except SpaceError as e:
            raise SpecError(f"space: {e}") from None
        for cell in cells:
            try:
                resolve_trial(base, cell)
            except ConfigError as e:
                raise SpecError(f"space: cell {cell} is not a valid trial: {e}") from None
    if f.num_samples < 1:
        raise SpecError(f"num_samples: must be >= 1, got {f.num_samples}")
    if f.metric not in reported_metrics(cfg):
        raise SpecError(f"metric: {f.metric!r} is not reported at every evaluation; reported: {sorted(reported_metrics(cfg))}")
    if f.resources.cpu <= 0 or f.resources.gpu < 0:
        raise SpecError(f"resources: cpu must be > 0 and gpu >= 0, got cpu={f.resources.cpu} gpu={f.resources.gpu}")
    if f.retries < 0:
        raise SpecError(f"retries: must be >= 0, got {f.retries}")
    k = f.keep_weights
    if not (k in ("all", "none") or (isinstance(k, int) and not isinstance(k, bool) and k >= 1)):
        raise SpecError(f"keep_weights: expected all, none or a number of trials >= 1, got {k!r}")
    if f.scheduler.grace_docs is not None and f.scheduler.grace_docs <= 0:
        raise SpecError("scheduler.grace_docs: must be > 0")
    if f.scheduler.brackets < 1 or (f.scheduler.brackets > 1 and f.scheduler.name != "asha"):
        raise SpecError(f"scheduler.brackets: must be >= 1, and more than 1 only with name: asha, got {f.scheduler.brackets}")
    if f.scheduler.reduction_factor <= 1:
        raise SpecError(f"scheduler.reduction_factor: must be > 1, got {f.scheduler.reduction_factor}")
    pr = f.prepare
    if (pr.cpus is not None and pr.cpus < 1) or (pr.gpus is not None and pr.gpus < 0):
        raise SpecError(f"prepare: cpus must be >= 1 and gpus >= 0, got cpus={pr.cpus} gpus={pr.gpus}")
    for name in ("shard_docs", "shard_queries", "shard_pairs"):
        if getattr(pr, name) < 1:
            raise SpecError(f"prepare.{name}: must be >= 1, got {getattr(pr, name)}")
    return Sweep(f, base, space, seeds, Path(source) if not isinstance(source, dict) else None, raw)


def _merge(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def dump(sweep: Sweep) -> str:
    return yaml.safe_dump({"spec": sweep.raw, "base": sweep.base, "space": [a.__dict__ for a in sweep.space.axes]}, sort_keys=False)
