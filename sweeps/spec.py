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
from pydantic import Field, ValidationInfo, field_validator

from ranksweep.core.errors import RanksweepError
from ranksweep.core import metric_keys
from ranksweep.core.config import ConfigError, Section, TrialConfig, apply, load_yaml, parse, resolve_trial
from ranksweep.search_spaces import SearchSpace, SpaceError, load_space

from .runs import sqlite_path


class SpecError(RanksweepError, ValueError):
    """A sweep spec is invalid; the message names the field."""


class SchedulerSpec(Section):
    name: Literal["none", "asha", "median", "hyperband"] = Field("asha", description="early stopping")
    grace_docs: Optional[int] = Field(None, gt=0, description="docs seen before a trial can be stopped (default: eval_every_docs)")
    reduction_factor: float = Field(2.0, gt=1, description="ASHA/HyperBand halving rate")
    brackets: int = Field(1, ge=1, description="ASHA's brackets: more than 1 is asynchronous HyperBand")

    @field_validator("brackets")
    @classmethod
    def _brackets_need_asha(cls, v: int, info: ValidationInfo) -> int:
        if v > 1 and info.data.get("name") != "asha":
            raise ValueError(f"more than 1 only with name: asha, got {v} with name: {info.data.get('name')}")
        return v


class ResourceSpec(Section):
    cpu: float = Field(1.0, gt=0, description="CPUs per trial (also torch's thread count)")
    gpu: float = Field(0.0, ge=0, description="GPU (fraction) per trial")


class PrepareSpec(Section):
    cpus: Optional[int] = Field(None, ge=1, description="CPUs of a preparation task: BM25 threads (default: resources.cpu)")
    gpus: Optional[float] = Field(None, ge=0, description="GPUs of a neural preparation task (default: 1 when trials use GPUs, else 0)")
    shard_docs: int = Field(500_000, ge=1, description="documents per tokenizing / embedding / dense-search task")
    shard_queries: int = Field(50_000, ge=1, description="queries per BM25 retrieval / pair-scoring task")
    shard_pairs: int = Field(2_000_000, ge=1, description="(query, document) pairs per neural teacher task")


class TrackingSpec(Section):
    uri: str = Field("sqlite:///mlflow.db", description="MLflow tracking URI (relative sqlite paths resolve against the working directory)")
    experiment: Optional[str] = Field(None, description="MLflow experiment (default: ranksweep-<name>)")
    flush_timeout: float = Field(600.0, ge=0, description="seconds the end of a sweep waits for MLflow writes held back while the "
                                                          "tracking server was away")


class SweepFields(Section):
    name: str = Field(description="sweep name (Ray experiment and MLflow parent run)")
    base: Any = Field(None, description="trial YAML path or inline trial mapping")
    trial: dict = Field(default_factory=dict, description="trial overrides on top of base")
    space: Any = Field(None, description="search space: shipped name, YAML path or inline mapping")
    search: Literal["grid", "optuna", "random"] = Field("grid", description="search algorithm")
    num_samples: int = Field(1, ge=1, description="trials drawn by optuna/random")
    seeds: Any = Field(1, validate_default=True, description="repeats per grid cell: n or a list of seeds")
    metric: str = Field("dev/nDCG@10", description="selection metric (as reported)")
    mode: Literal["max", "min"] = Field("max", description="maximise or minimise the metric")
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec, description="early stopping")
    resources: ResourceSpec = Field(default_factory=ResourceSpec, description="per trial")
    max_concurrent: Optional[int] = Field(None, ge=1, description="trials at once (default: as resources allow)")
    max_pending_trials: Optional[int] = Field(None, ge=1, description="pending trials Ray keeps queued (raise it so the autoscaler sees demand)")
    storage: str = Field("runs/ray", description="Ray storage: a path (shared storage on a cluster) or a URI (s3://…)")
    prepare: PrepareSpec = Field(default_factory=PrepareSpec, description="shared-data preparation tasks")
    tracking: TrackingSpec = Field(default_factory=TrackingSpec, description="MLflow")
    retries: int = Field(1, ge=0, description="times a failing trial is retried before it is recorded as failed")
    keep_weights: Any = Field(1, description="final weights logged to MLflow (for `ranksweep export`): all | none | k, the k best "
                                             "trials that trained their full budget, by the metric")
    seed: int = Field(0, description="seed of the search algorithm")

    @field_validator("base", "space")
    @classmethod
    def _path_or_mapping(cls, v: Any, info: ValidationInfo) -> Any:
        if v is not None and not isinstance(v, (str, dict)):
            raise ValueError(f"expected a YAML path{' or shipped name' if info.field_name == 'space' else ''} or a mapping, got {v!r}")
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: Any) -> list[int]:
        """``n`` means seeds ``0..n-1``; a list is taken as given."""
        seeds = list(range(v)) if isinstance(v, int) and not isinstance(v, bool) else v
        if not isinstance(seeds, list) or not seeds or not all(isinstance(x, int) and not isinstance(x, bool) for x in seeds):
            raise ValueError(f"expected a positive count or a list of integer seeds, got {v!r}")
        return seeds

    @field_validator("keep_weights")
    @classmethod
    def _keep_weights(cls, k: Any) -> Any:
        if not (k in ("all", "none") or (isinstance(k, int) and not isinstance(k, bool) and k >= 1)):
            raise ValueError(f"expected all, none or a number of trials >= 1, got {k!r}")
        return k


@dataclass
class Sweep:
    """A validated sweep: the spec fields, the resolved base trial dict and the search space."""

    fields: SweepFields
    base: dict  # the raw base trial: what Ray Tune carries to workers, which resolve their own trial from it
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
        """The base trial, resolved once (``resolve_trial`` memoises)."""
        return resolve_trial(self.base, {})

    def trial(self, cell: dict, seed: Optional[int] = None) -> TrialConfig:
        """The config of ``cell`` (dotted axis keys -> values) on the base trial, resolved once per process."""
        return resolve_trial(self.base, cell, seed)

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
        f = parse(SweepFields, raw)
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
    else:
        base = copy.deepcopy(f.base)
    base = apply(base, f.trial)
    base.pop("seed", None)
    base.pop("output_dir", None)
    try:
        cfg = resolve_trial(base, {})
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
    seeds = f.seeds
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
    if f.metric not in reported_metrics(cfg):
        raise SpecError(f"metric: {f.metric!r} is not reported at every evaluation; reported: {sorted(reported_metrics(cfg))}")
    return Sweep(f, base, space, seeds, Path(source) if not isinstance(source, dict) else None, raw)


def dump(sweep: Sweep) -> str:
    return yaml.safe_dump({"spec": sweep.raw, "base": sweep.base, "space": [a.__dict__ for a in sweep.space.axes]}, sort_keys=False)
