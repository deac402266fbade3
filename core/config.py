"""Trial configuration: frozen pydantic models, checked once where raw input enters.

``TrialConfig.from_dict`` (or ``from_yaml``) is the only place that sees a raw dict. It rejects
unknown keys, resolves registry names (sampler, loss, teacher and student kinds), parses measure
strings with ``ir_measures`` and checks every value; each error names the offending field by its
dotted path (``sampler.name``, ``optim.lr``) so a sweep fails before any work starts.

Shorthands accepted in YAML::

    sampler: bm25                      # == {name: bm25}
    loss: kl                           # == [{name: kl, weight: 1.0, params: {}}]
    loss: [{name: kl}, {name: lce, weight: 0.1}]
"""

from __future__ import annotations

import copy
import functools
import json
import os
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Optional

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from .data.collections import check_dataset_id
from .data.samplers import SAMPLERS
from .errors import ConfigError
from .losses import LOSSES, check_loss_params
from .models import STUDENTS
from .registry import unknown_name_message
from .teachers import TEACHERS, check_teacher


def _help(text: str, **kw: Any) -> Any:
    """A field's default, bounds (``gt``, ``ge``) and its one-line meaning (the README's reference is generated from it)."""
    return Field(description=text, **kw)


class Section(BaseModel):
    """A config section: frozen, unknown keys rejected, each error located by its dotted path (``parse``).

    ``SHORTHAND`` names the field a bare string sets (``sampler: bm25`` is ``sampler: {name: bm25}``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    SHORTHAND: ClassVar[Optional[str]] = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {cls.SHORTHAND: value} if cls.SHORTHAND and isinstance(value, str) else value


def _listed(value: Any) -> Any:
    """One value where a list is expected is a list of one (``eval: cranfield``, ``loss: kl``, ``loss: {name: kl}``)."""
    return [value] if isinstance(value, (str, dict)) else value


Names = Annotated[tuple[str, ...], BeforeValidator(_listed)]
Params = Annotated[dict, BeforeValidator(lambda v: {} if v is None else v)]


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------


class DataConfig(Section):
    train: str = _help("ir_datasets id (or local:/folder:split) of the training queries", default="beir/scifact/train")
    dev_fraction: float = _help("held-out fraction of training queries used for selection (dev)", default=0.1, gt=0, lt=1)
    split_seed: int = _help("seed of the train/dev split (fixed across trials so they share dev)", default=0)
    eval: Names = _help(
        "collections evaluated at the end of the trial (never used for selection)",
        default=("beir/scifact/test", "cranfield", "vaswani"),
    )
    eval_max_queries: Optional[int] = _help("evaluate on a seeded sample of at most this many queries", default=None, ge=1)
    max_query_length: int = _help("query tokens kept (without special tokens)", default=32, gt=0)
    max_doc_length: int = _help("document tokens kept (without special tokens); 128 covers ~95% of MS MARCO passages", default=128, gt=0)
    cache_dir: Optional[str] = _help("shared cache (candidates, teacher scores, tokens); default $RANKSWEEP_CACHE or ~/.cache/ranksweep", default=None)


FILE_FORMATS = ("auto", "json", "trec", "sbert", "pickle", "tsv", "jsonl", "colbert")


class ImportedCandidates(Section):
    path: str = _help("negatives file: sentence-transformers hard negatives, TREC run, Hofstätter TSV, Tevatron/FlagEmbedding JSONL, "
                      "ColBERT examples")
    format: Literal[FILE_FORMATS] = _help("file format; auto: detected from the content", default="auto")  # type: ignore[valid-type]
    systems: Names = _help("systems whose negatives are drawn (sbert: e.g. [bm25, msmarco-distilbert-base-tas-b]); "
                                     "empty: every system of the file", default=())
    per_system: Optional[int] = _help("the first N negatives of each system (after the margin filter); null: all", default=None, ge=1)
    teacher_margin: Optional[float] = _help("keep a negative only if the teacher scores it at most min(positive scores) - margin "
                                            "(sentence-transformers' ce_score_margin); null: no filter", default=None)
    on_unknown: Literal["error", "skip"] = _help("ids the collection lacks: an error, or counted and skipped", default="error")


class CandidateConfig(Section):
    bm25_depth: int = _help("BM25 candidates kept per query", default=100, ge=1)
    dense_depth: int = _help("dense (FAISS) candidates kept per query; 0: none", default=100, ge=0)
    dense_model: str = _help("bi-encoder used for dense candidates ('minilm' = all-MiniLM-L6-v2)", default="minilm")
    random_pool: int = _help("uniformly drawn documents per training query for the random sampler", default=100, ge=1)
    seed: int = _help("seed of the random pool", default=0)
    imported: Optional[ImportedCandidates] = _help("negatives imported from a file, drawn by the 'imported' sampler", default=None)


class SamplerConfig(Section):
    SHORTHAND: ClassVar[str] = "name"

    name: str = _help("random | bm25 | dense | ensemble | teacher | imported", default="bm25")
    depth: tuple[int, int] = _help("[lo, hi) rank range negatives are drawn from (bm25/dense/ensemble/imported; teacher only without hardest_first)", default=(0, 100))
    skip_top: int = _help("teacher sampler: ranks skipped at the top against false negatives", default=0, ge=0)
    hardest_first: bool = _help("teacher sampler: take the hardest negatives in order instead of sampling the range", default=True)
    rrf_k: int = _help("ensemble sampler: reciprocal-rank-fusion constant", default=60)


class TeacherConfig(Section):
    SHORTHAND: ClassVar[str] = "kind"

    kind: str = _help(" | ".join(TEACHERS), default="ensemble")
    model: Optional[str] = _help("HF model path or name for bi/cross ('minilm' = all-MiniLM-L6-v2)", default=None)
    pooling: Literal["cls", "mean"] = _help("bi teacher pooling", default="mean")
    similarity: Literal["dot", "cos"] = _help("bi teacher similarity", default="cos")
    path: Optional[str] = _help("file teacher: scores in any imported format (JSON {qid: {docid: score}}, TREC run, cross-encoder "
                                "score pickle, sbert hard negatives with ce-score, Hofstätter TSV, Tevatron/FlagEmbedding JSONL, "
                                "ColBERT examples)", default=None)
    format: Literal[FILE_FORMATS] = _help("file teacher format; auto: detected from the content", default="auto")  # type: ignore[valid-type]
    on_missing: Literal["error", "drop"] = _help("file teacher: pairs absent from the file", default="error")
    on_unknown: Literal["error", "skip"] = _help("file teacher: ids the collection lacks: an error, or counted and skipped",
                                                 default="error")
    members: tuple["TeacherConfig", ...] = _help(
        "ensemble members, each a teacher with a weight (the default teacher: minilm bi + bm25, weight 1 each)", default=())
    weight: float = _help("weight inside an ensemble", default=1.0)

    @property
    def scores(self) -> bool:
        """It gives scores (``kind: none`` does not): distillation terms, the sampler ``teacher`` and entropy need them."""
        return TEACHERS[self.kind].scores


SHARED_DATA = ("data", "candidates", "teacher")  # the sections a sweep's shared preparation depends on

DEFAULT_TEACHER = {
    "kind": "ensemble",
    "members": [{"kind": "bi", "model": "minilm", "weight": 1.0}, {"kind": "bm25", "weight": 1.0}],
}


class LossTerm(Section):
    SHORTHAND: ClassVar[str] = "name"

    name: str = _help("registered loss name (see ranksweep.core.losses.LOSSES)")
    weight: float = _help("weight of this term in the total loss", default=1.0)
    params: Params = _help("extra keyword arguments of the loss function", default_factory=dict)


Losses = Annotated[tuple[LossTerm, ...], BeforeValidator(_listed)]


class AugmentConfig(Section):
    negatives_mix: float = _help("fraction of sampled negatives replaced by random documents", default=0.0, ge=0, le=1)
    in_batch: bool = _help("bi students: add every other query's documents as negatives (contrastive term)", default=False)
    in_batch_weight: float = _help("weight of the in-batch contrastive term", default=1.0, gt=0)
    entropy_band: Optional[tuple[float, float]] = _help("train only on queries whose teacher entropy quantile lies in [lo, hi]", default=None)
    entropy_kind: Literal["listwise", "pairwise"] = _help("entropy used by entropy_band", default="listwise")


class StudentConfig(Section):
    kind: str = _help(" | ".join(STUDENTS), default="bi")
    model: str = _help("HF model path or name ('minilm' = all-MiniLM-L6-v2)", default="minilm")
    num_layers: Optional[int] = _help("keep only the first N transformer layers (student size)", default=2, ge=1)
    pooling: Literal["cls", "mean"] = _help("bi student pooling", default="mean")
    similarity: Literal["dot", "cos"] = _help("bi student similarity", default="cos")
    scale: Optional[float] = _help("score multiplier (default 20 for cos, 1 for dot)", default=None, gt=0)
    compile: bool = _help("on CUDA, run the encoder under torch.compile with dynamic shapes (H100, bert-base: 1.85x the eager step)",
                          default=False)
    packing: Literal["auto", "chunked", "padded", "packed"] = _help(
        "how a training step's sequences reach the encoder: chunked (length-sorted chunks), padded (one chunk), packed (one "
        "unpadded row, varlen attention; flash-attn on CUDA); auto: chunked on the CPU, on CUDA the fastest of the three on the "
        "first batch", default="auto")

    @property
    def score_scale(self) -> float:
        if self.scale is not None:
            return self.scale
        return 20.0 if (self.kind == "bi" and self.similarity == "cos") else 1.0


class OptimConfig(Section):
    lr: float = _help("AdamW peak learning rate", default=5e-5, gt=0)
    weight_decay: float = _help("AdamW weight decay", default=0.01, ge=0)
    warmup_fraction: float = _help("fraction of optimizer steps with linear warmup", default=0.1, ge=0, lt=1)
    batch_size: int = _help("queries per micro-batch", default=8, ge=1)
    grad_accum: int = _help("micro-batches per optimizer step", default=1, ge=1)
    max_grad_norm: Optional[float] = _help("gradient clipping (None: off)", default=1.0)


class EvalConfig(Section):
    dev_depth: int = _help("dev: re-rank this many BM25 candidates per dev query", default=100, ge=1)
    depth: int = _help("eval collections: candidates re-ranked (cross) or retrieved (bi)", default=100, ge=1)
    measures: Names = _help("ir_measures measures for eval collections", default=("nDCG@10", "RR@10", "R@100"))
    selection: str = _help("dev measure used for selection", default="nDCG@10")
    probe_queries: int = _help("training queries in the fixed probe set (diameter, KL)", default=32, ge=1)
    diameter_alpha: float = _help("quantile of pairwise distances used as diameter", default=0.99, gt=0, le=1)
    collections_every_eval: bool = _help("also evaluate the eval collections at every evaluation", default=False)
    at_start: bool = _help("evaluate probe and dev once before training (docs seen = 0): every curve starts at the student's start", default=True)
    batch_tokens: int = _help("token budget of one inference batch", default=16384)


class TrialConfig(Section):
    data: DataConfig = _help("collections", default_factory=DataConfig)
    candidates: CandidateConfig = _help("candidate lists shared by samplers", default_factory=CandidateConfig)
    sampler: SamplerConfig = _help("negative sampling strategy", default_factory=SamplerConfig)
    group_size: int = _help("documents per query group: 1 positive + G-1 negatives", default=8, ge=2)
    teacher: TeacherConfig = _help("teacher scorer", default_factory=lambda: TeacherConfig.model_validate(DEFAULT_TEACHER))
    temperature: float = _help("teacher temperature T used by every teacher-target loss", default=1.0, gt=0)
    loss: Losses = _help("loss terms (name, weight, params)", default=(LossTerm(name="kl"),))
    augment: AugmentConfig = _help("input and target augmentation", default_factory=AugmentConfig)
    student: StudentConfig = _help("student model", default_factory=StudentConfig)
    optim: OptimConfig = _help("optimizer", default_factory=OptimConfig)
    budget_docs: int = _help("documents trained on (queries x group size, accumulation counted)", default=4096, gt=0)
    eval_every_docs: int = _help("evaluate every this many documents", default=1024, gt=0)
    eval: EvalConfig = _help("evaluation", default_factory=EvalConfig)
    seed: int = _help("trial seed (sampling order, negatives, initialisation of new heads)", default=0, ge=0)
    output_dir: Optional[str] = _help("trial output (metrics, run files); None: nothing written", default=None)
    device: str = _help("auto | cpu | cuda | cuda:N", default="auto")
    num_threads: Optional[int] = _help("torch CPU threads (set to the trial's CPU share)", default=None)
    name: Optional[str] = _help("trial name", default=None)

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict | None) -> "TrialConfig":
        cfg = parse(cls, dict(d or {}))
        _validate(cfg)
        return cfg

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "TrialConfig":
        return cls.from_dict(load_yaml(path))

    @property
    def shared_data_key(self) -> str:
        """What decides a trial's prepared data (collections, candidates, teacher) as a stable string: trials equal here
        open one preparation, whichever axes made them so."""
        return json.dumps(self.model_dump(mode="json", include=set(SHARED_DATA)), sort_keys=True)

    def to_dict(self) -> dict:
        """Plain YAML/JSON values (lists for tuples), every default filled in: ``from_dict(to_dict())`` is equal."""
        return self.model_dump(mode="json")

    def replace(self, **changes: Any) -> "TrialConfig":
        """A validated copy with nested changes given as dotted keys (``{"optim.lr": 1e-4}``)."""
        d = self.to_dict()
        for key, value in changes.items():
            set_dotted(d, key, value)
        return TrialConfig.from_dict(d)


def apply(base: dict, changes: dict) -> dict:
    """A copy of the raw trial dict ``base`` with ``changes``: the one way a raw trial dict is changed.

    Keys may be dotted (a sweep cell: ``{"optim.lr": 1e-4}``) or nested (a spec's ``trial:``
    overrides: ``{"optim": {"lr": 1e-4}}``); a nested mapping is merged key by key into the mapping it
    lands on (a shorthand such as ``sampler: bm25`` is expanded first), and replaces anything else.
    """
    d = copy.deepcopy(base)
    for key, value in changes.items():
        _merge(d, key, value)
    return d


def _merge(d: dict, key: str, value: Any) -> None:
    if isinstance(value, dict) and value:
        at = d
        for p in key.split("."):
            at = at.get(p) if isinstance(at, dict) else None
        if at is None or isinstance(at, dict) or (isinstance(at, str) and key in SHORTHAND_KEYS):
            for k, v in value.items():
                _merge(d, f"{key}.{k}", v)
            return
    set_dotted(d, key, copy.deepcopy(value))


def resolve_trial(base: dict, cell: dict, seed: Optional[int] = None, **fields: Any) -> TrialConfig:
    """The validated config of one sweep trial: ``base`` with ``cell``'s dotted keys, the seed and ``fields``.

    This is where a sweep's raw dicts become a ``TrialConfig``, resolved once per process: the same
    arguments give the same frozen object, so the driver's spec check, cost, preparation and tracking
    share one resolution of each trial, and a worker resolves only its own. Ray Tune carries a
    trial's cell as plain values, which is why the object is not shipped between processes.
    """
    return _resolved(json.dumps([base, cell, seed, fields], sort_keys=True, default=str))


@functools.lru_cache(maxsize=16384)
def _resolved(key: str) -> TrialConfig:
    base, cell, seed, fields = json.loads(key)
    d = apply(base, cell)
    if seed is not None:
        d["seed"] = seed
    d.update(fields)
    return TrialConfig.from_dict(d)


def load_yaml(path: str | os.PathLike) -> dict:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file not found: {p}")
    try:
        d = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"malformed YAML in {p}: {e}") from None
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise ConfigError(f"{p}: top level must be a mapping of config keys, got {type(d).__name__}")
    return d


def set_dotted(d: dict, key: str, value: Any) -> None:
    """Set ``d["a"]["b"] = value`` for ``key="a.b"``, expanding shorthands (``sampler: bm25``) on the way."""
    parts = key.split(".")
    path = []
    for p in parts[:-1]:
        path.append(p)
        cur = d.get(p)
        if cur is None:
            cur = d[p] = {}
        if isinstance(cur, str) and p in SHORTHAND_KEYS:
            cur = d[p] = {SHORTHAND_KEYS[p]: cur}
        if not isinstance(cur, dict):
            raise ConfigError(f"{'.'.join(path)}: cannot set {key!r} inside {cur!r} (a {type(cur).__name__}, not a mapping)")
        d = cur
    d[parts[-1]] = value


# ---------------------------------------------------------------------------------------------
# Raw values -> sections, errors in the project's words
# ---------------------------------------------------------------------------------------------


def parse(model: type[BaseModel], value: Any, where: str = "") -> Any:
    """``model`` validated from raw YAML values by pydantic; its first error as one ``ConfigError`` naming the dotted path.

    The messages are the project's (``optim.lr: must be > 0, got 0``, ``unknown key 'samplr'; did you mean 'sampler'``),
    not pydantic's multi-line report: a CLI prints one line and exits with code 2.
    """
    try:
        return model.model_validate(value)
    except ValidationError as e:
        errors = e.errors()
        first = errors[0]
        if first["type"] == "extra_forbidden":  # every unknown key of the same section, in one line
            same = [x for x in errors if x["type"] == "extra_forbidden" and x["loc"][:-1] == first["loc"][:-1]]
            raise ConfigError("; ".join(_message(model, x, where) for x in same)) from None
        raise ConfigError(_message(model, first, where)) from None


def _dotted(where: str, loc: tuple) -> str:
    out = where
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _section_at(model: type[BaseModel], loc: tuple) -> type[BaseModel]:
    """The section class a location inside ``model`` points into (for an unknown key's list of known ones)."""
    for part in loc:
        if isinstance(part, str):
            model = _section_of(model.model_fields[part].annotation)
    return model


def _section_of(tp: Any) -> Any:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    for arg in getattr(tp, "__args__", ()):
        found = _section_of(arg)
        if found is not None:
            return found
    return None


def _arity(tp: Any) -> int:
    """The length of the fixed tuple in ``tp`` (``Optional[tuple[float, float]]``: 2)."""
    if getattr(tp, "__origin__", None) is tuple:
        return len(tp.__args__)
    return max((_arity(a) for a in getattr(tp, "__args__", ())), default=0)


_TYPE_WORDS = {"int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
               "float_type": "a number", "float_parsing": "a number", "finite_number": "a finite number",
               "bool_type": "true/false", "bool_parsing": "true/false", "string_type": "a string",
               "tuple_type": "a list", "list_type": "a list", "dict_type": "a mapping", "model_type": "a mapping",
               "model_attributes_type": "a mapping"}
_BOUNDS = {"greater_than": "gt", "greater_than_equal": "ge", "less_than": "lt", "less_than_equal": "le"}


def _number(x: Any) -> Any:
    return int(x) if isinstance(x, float) and x.is_integer() else x


def _bounds_words(**bounds: Any) -> str:
    """A field's bounds (``gt``/``ge``/``lt``/``le``) in words, for its errors and the README's reference:
    ``in [0, 1)`` when bounded on both sides, else ``>= 2``; empty when unbounded."""
    lo = ("[", bounds["ge"]) if "ge" in bounds else ("(", bounds["gt"]) if "gt" in bounds else None
    hi = ("]", bounds["le"]) if "le" in bounds else (")", bounds["lt"]) if "lt" in bounds else None
    if lo and hi:
        return f"in {lo[0]}{_number(lo[1])}, {_number(hi[1])}{hi[0]}"
    return ", ".join(f"{op} {_number(bounds[k])}" for k, op in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")) if k in bounds)


def _field_bounds(field: Any) -> dict[str, Any]:
    return {k: getattr(m, k) for m in field.metadata for k in ("gt", "ge", "lt", "le") if hasattr(m, k)}


def _message(model: type[BaseModel], err: dict, where: str) -> str:
    kind, loc, got, ctx = err["type"], err["loc"], err.get("input"), err.get("ctx", {})
    path = _dotted(where, loc)
    if kind == "extra_forbidden":
        parent = _dotted(where, loc[:-1])
        names = [f.alias or n for n, f in _section_at(model, loc[:-1]).model_fields.items()]
        known = [f"{parent}.{n}" if parent else n for n in names]
        return unknown_name_message("key", path, known)
    if kind in _TYPE_WORDS:
        text = f"expected {_TYPE_WORDS[kind]}, got {got!r}"
    elif kind in _BOUNDS:
        name = _BOUNDS[kind]
        bounds = _field_bounds(_section_at(model, loc[:-1]).model_fields[loc[-1]]) if isinstance(loc[-1], str) else {}
        text = f"must be {_bounds_words(**(bounds or {name: ctx[name]}))}, got {got!r}"
    elif kind == "literal_error":
        text = f"{got!r} is not one of {ctx['expected']}"
    elif kind == "too_short":
        text = f"needs at least {ctx['min_length']} item(s), got {got!r}"
    elif kind == "too_long":
        text = f"expected {ctx['max_length']} values, got {got!r}"
    elif kind == "missing" and len(loc) > 1 and isinstance(loc[-1], int):  # a fixed-length list that is too short
        n = _arity(_section_at(model, loc[:-2]).model_fields[loc[-2]].annotation)
        return f"{_dotted(where, loc[:-1])}: expected {n} values, got {got!r}"
    elif kind == "missing":
        parent = _dotted(where, loc[:-1])
        return f"{parent}: the required key {loc[-1]!r} is missing" if parent else f"the required key {loc[-1]!r} is missing"
    elif kind == "value_error":
        text = str(ctx.get("error", err["msg"]))
    else:
        text = err["msg"]
    return f"{path}: {text}" if path else text


SHORTHAND_KEYS = {name: f.annotation.SHORTHAND for name, f in TrialConfig.model_fields.items()
                  if _section_of(f.annotation) is f.annotation and f.annotation.SHORTHAND}  # sampler: name, teacher: kind


# ---------------------------------------------------------------------------------------------
# Semantic checks
# ---------------------------------------------------------------------------------------------

def _need(cond: bool, path: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{path}: {msg}")


def _validate(c: TrialConfig) -> None:
    """What the field types and bounds cannot say: registry names, relations between fields, files and dataset ids."""
    if c.sampler.name not in SAMPLERS:
        raise ConfigError("sampler.name: " + unknown_name_message("sampler", c.sampler.name, list(SAMPLERS)))
    if c.student.kind not in STUDENTS:
        raise ConfigError("student.kind: " + unknown_name_message("student kind", c.student.kind, list(STUDENTS)))
    check_teacher(c.teacher, "teacher")
    if c.budget_docs % c.group_size:
        lo = c.budget_docs - c.budget_docs % c.group_size
        raise ConfigError(
            f"budget_docs: {c.budget_docs} is not a multiple of group_size {c.group_size}; "
            f"use {lo} or {lo + c.group_size} so the trial trains on exactly budget_docs documents"
        )
    _need(len(c.loss) > 0, "loss", "at least one loss term is required")
    for i, term in enumerate(c.loss):
        if term.name not in LOSSES:
            raise ConfigError(f"loss[{i}].name: " + unknown_name_message("loss", term.name, list(LOSSES)))
        try:
            check_loss_params(term.name, term.params)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"loss[{i}].params: {e}") from None
        if LOSSES[term.name].needs_teacher and not c.teacher.scores:
            raise ConfigError(f"loss[{i}].name: loss {term.name!r} needs teacher scores but teacher.kind is 'none'")
    imp = c.candidates.imported
    if c.sampler.name == "imported" and imp is None:
        raise ConfigError("sampler.name: the 'imported' sampler draws from candidates.imported, which is not set "
                          "(candidates.imported: {path: FILE})")
    if imp is not None:
        _need(Path(imp.path).exists(), "candidates.imported.path", f"file not found: {imp.path}")
        _need(imp.teacher_margin is None or c.teacher.scores, "candidates.imported.teacher_margin",
              "the margin filter needs a teacher (teacher.kind is 'none')")
    if c.sampler.name == "teacher" and not c.teacher.scores:
        raise ConfigError("sampler.name: the 'teacher' sampler needs a teacher (teacher.kind is 'none')")
    lo, hi = c.sampler.depth
    _need(0 <= lo < hi, "sampler.depth", f"needs 0 <= lo < hi, got {[lo, hi]}")
    _need(hi - lo >= c.group_size - 1 or (c.sampler.name == "random"), "sampler.depth",
          f"range {[lo, hi]} holds fewer than group_size-1 = {c.group_size - 1} negatives")
    if c.augment.in_batch:
        _need(c.student.kind == "bi", "augment.in_batch", "in-batch negatives need a bi-encoder student (student.kind: bi)")
    if c.augment.entropy_band is not None:
        blo, bhi = c.augment.entropy_band
        _need(0.0 <= blo < bhi <= 1.0, "augment.entropy_band", f"needs 0 <= lo < hi <= 1 (quantiles), got {[blo, bhi]}")
        _need(c.teacher.scores, "augment.entropy_band", "needs a teacher")
    o = c.optim
    _need(o.max_grad_norm is None or o.max_grad_norm > 0, "optim.max_grad_norm",
          f"must be > 0 (or null: no clipping), got {o.max_grad_norm}")
    _need(c.eval.batch_tokens >= c.data.max_query_length + c.data.max_doc_length, "eval.batch_tokens",
          f"{c.eval.batch_tokens} tokens cannot hold one query and one passage "
          f"({c.data.max_query_length} + {c.data.max_doc_length} tokens)")
    _need(c.device == "auto" or c.device == "cpu" or c.device.startswith("cuda"), "device",
          f"must be auto, cpu, cuda or cuda:N, got {c.device!r}")
    import ir_measures

    for i, m in enumerate(c.eval.measures + (c.eval.selection,)):
        path = f"eval.measures[{i}]" if i < len(c.eval.measures) else "eval.selection"
        try:
            ir_measures.parse_measure(m)
        except (NameError, ValueError, TypeError) as e:
            raise ConfigError(f"{path}: {e}") from None
    check_dataset_id(c.data.train, "data.train")
    for i, did in enumerate(c.data.eval):
        check_dataset_id(did, f"data.eval[{i}]")
        _need(did != c.data.train, f"data.eval[{i}]", f"{did!r} is the training collection; evaluate on held-out queries")
    _need(c.eval.dev_depth <= c.candidates.bm25_depth, "eval.dev_depth",
          f"{c.eval.dev_depth} exceeds candidates.bm25_depth {c.candidates.bm25_depth} (dev re-ranks BM25 candidates)")


def reference_rows() -> list[tuple[str, str, str]]:
    """``(dotted key, default, meaning)`` of every config field, read from ``TrialConfig``'s JSON schema.

    A section's keys are listed under its name; an optional section (``candidates.imported``) also
    has its own row. Bounds the schema states are appended to the meaning.
    """
    schema = TrialConfig.model_json_schema()
    defs = schema.get("$defs", {})

    def ref(prop: dict) -> Optional[str]:
        for p in [prop, *prop.get("anyOf", []), *prop.get("allOf", [])]:
            if "$ref" in p:
                return p["$ref"].rsplit("/", 1)[-1]
        return None

    def bounds(prop: dict) -> str:
        words = _bounds_words(**{k: p[s] for p in [prop, *prop.get("anyOf", [])] for s, k in (
            ("exclusiveMinimum", "gt"), ("minimum", "ge"), ("exclusiveMaximum", "lt"), ("maximum", "le")) if s in p})
        return f" ({words})" if words else ""

    def rows(section: dict, prefix: str) -> list[tuple[str, str, str]]:
        out = []
        for name, prop in section["properties"].items():
            key, sub = prefix + name, ref(prop)
            if sub is not None:
                if "anyOf" in prop:
                    out.append((key, json.dumps(prop.get("default")), prop.get("description", "")))
                out.extend(rows(defs[sub], key + "."))
                continue
            default = json.dumps(prop["default"]) if "default" in prop else "(required)"
            out.append((key, default, prop.get("description", "") + bounds(prop)))
        return out

    return rows(schema, "")


def reference_table() -> str:
    """The README's configuration reference: a markdown table of ``reference_rows``."""
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for key, default, meaning in reference_rows():
        shown = default if default == "(required)" else f"`{default}`"
        lines.append(f"| `{key}` | {shown} | {meaning.replace('|', chr(92) + '|')} |")
    return "\n".join(lines)
