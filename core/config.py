"""Trial configuration: frozen dataclasses, checked once where raw input enters.

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
import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from .data.collections import check_dataset_id
from .data.samplers import SAMPLERS
from .errors import ConfigError
from .losses import LOSSES, check_loss_params
from .models import STUDENTS
from .registry import unknown_name_message
from .teachers import TEACHERS, check_teacher


def _help(text: str, **kw: Any) -> Any:
    return field(metadata={"help": text}, **kw)


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataConfig:
    train: str = _help("ir_datasets id (or local:/folder:split) of the training queries", default="beir/scifact/train")
    dev_fraction: float = _help("held-out fraction of training queries used for selection (dev)", default=0.1)
    split_seed: int = _help("seed of the train/dev split (fixed across trials so they share dev)", default=0)
    eval: tuple[str, ...] = _help(
        "collections evaluated at the end of the trial (never used for selection)",
        default=("beir/scifact/test", "cranfield", "vaswani"),
    )
    eval_max_queries: Optional[int] = _help("evaluate on a seeded sample of at most this many queries", default=None)
    max_query_length: int = _help("query tokens kept (without special tokens)", default=32)
    max_doc_length: int = _help("document tokens kept (without special tokens); 128 covers ~95% of MS MARCO passages", default=128)
    cache_dir: Optional[str] = _help("shared cache (candidates, teacher scores, tokens); default $RANKSWEEP_CACHE or ~/.cache/ranksweep", default=None)


FILE_FORMATS = ("auto", "json", "trec", "sbert", "pickle", "tsv", "jsonl", "colbert")


@dataclass(frozen=True)
class ImportedCandidates:
    path: str = _help("negatives file: sentence-transformers hard negatives, TREC run, Hofstätter TSV, Tevatron/FlagEmbedding JSONL, "
                      "ColBERT examples")
    format: Literal[FILE_FORMATS] = _help("file format; auto: detected from the content", default="auto")  # type: ignore[valid-type]
    systems: tuple[str, ...] = _help("systems whose negatives are drawn (sbert: e.g. [bm25, msmarco-distilbert-base-tas-b]); "
                                     "empty: every system of the file", default=())
    per_system: Optional[int] = _help("the first N negatives of each system (after the margin filter); null: all", default=None)
    teacher_margin: Optional[float] = _help("keep a negative only if the teacher scores it at most min(positive scores) - margin "
                                            "(sentence-transformers' ce_score_margin); null: no filter", default=None)
    on_unknown: Literal["error", "skip"] = _help("ids the collection lacks: an error, or counted and skipped", default="error")


@dataclass(frozen=True)
class CandidateConfig:
    bm25_depth: int = _help("BM25 candidates kept per query", default=100)
    dense_depth: int = _help("dense (FAISS) candidates kept per query", default=100)
    dense_model: str = _help("bi-encoder used for dense candidates ('minilm' = all-MiniLM-L6-v2)", default="minilm")
    random_pool: int = _help("uniformly drawn documents per training query for the random sampler", default=100)
    seed: int = _help("seed of the random pool", default=0)
    imported: Optional[ImportedCandidates] = _help("negatives imported from a file, drawn by the 'imported' sampler", default=None)


@dataclass(frozen=True)
class SamplerConfig:
    name: str = _help("random | bm25 | dense | ensemble | teacher | imported", default="bm25")
    depth: tuple[int, int] = _help("[lo, hi) rank range negatives are drawn from (bm25/dense/ensemble/imported; teacher only without hardest_first)", default=(0, 100))
    skip_top: int = _help("teacher sampler: ranks skipped at the top against false negatives", default=0)
    hardest_first: bool = _help("teacher sampler: take the hardest negatives in order instead of sampling the range", default=True)
    rrf_k: int = _help("ensemble sampler: reciprocal-rank-fusion constant", default=60)


@dataclass(frozen=True)
class TeacherConfig:
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


DEFAULT_TEACHER = {
    "kind": "ensemble",
    "members": [{"kind": "bi", "model": "minilm", "weight": 1.0}, {"kind": "bm25", "weight": 1.0}],
}


@dataclass(frozen=True)
class LossTerm:
    name: str = _help("registered loss name (see ranksweep.core.losses.LOSSES)")
    weight: float = _help("weight of this term in the total loss", default=1.0)
    params: dict = _help("extra keyword arguments of the loss function", default_factory=dict)


@dataclass(frozen=True)
class AugmentConfig:
    negatives_mix: float = _help("fraction of sampled negatives replaced by random documents", default=0.0)
    in_batch: bool = _help("bi students: add every other query's documents as negatives (contrastive term)", default=False)
    in_batch_weight: float = _help("weight of the in-batch contrastive term", default=1.0)
    entropy_band: Optional[tuple[float, float]] = _help("train only on queries whose teacher entropy quantile lies in [lo, hi]", default=None)
    entropy_kind: Literal["listwise", "pairwise"] = _help("entropy used by entropy_band", default="listwise")


@dataclass(frozen=True)
class StudentConfig:
    kind: str = _help(" | ".join(STUDENTS), default="bi")
    model: str = _help("HF model path or name ('minilm' = all-MiniLM-L6-v2)", default="minilm")
    num_layers: Optional[int] = _help("keep only the first N transformer layers (student size)", default=2)
    pooling: Literal["cls", "mean"] = _help("bi student pooling", default="mean")
    similarity: Literal["dot", "cos"] = _help("bi student similarity", default="cos")
    scale: Optional[float] = _help("score multiplier (default 20 for cos, 1 for dot)", default=None)
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


@dataclass(frozen=True)
class OptimConfig:
    lr: float = _help("AdamW peak learning rate", default=5e-5)
    weight_decay: float = _help("AdamW weight decay", default=0.01)
    warmup_fraction: float = _help("fraction of optimizer steps with linear warmup", default=0.1)
    batch_size: int = _help("queries per micro-batch", default=8)
    grad_accum: int = _help("micro-batches per optimizer step", default=1)
    max_grad_norm: Optional[float] = _help("gradient clipping (None: off)", default=1.0)


@dataclass(frozen=True)
class EvalConfig:
    dev_depth: int = _help("dev: re-rank this many BM25 candidates per dev query", default=100)
    depth: int = _help("eval collections: candidates re-ranked (cross) or retrieved (bi)", default=100)
    measures: tuple[str, ...] = _help("ir_measures measures for eval collections", default=("nDCG@10", "RR@10", "R@100"))
    selection: str = _help("dev measure used for selection", default="nDCG@10")
    probe_queries: int = _help("training queries in the fixed probe set (diameter, KL)", default=32)
    diameter_alpha: float = _help("quantile of pairwise distances used as diameter", default=0.99)
    collections_every_eval: bool = _help("also evaluate the eval collections at every evaluation", default=False)
    at_start: bool = _help("evaluate probe and dev once before training (docs seen = 0): every curve starts at the student's start", default=True)
    batch_tokens: int = _help("token budget of one inference batch", default=16384)


@dataclass(frozen=True)
class TrialConfig:
    data: DataConfig = _help("collections", default_factory=DataConfig)
    candidates: CandidateConfig = _help("candidate lists shared by samplers", default_factory=CandidateConfig)
    sampler: SamplerConfig = _help("negative sampling strategy", default_factory=SamplerConfig)
    group_size: int = _help("documents per query group: 1 positive + G-1 negatives", default=8)
    teacher: TeacherConfig = _help("teacher scorer", default_factory=lambda: _TEACHER_DEFAULT)
    temperature: float = _help("teacher temperature T used by every teacher-target loss", default=1.0)
    loss: tuple[LossTerm, ...] = _help("loss terms (name, weight, params)", default=(LossTerm("kl"),))
    augment: AugmentConfig = _help("input and target augmentation", default_factory=AugmentConfig)
    student: StudentConfig = _help("student model", default_factory=StudentConfig)
    optim: OptimConfig = _help("optimizer", default_factory=OptimConfig)
    budget_docs: int = _help("documents trained on (queries x group size, accumulation counted)", default=4096)
    eval_every_docs: int = _help("evaluate every this many documents", default=1024)
    eval: EvalConfig = _help("evaluation", default_factory=EvalConfig)
    seed: int = _help("trial seed (sampling order, negatives, initialisation of new heads)", default=0)
    output_dir: Optional[str] = _help("trial output (metrics, run files); None: nothing written", default=None)
    device: str = _help("auto | cpu | cuda | cuda:N", default="auto")
    num_threads: Optional[int] = _help("torch CPU threads (set to the trial's CPU share)", default=None)
    name: Optional[str] = _help("trial name", default=None)

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict | None) -> "TrialConfig":
        cfg = _build(cls, dict(d or {}), "")
        _validate(cfg)
        return cfg

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "TrialConfig":
        return cls.from_dict(load_yaml(path))

    def to_dict(self) -> dict:
        return _to_plain(self)

    def replace(self, **changes: Any) -> "TrialConfig":
        """A validated copy with nested changes given as dotted keys (``{"optim.lr": 1e-4}``)."""
        d = self.to_dict()
        for key, value in changes.items():
            set_dotted(d, key, value)
        return TrialConfig.from_dict(d)


def apply(base: dict, cell: dict) -> dict:
    """The trial-config dict of ``base`` with ``cell``'s dotted keys set (``base`` is not changed)."""
    d = copy.deepcopy(base)
    for k, v in cell.items():
        set_dotted(d, k, v)
    return d


