"""Shared preparation: everything trials of one data configuration read, built once, opened in O(1).

``prepare(cfg, …)`` builds (or finds) the data of a trial configuration, widened to every sampler
and student of a sweep, and returns a ``Prepared``. The expensive work is a set of cached stages,
each fanned out through an executor (``LocalExecutor`` here; Ray tasks in a sweep):

====================  =======================================================  ==============
stage                 work                                                     shards
====================  =======================================================  ==============
corpus                the corpus read once into a memory-mapped ``TextStore``  1 task
bm25_index            tantivy index of the corpus                              1 task, threads
bm25_candidates       BM25 top-k of every query (block-max WAND)               query ranges
doc/query_tokens      every student's and neural teacher's tokenizer           doc ranges
doc/query_embeddings  bi-encoder embeddings (dense candidates, bi teacher)     GPU tasks
dense_candidates      exact inner-product top-k per document range, merged     doc ranges
teacher_raw           teacher scores of exactly the pairs samplers can emit    pair/query ranges
====================  =======================================================  ==============

Then the small, per-query assembly (positives, random pools, negative lists without judged
documents, the teacher's order of the BM25 pool, evaluation pools and the reference metrics of
BM25 and the teacher) is written into one ``prepared`` stage with a ``manifest.json``. A trial
opens that folder: memory maps and a few kilobytes of JSON, nothing that grows with the corpus.

The ``prepared`` stage is addressed by what the configuration says and by cheap fingerprints of
the inputs (dataset ids, local files' stat, teacher files' memoised digests), so finding it again
reads no collection.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from .errors import RanksweepError
from .config import TrialConfig
from .data.bm25 import bm25_candidates, bm25_index
from .data.cache import cache_root, file_stat_key, key_hash, stage
from .data.candidates import Candidates, EncoderSpec, dense_candidates
from .data.imports import ImportedTable, candidate_lists, import_table
from .data.collections import Collection, QuerySet, _parse_local, load_collection, query_set, sample_queries, split_train_dev
from .data.samplers import SAMPLERS, SamplingPools, random_pools, teacher_order, without
from .data.store import Ragged, TextStore
from .data.tokens import TokenStore, doc_tokens, query_tokens, tokenizer_key
from .executor import LOCAL, Executor
from .metrics import evaluate
from .models import load_tokenizer
from .teachers import TEACHERS, ScoreTable, ScoringContext, TeacherError, TeacherScores, file_digest, rerank_run, teacher_key, teacher_scores

logger = logging.getLogger(__name__)

#: bump when the layout of the ``prepared`` stage changes
LAYOUT = 2
REFERENCE_METRICS = "reference_metrics.json"


class NotPrepared(RanksweepError, RuntimeError):
    """A trial needs shared data that its preparation did not build (the message says what)."""


@dataclass(frozen=True)
class PrepareOptions:
    """Resources and shard sizes of preparation tasks (sized for MS MARCO by default)."""

    cpus: int = field(default_factory=lambda: os.cpu_count() or 1)  # CPUs of one task: BM25 threads, neural work on CPUs
    gpus: float = 0  # GPUs of one neural task (embeddings, cross-encoder scoring); 0 runs them on CPUs
    shard_docs: int = 500_000  # documents per tokenizing / embedding / dense-search task
    shard_queries: int = 50_000  # queries per BM25 retrieval / pair-scoring task
    shard_pairs: int = 2_000_000  # (query, document) pairs per neural teacher task


def components_of(samplers: Iterable[str], negatives_mix: bool) -> set[str]:
    """Candidate components whose teacher scores the samplers (and negatives mixing) need."""
    comps = {"bm25"}
    for s in samplers:
        comps |= set(SAMPLERS[s].components)
    if negatives_mix:
        comps.add("random")
    return comps


# ---------------------------------------------------------------------------------------------
# What a trial opens
# ---------------------------------------------------------------------------------------------


@dataclass
class EvalSet:
    """An evaluation query set: its queries, judgements, BM25 pools and teacher scores.

    ``rows[j]`` is the row of query ``qids[j]`` in ``bm25`` and ``teacher`` (the dev set shares
    the training queries' tables; every other set has its own).
    """

    name: str
    qids: list[str]
    qrels: dict[str, dict[str, int]]
    rows: np.ndarray
    bm25: Candidates
    docs: TextStore  # the corpus (document ids)
    corpus_key: str
    teacher: Optional[TeacherScores] = None

    def pools(self, depth: int) -> list[np.ndarray]:
        """The BM25 top-``depth`` of each query, in ``qids`` order."""
        return [self.bm25.ranked(int(r))[:depth] for r in self.rows]


@dataclass
class Prepared:
    """Everything trials of one data configuration share, opened from a ``prepared`` stage folder."""

    folder: Path
    root: Path
    manifest: "Manifest"
    docs: TextStore
    queries: QuerySet  # training queries, then dev queries
    train_rows: np.ndarray  # rows of the training queries that have a (teacher-scored) positive
    pools: SamplingPools
    teacher: Optional[TeacherScores]
    dev: EvalSet
    evals: list[EvalSet]
    reference_metrics: dict[str, float] = field(default_factory=dict)

    @property
    def corpus_key(self) -> str:
        return self.manifest.corpus["key"]

    @property
    def components(self) -> set[str]:
        return set(self.manifest.components)

    def _stage(self, rel: str) -> Path:
        return self.root / rel

    def check(self, cfg: TrialConfig) -> None:
        """Raise ``NotPrepared`` unless everything ``cfg`` trains and evaluates with was prepared."""
        need = components_of([cfg.sampler.name], cfg.augment.negatives_mix > 0)
        missing = sorted(need - self.components)
        if missing:
            raise NotPrepared(f"sampler {cfg.sampler.name!r} needs candidate component(s) {missing} that were not prepared "
                              f"(prepared: {sorted(self.components)}); prepare with every sampler of the sweep")
        if cfg.sampler.name == "imported" and self.pools.imported is None:
            raise NotPrepared("sampler 'imported' needs candidates.imported, which this preparation did not import")
        if cfg.sampler.name == "teacher" and self.pools.teacher is None:
            raise NotPrepared("sampler 'teacher' needs the teacher's order of the BM25 pool, which was not prepared")
        if key_hash(teacher_key(cfg.teacher, self.root)) != self.manifest.teacher:
            raise NotPrepared("this preparation was made for another teacher than the trial's")

    def token_stores(self, tokenizer) -> tuple[str, dict]:
        tk = tokenizer_key(tokenizer)
        entry = self.manifest.tokens.get(tk)
        if entry is None:
            raise NotPrepared(f"no tokens were prepared for the student tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} "
                              f"(key {tk}); prepare with every student model of the sweep")
        return tk, entry

    def doc_tokens(self, tokenizer, corpus_key: str, max_length: int) -> TokenStore:
        _, entry = self.token_stores(tokenizer)
        rel = entry["docs"].get(f"{corpus_key}:{max_length}")
        if rel is None:
            raise NotPrepared(f"no document tokens of corpus {corpus_key} at max length {max_length} were prepared")
        return TokenStore.load(self._stage(rel))

    def query_tokens(self, tokenizer, set_name: str, max_length: int) -> TokenStore:
        _, entry = self.token_stores(tokenizer)
        rel = entry["queries"].get(f"{set_name}:{max_length}")
        if rel is None:
            raise NotPrepared(f"no query tokens of {set_name!r} at max length {max_length} were prepared")
        return TokenStore.load(self._stage(rel))

    @classmethod
    def open(cls, folder: str | Path) -> "Prepared":
        """Open a ``prepared`` stage: memory maps and JSON only (no collection is read)."""
        folder = Path(folder)
        if not (folder / "manifest.json").exists():
            raise NotPrepared(f"no prepared data at {folder} (manifest.json missing); on a cluster the cache must be shared "
                              "storage mounted at the same path on every node")
        m = Manifest.read(folder)
        root = folder.parents[1]
        docs = TextStore.load(root / m.corpus["store"])
        queries = QuerySet(m.queries["key"], TextStore.load(root / m.queries["store"]))
        teacher = _open_teacher(root, m.teacher_tables) if m.teacher_tables else None
        bm25 = Candidates.load(root / m.bm25)
        dev_q = json.loads((folder / "dev.json").read_text())
        n_train = m.queries["n_train"]
        dev = EvalSet("dev", dev_q["qids"], dev_q["qrels"], np.arange(n_train, n_train + len(dev_q["qids"])), bm25, docs,
                      m.corpus["key"], teacher)
        evals = []
        for e in m.evals:
            info = json.loads((folder / f"eval-{e['name']}.json").read_text())
            evals.append(EvalSet(e["name"], info["qids"], info["qrels"], np.arange(len(info["qids"])), Candidates.load(root / e["bm25"]),
                                 TextStore.load(root / e["corpus_store"]), e["corpus_key"],
                                 _open_teacher(root, e["teacher_tables"]) if e["teacher_tables"] else None))
        reference = folder / REFERENCE_METRICS  # absent only while the build computes it from this very object
        return cls(folder, root, m, docs, queries, np.load(folder / "train_rows.npy"), SamplingPools.load(folder / "pools"),
                   teacher, dev, evals, json.loads(reference.read_text()) if reference.exists() else {})


def _open_teacher(root: Path, tables: dict[str, str]) -> TeacherScores:
    return TeacherScores({name: ScoreTable.load(root / rel) for name, rel in tables.items()})


# ---------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------


def dataset_fingerprint(dataset_id: str) -> str:
    """A cheap identity of a dataset's version: the id, plus the stat of a local folder's files."""
    if not dataset_id.startswith("local:"):
        return dataset_id
    folder, split = _parse_local(dataset_id)
    files = [folder / "corpus.jsonl", folder / "queries.jsonl", folder / "qrels" / f"{split}.tsv"]
    return dataset_id + "|" + "|".join(file_stat_key(f) if f.exists() else "missing" for f in files)


def _rel(root: Path, p: Path) -> str:
    return str(Path(p).resolve().relative_to(root))


def positives_of(col: Collection, qids: Sequence[str], docs: TextStore) -> Ragged:
    """Judged relevant documents (relevance > 0) of each query, as sorted document indices."""
    pairs = [(i, d) for i, q in enumerate(qids) for d, r in col.qrels.get(q, {}).items() if r > 0]
    idx = docs.index_of([d for _, d in pairs])
    rows: list[list[int]] = [[] for _ in qids]
    for (i, _), x in zip(pairs, idx.tolist()):
        if x >= 0:
            rows[i].append(x)
    return Ragged.from_rows([np.unique(np.asarray(r, dtype=np.int64)) for r in rows])


def _reads_files(t) -> bool:
    return any(TEACHERS[m.kind].files(m) for m in (t, *t.members))


def imported_negatives(table: ImportedTable, imp, positives: Ragged, teacher: Optional[TeacherScores]) -> Ragged:
    """The ``imported`` sampler's lists: the chosen systems' negatives, margin-filtered, ``per_system`` of each, merged by rank.

    The filter (sentence-transformers' ``ce_score_margin``, as the seed code of arXiv 2505.21058 applies it): a
    negative is kept only if the teacher scores it at most ``min(teacher scores of the query's positives) - margin``;
    a query without a scored positive keeps no negative (its groups are filled from the random pool, counted).
    """
    keep = None
    if imp.teacher_margin is not None:
        def keep(row: int, docs: np.ndarray) -> np.ndarray:
            pos = positives.row(row)
            ps = teacher.lookup([row], pos[None, :].astype(np.int64))[0] if len(pos) else np.zeros(0, np.float32)
            ps = ps[~np.isnan(ps)]
            if not len(ps):
                return np.zeros(len(docs), dtype=bool)
            ns = teacher.lookup([row], docs[None, :])[0]
            return ~np.isnan(ns) & (ns <= ps.min() - imp.teacher_margin)
    lists = candidate_lists(table, range(len(positives)), list(imp.systems) or None, imp.per_system, keep)
    out = without(lists, positives)
    empty = int((out.lengths() == 0).sum())
    if empty:
        logger.warning("imported candidates: %d of %d training queries have no negative from %s%s; their groups are filled from the "
                       "random pool", empty, len(out), imp.path, " after the teacher-margin filter" if keep is not None else "")
    return out


def _restrict_to_scored(pools: SamplingPools, teacher: TeacherScores, comps: set[str]) -> tuple[SamplingPools, np.ndarray]:
    """Drop documents without a teacher score (an imported teacher with ``on_missing: drop``).

    Returns the pools and the training rows that still have a scored positive.
    """
    rows = {name: [] for name in ("positives", "bm25", "random", "dense", "imported")}
    for i in range(len(pools)):
        scored = teacher.scored(i)
        ok = lambda a: a[np.isin(a, scored)]  # noqa: E731
        rows["positives"].append(ok(pools.positives.row(i)))
        rows["bm25"].append(ok(pools.bm25.row(i)))
        rows["random"].append(ok(pools.random.row(i)) if "random" in comps else pools.random.row(i))
        if pools.dense is not None:
            rows["dense"].append(ok(pools.dense.row(i)) if "dense" in comps else pools.dense.row(i))
        if pools.imported is not None:
            rows["imported"].append(ok(pools.imported.row(i)))
    out = SamplingPools(Ragged.from_rows(rows["positives"]), Ragged.from_rows(rows["bm25"]), Ragged.from_rows(rows["random"]),
                        Ragged.from_rows(rows["dense"]) if pools.dense is not None else None, pools.teacher,
                        Ragged.from_rows(rows["imported"]) if pools.imported is not None else None)
    keep = np.nonzero(out.positives.lengths() > 0)[0]
    dropped = len(pools) - len(keep)
    if dropped:
        logger.warning("%d training queries dropped: the teacher scores none of their positives", dropped)
    if not len(keep):
        raise TeacherError("no training query has a teacher-scored positive; check the teacher file's query ids")
    return out, keep


def student_models(cfg: TrialConfig, students: Optional[Iterable[str]]) -> list[str]:
    return sorted(set(students or ()) | {cfg.student.model})


def prepare(
    cfg: TrialConfig,
    samplers: Optional[Iterable[str]] = None,
    negatives_mix: Optional[bool] = None,
    students: Optional[Iterable[str]] = None,
    executor: Optional[Executor] = None,
    options: Optional[PrepareOptions] = None,
) -> Prepared:
    """Build or find the shared data of ``cfg``: splits, candidates, pools, teacher scores, tokens, eval pools.

    ``samplers``/``negatives_mix``/``students`` widen what is prepared beyond ``cfg`` (a sweep
    passes every sampler and student model of its space so that one preparation serves all
    trials). ``executor`` runs the sharded work (default: in this process); ``options`` gives
    the tasks' resources and shard sizes.
    """
    root = cache_root(cfg.data.cache_dir)
    executor = executor or LOCAL
    options = options or PrepareOptions()
    d = cfg.data
    samplers = set(samplers or ()) | {cfg.sampler.name}
    mix = bool(cfg.augment.negatives_mix > 0) if negatives_mix is None else negatives_mix
    comps = components_of(samplers, mix)
    if "imported" in comps and cfg.candidates.imported is None:
        raise ValueError(f"samplers {sorted(samplers)} include 'imported' but candidates.imported is not set")
    if "dense" in comps and cfg.candidates.dense_depth <= 0:
        raise ValueError(f"samplers {sorted(samplers)} need dense candidates but candidates.dense_depth is 0")
    models = student_models(cfg, students)
    tokenizers = {m: load_tokenizer(m) for m in models}
    tkey = key_hash(teacher_key(cfg.teacher, root))
    key = {
        "layout": LAYOUT,
        "train": dataset_fingerprint(d.train),
        "evals": [dataset_fingerprint(x) for x in d.eval],
        "data": d.model_dump(exclude={"cache_dir"}),
        "candidates": cfg.candidates.model_dump(),
        "teacher": tkey,
        "components": sorted(comps),
        "eval": {"dev_depth": cfg.eval.dev_depth, "depth": cfg.eval.depth, "measures": list(cfg.eval.measures),
                 "selection": cfg.eval.selection, "batch_tokens": cfg.eval.batch_tokens},
        "students": sorted(tokenizer_key(t) for t in tokenizers.values()),
    }
    if "imported" in comps:  # the file's content, not only its path
        key["imported"] = file_digest(cfg.candidates.imported.path, root)

    def build(tmp: Path) -> None:
        _build(cfg, root, tmp, comps, tokenizers, tkey, executor, options)

    return Prepared.open(stage(root, "prepared", key, build))


@dataclass
class Manifest:
    """The schema of a ``prepared`` stage's ``manifest.json``; every path is relative to the cache root."""

    layout: int
    train: str  # dataset id of the training collection
    corpus: dict  # {"key", "count", "store"}
    queries: dict  # {"key", "store", "n_train", "n_dev"}: training queries, then dev queries
    bm25: str  # BM25 candidates of every query
    dense: Optional[str]  # dense candidates, when a sampler needs them
    components: list[str]  # candidate components prepared (``components_of``)
    teacher: str  # key hash of the teacher the scores are of
    teacher_tables: dict[str, str]  # component -> score table
    evals: list[dict]  # per eval set: {"name", "dataset", "bm25", "corpus_key", "corpus_store", "teacher_tables"}
    tokens: dict[str, dict]  # tokenizer key -> {"model", "docs": {"corpus key:max length": store}, "queries": {"set:max length": store}}

    def write(self, folder: Path) -> None:
        (folder / "manifest.json").write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def read(cls, folder: Path) -> "Manifest":
        return cls(**json.loads((folder / "manifest.json").read_text()))


@dataclass
class _Training:
    """The training side of a build: its collection, queries (training, then dev), candidates and sampling pools."""

    collection: Collection
    dev: list[str]
    queries: QuerySet
    docs: TextStore
    positives: Ragged  # every query's judged documents in the corpus
    n_train: int
    bm25: Candidates
    dense: Optional[Candidates]
    pools: SamplingPools


def _build_training(cfg: TrialConfig, root: Path, comps: set[str], executor: Executor,
                    o: PrepareOptions) -> tuple[_Training, list[Collection]]:
    """Split, stores, BM25 (and dense) candidates, and the training queries' pools without judged documents; the eval
    collections, their corpora read."""
    d = cfg.data
    train = load_collection(d.train)
    split = split_train_dev(train, d.dev_fraction, d.split_seed)
    all_q = split.train + split.dev
    n_train = len(split.train)
    queries = query_set(train.queries, all_q, root)
    docs = train.corpus.store(root, executor)
    eval_cols = [load_collection(did) for did in d.eval]
    for col in eval_cols:  # every corpus read, each line parsed, before the first expensive stage (BM25, teacher)
        col.corpus.store(root, executor)
    positives = positives_of(train, all_q, docs)
    bm25_index(root, train.corpus, executor, o.cpus)
    bm25 = bm25_candidates(root, train.corpus, queries, cfg.candidates.bm25_depth, executor, o.cpus, o.shard_queries)
    dense = None
    if "dense" in comps:
        spec = EncoderSpec(cfg.candidates.dense_model, "mean", "cos", d.max_doc_length, d.max_query_length)
        dense = dense_candidates(root, train.corpus, queries, cfg.candidates.dense_depth, spec, executor, o.gpus, o.cpus, o.shard_docs,
                                 o.shard_queries)
    train_pos = Ragged.from_rows([positives.row(i) for i in range(n_train)])
    rand = random_pools(train_pos, train.corpus.count, cfg.candidates.random_pool, cfg.candidates.seed)
    bm25_neg = without([bm25.ranked(i) for i in range(n_train)], train_pos)
    dense_neg = without([dense.ranked(i) for i in range(n_train)], train_pos) if dense is not None else None
    pools = SamplingPools(train_pos, bm25_neg, rand, dense_neg)
    return _Training(train, split.dev, queries, docs, positives, n_train, bm25, dense, pools), eval_cols


def _build_teacher(cfg: TrialConfig, root: Path, comps: set[str], t: _Training, ctx: ScoringContext,
                   executor: Executor) -> tuple[Optional[TeacherScores], np.ndarray]:
    """Imported candidates and the teacher's scores of every pair a sampler can emit; completes ``t.pools``.

    Returns the teacher's scores (None without a teacher) and the training rows left to train on.
    """
    n_train, bm25, rand = t.n_train, t.bm25, t.pools.random
    n_all = n_train + len(t.dev)
    imp, imported = cfg.candidates.imported, None
    if "imported" in comps or _reads_files(cfg.teacher):
        # an imported file's query id is unknown only if the collection lacks it (not if it is just not a training query)
        ctx.known_queries[t.queries.key] = query_set(t.collection.queries, sorted(t.collection.queries), root)
    if "imported" in comps:
        imported = import_table(root, imp.path, imp.format, file_digest(imp.path, root), t.collection.corpus, t.queries,
                                ctx.known_queries[t.queries.key], imp.on_unknown, executor)
    teacher = None
    train_rows = np.arange(n_train)
    if cfg.teacher.scores:
        empty = np.zeros(0, dtype=np.int64)
        # A query matching fewer documents than the BM25 depth has a short list, and samplers fill
        # its groups from the random pool: that pool is scored with the query's BM25 component.
        width = bm25.doc_idx.shape[1]
        short = lambda i: i < n_train and len(bm25.ranked(i)) < width  # noqa: E731
        components = {"bm25": Ragged.from_rows([
            np.union1d(np.union1d(bm25.ranked(i), t.positives.row(i)), rand.row(i) if short(i) else empty) for i in range(n_all)])}
        if "dense" in comps:
            components["dense"] = Ragged.from_rows([t.dense.ranked(i) for i in range(n_all)])
        if "random" in comps:
            components["random"] = Ragged.from_rows([rand.row(i) if i < n_train else empty for i in range(n_all)])
        if imported is not None:  # every listed candidate of the chosen systems: the margin filter reads their scores
            listed = candidate_lists(imported, range(n_train), list(imp.systems) or None,
                                     imp.per_system if imp.teacher_margin is None else None)
            components["imported"] = Ragged.from_rows([np.sort(listed.row(i)) if i < n_train else empty for i in range(n_all)])
        teacher = teacher_scores(cfg.teacher, ctx, t.collection.corpus, t.queries, components)
    if imported is not None:
        t.pools.imported = imported_negatives(imported, imp, t.pools.positives, teacher)
    if teacher is not None:
        if _reads_files(cfg.teacher):
            t.pools, train_rows = _restrict_to_scored(t.pools, teacher, comps)
        t.pools.teacher = teacher_order(t.pools.bm25, teacher)
    train_rows = train_rows[t.pools.positives.lengths()[train_rows] > 0]
    if not len(train_rows):
        raise ValueError(f"{cfg.data.train}: no training query has a judged relevant document in the corpus")
    return teacher, train_rows


def _build_evals(cfg: TrialConfig, root: Path, out: Path, eval_cols: list[Collection], ctx: ScoringContext, executor: Executor,
                 o: PrepareOptions) -> tuple[list[dict], dict[str, QuerySet]]:
    """Each eval collection's sampled judged queries, BM25 candidates and teacher scores; its manifest entries and query sets."""
    d = cfg.data
    entries, query_sets = [], {}
    for did, col in zip(d.eval, eval_cols):
        qids = sample_queries(col.judged_queries(), d.eval_max_queries, seed=d.split_seed)
        qset = query_set(col.queries, qids, root)
        store = col.corpus.store(root, executor)
        bm25_index(root, col.corpus, executor, o.cpus)
        cand = bm25_candidates(root, col.corpus, qset, cfg.eval.depth, executor, o.cpus, o.shard_queries)
        es_teacher = None
        ctx.bm25_candidates[qset.key] = cand
        if cfg.teacher.scores:
            es_teacher = teacher_scores(cfg.teacher, ctx, col.corpus, qset,
                                        {"bm25": Ragged.from_rows([cand.ranked(i) for i in range(len(qids))])})
        name = col.name
        (out / f"eval-{name}.json").write_text(json.dumps({"qids": qids, "qrels": {q: col.qrels.get(q, {}) for q in qids}}))
        entries.append({"name": name, "dataset": did, "bm25": _rel(root, cand.folder), "corpus_key": col.corpus.key,
                        "corpus_store": _rel(root, store.folder),
                        "teacher_tables": {k: _rel(root, t.folder) for k, t in es_teacher.tables.items()} if es_teacher else {}})
        query_sets[name] = qset
    return entries, query_sets


def _build_tokens(cfg: TrialConfig, root: Path, tokenizers: dict, corpora: dict, query_sets: dict[str, QuerySet], executor: Executor,
                  o: PrepareOptions) -> dict[str, dict]:
    """Every student tokenizer's tokens of every corpus and query set a trial reads."""
    d = cfg.data
    tokens: dict[str, dict] = {}
    for model, tok in tokenizers.items():
        entry: dict[str, dict] = {"model": model, "docs": {}, "queries": {}}
        for ck, corpus in corpora.items():
            ts = doc_tokens(root, corpus, model, tok, d.max_doc_length, executor, o.shard_docs)
            entry["docs"][f"{ck}:{d.max_doc_length}"] = _rel(root, ts.folder)
        for name, qs in query_sets.items():
            ts = query_tokens(root, qs, model, tok, d.max_query_length, executor, o.shard_queries)
            entry["queries"][f"{name}:{d.max_query_length}"] = _rel(root, ts.folder)
        tokens[tokenizer_key(tok)] = entry
    return tokens


def _build(cfg: TrialConfig, root: Path, out: Path, comps: set[str], tokenizers: dict, tkey: str, executor: Executor,
           options: PrepareOptions) -> None:
    """The steps of a ``prepared`` stage, in order: training data, teacher, eval sets, tokens, manifest; then the
    reference metrics, an evaluation of the opened stage."""
    d, o = cfg.data, options
    t, eval_cols = _build_training(cfg, root, comps, executor, o)
    ctx = ScoringContext(root, d.max_query_length, d.max_doc_length, cfg.eval.batch_tokens, executor, o.cpus, o.gpus,
                         o.shard_pairs, o.shard_docs, o.shard_queries, bm25_candidates={t.queries.key: t.bm25})
    teacher, train_rows = _build_teacher(cfg, root, comps, t, ctx, executor)
    t.pools.save(out / "pools")
    np.save(out / "train_rows.npy", train_rows.astype(np.int64))
    (out / "dev.json").write_text(json.dumps({"qids": t.dev, "qrels": {q: t.collection.qrels.get(q, {}) for q in t.dev}}))
    evals, eval_queries = _build_evals(cfg, root, out, eval_cols, ctx, executor, o)
    corpora = {t.collection.corpus.key: t.collection.corpus} | {c.corpus.key: c.corpus for c in eval_cols}
    tokens = _build_tokens(cfg, root, tokenizers, corpora, {"train": t.queries} | eval_queries, executor, o)
    Manifest(
        layout=LAYOUT, train=d.train,
        corpus={"key": t.collection.corpus.key, "count": t.collection.corpus.count, "store": _rel(root, t.docs.folder)},
        queries={"key": t.queries.key, "store": _rel(root, t.queries.store.folder), "n_train": t.n_train, "n_dev": len(t.dev)},
        bm25=_rel(root, t.bm25.folder), dense=_rel(root, t.dense.folder) if t.dense is not None else None,
        components=sorted(comps), teacher=tkey,
        teacher_tables={name: _rel(root, x.folder) for name, x in teacher.tables.items()} if teacher is not None else {},
        evals=evals, tokens=tokens,
    ).write(out)
    # reference metrics: BM25 and the teacher on the very pools the students re-rank
    metrics = reference_metrics(cfg, Prepared.open(out))
    (out / REFERENCE_METRICS).write_text(json.dumps(metrics, indent=1, sort_keys=True))


def reference_metrics(cfg: TrialConfig, p: Prepared) -> dict[str, float]:
    """BM25 and teacher effectiveness on dev and every eval set (re-ranking the same pools)."""
    out: dict[str, float] = {}
    sel = cfg.eval.selection
    for es, depth, measures in [(p.dev, cfg.eval.dev_depth, (sel,))] + [(e, cfg.eval.depth, cfg.eval.measures) for e in p.evals]:
        pools = es.pools(depth)
        bm25_run = {q: dict(zip(es.docs.ids_of(pool), (-np.arange(len(pool), dtype=float)).tolist())) for q, pool in zip(es.qids, pools)}
        agg, _ = evaluate(bm25_run, es.qrels, measures)
        out.update({f"bm25/{es.name}/{m}": v for m, v in agg.items()})
        if es.teacher is not None:
            agg, _ = evaluate(rerank_run(es.teacher, es.docs, es.rows, es.qids, pools), es.qrels, measures)
            out.update({f"teacher/{es.name}/{m}": v for m, v in agg.items()})
    return out

