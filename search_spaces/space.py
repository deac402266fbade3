"""Search spaces over trial-config axes, with conditions, translated to Ray Tune and Optuna.

A space is a mapping from dotted ``TrialConfig`` keys to their values::

    axes:
      sampler.name: [random, bm25, teacher, ensemble]       # categorical
      loss: [lce, kl, margin_mse]
      temperature:                                           # conditional axis
        values: [0.5, 1.0, 2.0, 4.0]
        when: {loss: [kl, margin_mse]}                      # lce ignores the teacher
      optim.lr: {loguniform: [1.0e-5, 3.0e-4]}              # continuous (optuna / random)

An axis with ``when`` applies only while every named axis (declared earlier) takes one of the
listed values; otherwise it keeps the base config's value and is absent from the cell. So a grid
has no duplicate or meaningless cells, and Optuna's define-by-run function asks only what applies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import Field, model_validator

from ranksweep.core.errors import RanksweepError
from ranksweep.core.config import ConfigError, Section, parse, reference_rows, resolve_trial
from ranksweep.core.registry import unknown_name_message

HERE = Path(__file__).resolve().parent
DISTRIBUTIONS = ("uniform", "loguniform", "int", "logint")


class SpaceError(RanksweepError, ValueError):
    """A search space is malformed; the message names the axis."""


@dataclass(frozen=True)
class Axis:
    key: str
    values: Optional[tuple] = None
    dist: Optional[str] = None
    low: Optional[float] = None
    high: Optional[float] = None
    when: dict = field(default_factory=dict)

    @property
    def categorical(self) -> bool:
        return self.values is not None

    def active(self, assignment: dict) -> bool:
        return all(k in assignment and assignment[k] in allowed for k, allowed in self.when.items())


def _axis_keys() -> list[str]:
    return [k for k, _, _ in reference_rows()]


@dataclass(frozen=True)
class SearchSpace:
    axes: tuple[Axis, ...]
    name: str = "space"

    # -- parsing -----------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Any, base: Optional[dict] = None, name: str = "space") -> "SearchSpace":
        try:
            spec = parse(SpaceSpec, d)
        except ConfigError as e:
            raise SpaceError(f"{name}: {e} (a search space is a mapping with a non-empty 'axes' mapping)") from None
        known = _axis_keys()
        axes: list[Axis] = []
        for key, axis in spec.axes.items():
            if key not in known:
                raise SpaceError(f"{name}: axis {unknown_name_message('axis', key, known)}")
            axes.append(_parse_axis(key, axis, axes))
        space = cls(tuple(axes), spec.name or name)
        space.check_values(base or {})
        return space

    @classmethod
    def from_yaml(cls, path: str | Path, base: Optional[dict] = None) -> "SearchSpace":
        p = Path(path)
        try:
            d = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise SpaceError(f"malformed YAML in {p}: {e}") from None
        return cls.from_dict(d, base, name=p.stem)

    def check_values(self, base: dict) -> None:
        """Every categorical value (and each bound) must make a valid trial config with ``base``."""
        for a in self.axes:
            probes = list(a.values) if a.categorical else [a.low, a.high]
            if a.dist in ("int", "logint"):
                probes = [int(p) for p in probes]
            for v in probes:
                try:
                    resolve_trial(base, {a.key: v})
                except ConfigError as e:
                    raise SpaceError(f"axis {a.key!r}: value {v!r} is not allowed: {e}") from None

    # -- translations ------------------------------------------------------------------------
    def keys(self) -> list[str]:
        return [a.key for a in self.axes]

    def grid(self) -> list[dict]:
        """Every cell of the grid (categorical axes only), conditions honoured, no duplicates."""
        for a in self.axes:
            if not a.categorical:
                raise SpaceError(f"axis {a.key!r} is continuous ({a.dist}); a grid needs values: [...] "
                                 "(or use search: optuna / random)")
        cells: list[dict] = [{}]
        for a in self.axes:
            nxt = []
            for c in cells:
                if a.active(c):
                    nxt.extend({**c, a.key: v} for v in a.values)
                else:
                    nxt.append(c)
            cells = nxt
        return cells

    def to_ray_param_space(self, seeds: list[int]) -> dict:
        """Ray Tune param space for a grid: one ``grid_search`` over the (conditional) cells × seeds.

        Ray's own grid is a cartesian product of independent keys, which cannot express
        conditions; enumerating the cells here keeps the grid free of meaningless repeats.
        """
        from ray import tune

        return {"params": tune.grid_search(self.grid()), "seed": tune.grid_search(list(seeds))}

    def to_optuna_define_by_run(self, seed: int = 0) -> Callable:
        """A define-by-run function for ``OptunaSearch(space=...)``: asks only active axes.

        It does no computation and returns ``{"params": cell, "seed": seed}`` (constants, as Ray
        expects). It is a module-level callable, so Tune can pickle the searcher's state.
        """
        return DefineByRun(self.axes, seed)


class AxisSpec(Section):
    """One axis as written: a grid's values or one distribution's [low, high], and when it applies."""

    values: Optional[list] = Field(None, min_length=1, description="the axis's values (a grid axis)")
    when: dict[str, Any] = Field(default_factory=dict, min_length=1, description="earlier axes -> the values this axis applies under")
    uniform: Optional[tuple[float, float]] = Field(None, description="[low, high] drawn uniformly")
    loguniform: Optional[tuple[float, float]] = Field(None, description="[low, high] drawn on a log scale")
    int_: Optional[tuple[float, float]] = Field(None, alias="int", description="[low, high] integers")
    logint: Optional[tuple[float, float]] = Field(None, description="[low, high] integers on a log scale")

    @model_validator(mode="before")
    @classmethod
    def _list(cls, value: Any) -> Any:
        return {"values": value} if isinstance(value, list) else value  # ``loss: [kl, lce]`` is ``loss: {values: [kl, lce]}``


class SpaceSpec(Section):
    axes: dict[str, Any] = Field(min_length=1, description="dotted trial-config key -> axis")
    name: Optional[str] = Field(None, description="the space's name")
    description: Optional[str] = Field(None, description="what the space compares")


def _parse_axis(key: str, spec: Any, earlier: list[Axis]) -> Axis:
    try:
        a = parse(AxisSpec, spec)
    except ConfigError as e:
        raise SpaceError(f"axis {key!r}: {e}") from None
    when: dict = {}
    by_key = {x.key: x for x in earlier}
    for other, allowed in a.when.items():
        if other not in by_key:
            raise SpaceError(f"axis {key!r}: condition on unknown axis {other!r} (conditions name axes declared "
                             f"before this one: {list(by_key)})")
        allowed = tuple(allowed if isinstance(allowed, list) else [allowed])
        if by_key[other].categorical:
            bad = [v for v in allowed if v not in by_key[other].values]
            if bad:
                raise SpaceError(f"axis {key!r}: condition values {bad} are not values of axis {other!r} {list(by_key[other].values)}")
        when[other] = allowed
    dists = {name: getattr(a, "int_" if name == "int" else name) for name in DISTRIBUTIONS}
    dists = {name: lo_hi for name, lo_hi in dists.items() if lo_hi is not None}
    if a.values is not None:
        if dists:
            raise SpaceError(f"axis {key!r}: give either values or a distribution, not both")
        frozen = tuple(_freeze(v) for v in a.values)
        if len(set(map(repr, frozen))) != len(frozen):
            raise SpaceError(f"axis {key!r}: duplicate values {a.values}")
        return Axis(key, values=frozen, when=when)
    if len(dists) != 1:
        raise SpaceError(f"axis {key!r}: needs values: [...] or one of {list(DISTRIBUTIONS)}: [low, high]")
    (dist, (lo, hi)), = dists.items()
    if not lo < hi or (dist.startswith("log") and lo <= 0):
        raise SpaceError(f"axis {key!r}: {dist} bounds {[lo, hi]} need low < high (and low > 0 for log scales)")
    return Axis(key, dist=dist, low=lo, high=hi, when=when)


def _freeze(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) and all(not isinstance(x, (list, dict)) for x in v) else v


def load_space(name_or_path: str | Path, base: Optional[dict] = None) -> SearchSpace:
    """A shipped space by name (``sampler_loss_temperature``) or a YAML path."""
    p = Path(name_or_path)
    if not p.exists():
        cand = HERE / f"{name_or_path}.yaml"
        if not cand.exists():
            shipped = sorted(x.stem for x in HERE.glob("*.yaml"))
            raise SpaceError(f"search space not found: {name_or_path!r} (shipped: {shipped})")
        p = cand
    return SearchSpace.from_yaml(p, base)


@dataclass(frozen=True)
class DefineByRun:
    """Optuna define-by-run over a space's axes (picklable, unlike a closure)."""

    axes: tuple[Axis, ...]
    seed: int = 0

    def __call__(self, trial) -> dict:
        cell: dict = {}
        for a in self.axes:
            if not a.active(cell):
                continue
            if a.categorical:
                idx = trial.suggest_categorical(a.key, list(range(len(a.values))))
                cell[a.key] = a.values[idx]
            elif a.dist == "uniform":
                cell[a.key] = trial.suggest_float(a.key, a.low, a.high)
            elif a.dist == "loguniform":
                cell[a.key] = trial.suggest_float(a.key, a.low, a.high, log=True)
            else:
                cell[a.key] = trial.suggest_int(a.key, int(a.low), int(a.high), log=a.dist == "logint")
        return {"params": cell, "seed": self.seed}