def resolve_trial(base: dict, cell: dict, seed: Optional[int] = None, **fields: Any) -> TrialConfig:
    """The validated config of one sweep trial: ``base`` with ``cell``'s dotted keys, the seed and ``fields``.

    This is where a sweep's raw dicts become a ``TrialConfig``: once per trial in each process that
    needs it (the driver, to log ``to_dict()`` with defaults and read the trial's budget; the worker,
    to run it), since Ray Tune carries a trial's cell as plain values.
    """
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


SHORTHAND_KEYS = {"sampler": "name", "teacher": "kind"}  # ``sampler: bm25`` means ``sampler: {name: bm25}``


def set_dotted(d: dict, key: str, value: Any) -> None:
    """Set ``d["a"]["b"] = value`` for ``key="a.b"``, expanding shorthands (``sampler: bm25``) on the way."""
    parts = key.split(".")
    path = []
    for p in parts[:-1]:
        path.append(p)
        cur = d.setdefault(p, {})
        if isinstance(cur, str) and p in SHORTHAND_KEYS:
            cur = d[p] = {SHORTHAND_KEYS[p]: cur}
        if not isinstance(cur, dict):
            raise ConfigError(f"{'.'.join(path)}: cannot set {key!r} inside {cur!r} (a {type(cur).__name__}, not a mapping)")
        d = cur
    d[parts[-1]] = value


