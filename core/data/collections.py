"""Collections through ir_datasets ids, plus local folders in BEIR format.

A dataset id is either an ``ir_datasets`` id (``beir/scifact/train``, ``msmarco-passage/train/judged``)
or ``local:<folder>:<split>`` naming a BEIR-format folder (``corpus.jsonl``, ``queries.jsonl``,
``qrels/<split>.tsv``). Documents are streamed, never held all at once by the collection; the
corpus is identified by a key (ir_datasets namespace and size, or the hash of the local corpus
file) that names every cache derived from it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from ..errors import ConfigError, RanksweepError
from ..executor import LOCAL
from ..registry import unknown_name_message
from .cache import cache_root, fingerprint, stage
from .store import TextStore

if TYPE_CHECKING:
    from ..executor import Executor

logger = logging.getLogger(__name__)


class DatasetError(RanksweepError, ValueError):
    """A dataset id cannot be resolved or its files are malformed."""


def _parse_local(dataset_id: str) -> tuple[Path, str]:
    body = dataset_id[len("local:"):]
    if ":" not in body:
        raise DatasetError(f"local dataset id must be local:<folder>:<split>, got {dataset_id!r}")
    folder, split = body.rsplit(":", 1)
    return Path(folder).expanduser(), split


def check_dataset_id(dataset_id: str, path: str = "dataset") -> None:
    """Raise ``ConfigError`` naming ``path`` unless ``dataset_id`` resolves (without loading data)."""
    if not isinstance(dataset_id, str) or not dataset_id:
        raise ConfigError(f"{path}: expected a dataset id, got {dataset_id!r}")
    if dataset_id.startswith("local:"):
        try:
            folder, split = _parse_local(dataset_id)
        except DatasetError as e:
            raise ConfigError(f"{path}: {e}") from None
        for need in (folder / "corpus.jsonl", folder / "queries.jsonl", folder / "qrels" / f"{split}.tsv"):
            if not need.exists():
                raise ConfigError(f"{path}: local collection {dataset_id!r} lacks {need}")
        return
    import ir_datasets

    known = list(ir_datasets.registry._registered)  # noqa: SLF001 (public API has no membership test)
    if dataset_id not in known:
        raise ConfigError(f"{path}: " + unknown_name_message("dataset id", dataset_id, known))


@dataclass
class Corpus:
    """The documents of a collection in a fixed order: index i is the i-th document of the source.

    ``key`` names every cache derived from the corpus (two dataset ids over one corpus share it).
    The documents are read once, into the ``corpus`` stage (a ``TextStore``: ids and texts,
    memory-mapped); everything downstream reads shards of that store, never the source again.
    """

    key: str
    count: int
    dataset_id: str

    def iter_docs(self) -> Iterator[tuple[str, str]]:
        """Yield ``(doc_id, text)`` from the source in index order (text = title + body)."""
        return iter_source_docs(self.dataset_id)

    def store(self, root: Optional[Path] = None, executor: Optional["Executor"] = None) -> TextStore:
        """The corpus as a ``TextStore`` (built once per corpus, as one task of ``executor``)."""
        root = root or cache_root()
        executor = executor or LOCAL

        def build(tmp: Path) -> None:
            n = executor.map(_write_corpus_store, [(self.dataset_id, str(tmp))], cpus=1, label="corpus store")[0]
            if n != self.count:
                raise DatasetError(f"{self.dataset_id}: read {n} documents, expected {self.count}")

        return TextStore.load(stage(root, "corpus", {"corpus": self.key, "count": self.count}, build))


def _write_corpus_store(job: tuple[str, str]) -> int:
    dataset_id, folder = job
    return TextStore.write(Path(folder), iter_source_docs(dataset_id))


def iter_source_docs(dataset_id: str) -> Iterator[tuple[str, str]]:
    """``(doc_id, text)`` of a dataset's corpus, straight from its source, in index order."""
    if dataset_id.startswith("local:"):
        folder, _ = _parse_local(dataset_id)
        for d in _read_jsonl(folder / "corpus.jsonl"):
            if "_id" not in d:
                raise DatasetError(f"{folder / 'corpus.jsonl'}: a document without '_id'")
            yield str(d["_id"]), f"{d.get('title', '') or ''} {d.get('text', '') or ''}".strip()
        return
    import ir_datasets

    for d in ir_datasets.load(dataset_id).docs_iter():
        yield d.doc_id, _doc_text(d)


@dataclass
class Collection:
    """Queries, relevance judgements and the corpus of one dataset id."""

    dataset_id: str
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    corpus: Corpus

    @property
    def name(self) -> str:
        """A short name usable as a metric key (``beir/scifact/test`` → ``beir-scifact-test``)."""
        if self.dataset_id.startswith("local:"):
            folder, split = _parse_local(self.dataset_id)
            return f"{folder.name}-{split}"
        return self.dataset_id.replace("/", "-")

    def judged_queries(self) -> list[str]:
        """Query ids with at least one relevant document (relevance > 0), in query order."""
        return [q for q in self.queries if any(r > 0 for r in self.qrels.get(q, {}).values())]


_FALLBACK_WARNED: set[str] = set()


def _default_text(item) -> Optional[str]:
    """``item.default_text()`` (ir_datasets' text of a document or query), or None where its type lacks a field it
    expects; the first such failure of each type is logged as a warning, naming the fields used instead."""
    if not hasattr(item, "default_text"):
        return None
    try:
        return item.default_text()
    except (AttributeError, KeyError, TypeError, IndexError) as e:
        kind = type(item).__name__
        if kind not in _FALLBACK_WARNED:
            _FALLBACK_WARNED.add(kind)
            logger.warning("%s.default_text() failed (%s: %s); using its title and text fields instead", kind, type(e).__name__, e)
        return None


def _doc_text(doc) -> str:
    text = _default_text(doc)
    if text is not None:
        return text
    title = getattr(doc, "title", "") or ""
    body = getattr(doc, "text", "") or ""
    return f"{title} {body}".strip()


def _query_text(q) -> str:
    text = _default_text(q)
    return text if text is not None else getattr(q, "text", "")


def load_collection(dataset_id: str) -> Collection:
    """Load ``dataset_id`` (ir_datasets id or ``local:<folder>:<split>``).

    Raises:
        DatasetError: unknown id, missing files or a dataset without queries/qrels/docs.
    """
    if dataset_id.startswith("local:"):
        return _load_local(dataset_id)
    import ir_datasets

    try:
        ds = ir_datasets.load(dataset_id)
    except KeyError:
        known = list(ir_datasets.registry._registered)  # noqa: SLF001
        raise DatasetError(unknown_name_message("dataset id", dataset_id, known)) from None
    for need in ("docs", "queries", "qrels"):
        if not getattr(ds, f"has_{need}")():
            raise DatasetError(f"dataset {dataset_id!r} has no {need}; ranksweep needs docs, queries and qrels")
    queries = {q.query_id: _query_text(q) for q in ds.queries_iter()}
    qrels: dict[str, dict[str, int]] = {}
    for r in ds.qrels_iter():
        qrels.setdefault(r.query_id, {})[r.doc_id] = int(r.relevance)
    try:
        namespace = ds.docs_namespace()
    except (AttributeError, TypeError):  # some ir_datasets handlers (cranfield) break here
        namespace = dataset_id
    count = ds.docs_count()
    key = hashlib.sha256(f"irds|{namespace}|{count}|{ds.docs_cls().__name__}".encode()).hexdigest()[:20]
    return Collection(dataset_id, queries, qrels, Corpus(key, count, dataset_id))