# ---------------------------------------------------------------------------------------------
# Generic dict -> dataclass with field paths in errors
# ---------------------------------------------------------------------------------------------


def _shorthand(cls: type, value: Any, path: str) -> Any:
    if cls is SamplerConfig and isinstance(value, str):
        return {"name": value}
    if cls is TeacherConfig and isinstance(value, str):
        return {"kind": value}
    if cls is LossTerm and isinstance(value, str):
        return {"name": value}
    return value


def build_dataclass(cls: type, d: Any, path: str) -> Any:
    """Build dataclass ``cls`` from a raw dict, naming the dotted field path of any error."""
    return _build(cls, d, path)


def _build(cls: type, d: Any, path: str) -> Any:
    d = _shorthand(cls, d, path)
    if not isinstance(d, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping for {cls.__name__}, got {d!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        where = f"{path}." if path else ""
        msgs = [unknown_name_message("key", f"{where}{k}", [f"{where}{n}" for n in fields]) for k in unknown]
        raise ConfigError("; ".join(msgs))
    kwargs = {}
    for name, value in d.items():
        kwargs[name] = _convert(hints[name], value, f"{path}.{name}" if path else name)
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{path or 'config'}: {e}") from None


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, path)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if tp is TeacherConfig and isinstance(value, TeacherConfig):
            return value
        return _build(tp, value, path)
    if origin is tuple:
        if tp == tuple[LossTerm, ...] and isinstance(value, (str, dict)):
            value = [value]
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            if args and args[-1] is Ellipsis and args[0] is str and isinstance(value, str):
                value = [value]
            else:
                raise ConfigError(f"{path}: expected a list, got {value!r}")
        if args and args[-1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{path}: expected {len(args)} values, got {list(value)!r}")
        return tuple(_convert(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if tp is dict or origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, str):
            try:
                value = float(value)  # YAML reads 5e-5 as a string
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    return value


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    return obj


_TEACHER_DEFAULT = _build(TeacherConfig, DEFAULT_TEACHER, "teacher")


# ---------------------------------------------------------------------------------------------
# Semantic checks
# ---------------------------------------------------------------------------------------------

def _need(cond: bool, path: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{path}: {msg}")


def _validate(c: TrialConfig) -> None:
    if c.sampler.name not in SAMPLERS:
        raise ConfigError("sampler.name: " + unknown_name_message("sampler", c.sampler.name, list(SAMPLERS)))
    if c.student.kind not in STUDENTS:
        raise ConfigError("student.kind: " + unknown_name_message("student kind", c.student.kind, list(STUDENTS)))
    check_teacher(c.teacher, "teacher")
    _need(c.group_size >= 2, "group_size", f"must be >= 2 (1 positive + at least 1 negative), got {c.group_size}")
    _need(c.budget_docs > 0, "budget_docs", f"must be > 0, got {c.budget_docs}")
    if c.budget_docs % c.group_size:
        lo = c.budget_docs - c.budget_docs % c.group_size
        raise ConfigError(
            f"budget_docs: {c.budget_docs} is not a multiple of group_size {c.group_size}; "
            f"use {lo} or {lo + c.group_size} so the trial trains on exactly budget_docs documents"
        )
    _need(c.eval_every_docs > 0, "eval_every_docs", f"must be > 0, got {c.eval_every_docs}")
    _need(c.temperature > 0, "temperature", f"must be > 0, got {c.temperature}")
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
        _need(imp.per_system is None or imp.per_system >= 1, "candidates.imported.per_system", f"must be >= 1, got {imp.per_system}")
        _need(imp.teacher_margin is None or c.teacher.scores, "candidates.imported.teacher_margin",
              "the margin filter needs a teacher (teacher.kind is 'none')")
    if c.sampler.name == "teacher" and not c.teacher.scores:
        raise ConfigError("sampler.name: the 'teacher' sampler needs a teacher (teacher.kind is 'none')")
    lo, hi = c.sampler.depth
    _need(0 <= lo < hi, "sampler.depth", f"needs 0 <= lo < hi, got {[lo, hi]}")
    _need(hi - lo >= c.group_size - 1 or (c.sampler.name == "random"), "sampler.depth",
          f"range {[lo, hi]} holds fewer than group_size-1 = {c.group_size - 1} negatives")
    _need(c.sampler.skip_top >= 0, "sampler.skip_top", "must be >= 0")
    _need(0.0 <= c.augment.negatives_mix <= 1.0, "augment.negatives_mix", f"must be in [0, 1], got {c.augment.negatives_mix}")
    if c.augment.in_batch:
        _need(c.student.kind == "bi", "augment.in_batch", "in-batch negatives need a bi-encoder student (student.kind: bi)")
    if c.augment.entropy_band is not None:
        blo, bhi = c.augment.entropy_band
        _need(0.0 <= blo < bhi <= 1.0, "augment.entropy_band", f"needs 0 <= lo < hi <= 1 (quantiles), got {[blo, bhi]}")
        _need(c.teacher.scores, "augment.entropy_band", "needs a teacher")
    _need(0.0 < c.data.dev_fraction < 1.0, "data.dev_fraction", f"must be in (0, 1), got {c.data.dev_fraction}")
    _need(c.data.max_query_length > 0 and c.data.max_doc_length > 0, "data.max_doc_length", "lengths must be > 0")
    if c.student.num_layers is not None:
        _need(c.student.num_layers >= 1, "student.num_layers", f"must be >= 1, got {c.student.num_layers}")
    o = c.optim
    _need(o.lr > 0, "optim.lr", f"must be > 0, got {o.lr}")
    _need(o.batch_size >= 1, "optim.batch_size", f"must be >= 1, got {o.batch_size}")
    _need(o.grad_accum >= 1, "optim.grad_accum", f"must be >= 1, got {o.grad_accum}")
    _need(0.0 <= o.warmup_fraction < 1.0, "optim.warmup_fraction", f"must be in [0, 1), got {o.warmup_fraction}")
    _need(o.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {o.weight_decay}")
    _need(o.max_grad_norm is None or o.max_grad_norm > 0, "optim.max_grad_norm",
          f"must be > 0 (or null: no clipping), got {o.max_grad_norm}")
    _need(c.seed >= 0, "seed", f"must be >= 0, got {c.seed}")
    _need(c.student.scale is None or c.student.scale > 0, "student.scale", f"must be > 0 (or null: the default), got {c.student.scale}")
    _need(c.augment.in_batch_weight > 0, "augment.in_batch_weight", f"must be > 0, got {c.augment.in_batch_weight}")
    _need(c.eval.dev_depth >= 1 and c.eval.depth >= 1, "eval.dev_depth" if c.eval.dev_depth < 1 else "eval.depth",
          f"must be >= 1, got {c.eval.dev_depth if c.eval.dev_depth < 1 else c.eval.depth}")
    _need(c.eval.batch_tokens >= c.data.max_query_length + c.data.max_doc_length, "eval.batch_tokens",
          f"{c.eval.batch_tokens} tokens cannot hold one query and one passage "
          f"({c.data.max_query_length} + {c.data.max_doc_length} tokens)")
    _need(c.data.eval_max_queries is None or c.data.eval_max_queries >= 1, "data.eval_max_queries",
          f"must be >= 1 (or null: every judged query), got {c.data.eval_max_queries}")
    _need(c.candidates.random_pool >= 1 and c.candidates.bm25_depth >= 1, "candidates.random_pool" if c.candidates.random_pool < 1
          else "candidates.bm25_depth", "must be >= 1")
    _need(0.0 < c.eval.diameter_alpha <= 1.0, "eval.diameter_alpha", f"must be in (0, 1], got {c.eval.diameter_alpha}")
    _need(c.eval.probe_queries >= 1, "eval.probe_queries", "must be >= 1")
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


def reference_rows(cls: type = TrialConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """``(dotted key, default, help)`` for every config field (the README's config reference)."""
    rows = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        hints = typing.get_type_hints(cls)
        tp = hints[f.name]
        optional = typing.get_origin(tp) in (typing.Union, types.UnionType)
        inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)] if optional else []  # Optional[a section]: its keys
        if dataclasses.is_dataclass(tp) or inner:
            if inner:
                rows.append((key, "null", f.metadata.get("help", "")))
            rows.extend(reference_rows(tp if not inner else inner[0], key + "."))
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = "(required)"
        rows.append((key, json.dumps(_to_plain(default)), f.metadata.get("help", "")))
    return rows