def _read_jsonl(path: Path) -> Iterator[dict]:
    with path.open() as f:
        for n, line in enumerate(f, start=1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise DatasetError(f"{path}:{n}: malformed JSON line ({e.msg})") from None


def _load_local(dataset_id: str) -> Collection:
    folder, split = _parse_local(dataset_id)
    corpus_file, queries_file, qrels_file = folder / "corpus.jsonl", folder / "queries.jsonl", folder / "qrels" / f"{split}.tsv"
    for need in (corpus_file, queries_file, qrels_file):
        if not need.exists():
            raise DatasetError(f"local collection {dataset_id!r} lacks {need}")
    queries = {str(q["_id"]): q.get("text", "") for q in _read_jsonl(queries_file)}
    qrels: dict[str, dict[str, int]] = {}
    with qrels_file.open() as f:
        for n, line in enumerate(f, start=1):
            parts = line.rstrip("\n").split("\t")
            if n == 1 and parts[0] in ("query-id", "query_id", "qid"):
                continue
            if len(parts) < 3:
                raise DatasetError(f"{qrels_file}:{n}: expected 'query-id<TAB>corpus-id<TAB>score'")
            qrels.setdefault(parts[0], {})[parts[1]] = int(float(parts[2]))
    qrels = {q: r for q, r in qrels.items() if q in queries}
    key, count = local_corpus_key(corpus_file)
    return Collection(dataset_id, queries, qrels, Corpus(key, count, dataset_id))


def local_corpus_key(corpus_file: Path) -> tuple[str, int]:
    """Content hash and document count of a local ``corpus.jsonl``, memoised by the file's stat.

    The content hash names the caches (two copies of one corpus share them); computing it reads
    the whole file, so it happens once per file version and is remembered in the cache
    (``fingerprints/``); every later process reads the memo instead.
    """
    m = fingerprint(corpus_file, "corpus", lambda: {"count": sum(1 for _ in _read_jsonl(corpus_file))})
    return m["key"], int(m["count"])


@dataclass
class QuerySet:
    """Queries in a fixed order as a ``TextStore`` (ids and texts), with the key that names it."""

    key: str
    store: TextStore

    def __len__(self) -> int:
        return len(self.store)

    @property
    def ids(self) -> list[str]:
        return self.store.ids_of(np.arange(len(self.store)))


def query_set(queries: dict[str, str], qids: list[str], root: Optional[Path] = None) -> QuerySet:
    """The queries ``qids`` (texts from ``queries``) as a cached ``QuerySet``."""
    h = hashlib.sha256()
    for q in qids:
        h.update(q.encode("utf-8") + b"\x1f" + queries[q].encode("utf-8") + b"\x1e")
    key = h.hexdigest()[:20]
    folder = stage(root or cache_root(), "queries", {"queries": key, "n": len(qids)},
                   lambda tmp: TextStore.write(tmp, ((q, queries[q]) for q in qids)))
    return QuerySet(key, TextStore.load(folder))


@dataclass(frozen=True)
class Split:
    """Training and dev query ids of the training collection (seeded, disjoint)."""

    train: list[str]
    dev: list[str]


def split_train_dev(collection: Collection, dev_fraction: float, seed: int) -> Split:
    """Hold out a seeded ``dev_fraction`` of the judged training queries for selection."""
    judged = collection.judged_queries()
    if len(judged) < 2:
        raise DatasetError(f"{collection.dataset_id}: needs at least 2 judged queries to split train/dev, has {len(judged)}")
    order = judged[:]
    random.Random(seed).shuffle(order)
    n_dev = min(max(1, round(dev_fraction * len(order))), len(order) - 1)
    dev_set = set(order[:n_dev])
    return Split([q for q in judged if q not in dev_set], [q for q in judged if q in dev_set])


def sample_queries(query_ids: list[str], max_queries: Optional[int], seed: int = 0) -> list[str]:
    """A seeded sample of at most ``max_queries`` ids, in their original order."""
    if max_queries is None or len(query_ids) <= max_queries:
        return list(query_ids)
    rng = np.random.default_rng(seed)
    keep = set(rng.choice(len(query_ids), size=max_queries, replace=False).tolist())
    return [q for i, q in enumerate(query_ids) if i in keep]
