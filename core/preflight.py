"""Every input a trial needs, checked before any stage is built: one line naming the problem, not minutes later.

A trial reads collections (the training one and every evaluation one) and models (the student, every
model teacher) and imported files (teacher scores, negatives). Each is opened here and its first records are parsed, so that a
missing model, an unreadable corpus or a malformed first line is refused before BM25, teacher
scoring or training cost anything. A parse error further into a file is found when its corpus is
stored, which preparation does for every collection before the first expensive stage, and it names
``file:line`` there.
"""

from __future__ import annotations

import itertools
import logging
import os
from pathlib import Path
from typing import Iterable, Optional

from .config import TeacherConfig, TrialConfig
from .data.collections import DatasetError, _parse_local, _read_jsonl
from .data.imports import check_head
from .errors import ConfigError, TeacherError
from .models import resolve_model
from .teachers import TEACHERS

FIRST_RECORDS = 100


def _offline() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes", "on") for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def check_model(name: str, where: str) -> None:
    """``ConfigError`` naming ``where`` unless ``name`` is a model folder or a hub model that can be loaded now."""
    path = resolve_model(name)
    if os.path.isdir(path):
        if not (Path(path) / "config.json").exists():
            raise ConfigError(f"{where}: {path} is a folder without config.json, not a transformers model")
        return
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        if _offline():
            why = (f"it is not a local folder and not in the Hugging Face cache ({os.environ.get('HF_HOME', '~/.cache/huggingface')}), "
                   "and HF_HUB_OFFLINE=1 forbids downloading it")
        else:
            why = f"it is not a local folder and the Hugging Face Hub did not give it ({str(e).splitlines()[0][:160]})"
        raise ConfigError(f"{where}: model {name!r} is not available: {why}; make it available offline with "
                          f"`hf download {name}` on a machine with internet (into the HF_HOME every node reads), "
                          f"or set {where} to a local model folder") from None


def teacher_models(t: TeacherConfig, where: str = "teacher") -> Iterable[tuple[str, str]]:
    """``(model, config path)`` of every model a teacher (and its ensemble members) loads."""
    for model in TEACHERS[t.kind].models(t):
        yield model, f"{where}.model"
    for i, m in enumerate(t.members):
        yield from teacher_models(m, f"{where}.members[{i}]")


def _first_records(path: Path, n: int) -> None:
    """The first ``n`` records of a JSON-lines file parse (``file:line`` named as the full read names it) and have an ``_id``."""
    try:
        for line_no, rec in enumerate(itertools.islice(_read_jsonl(path), n), start=1):
            if not isinstance(rec, dict) or "_id" not in rec:
                raise DatasetError(f"{path}: record {line_no} has no '_id'")
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot be read ({e})") from None


def check_collection(dataset_id: str, where: str, records: int = FIRST_RECORDS) -> None:
    """``DatasetError`` naming ``where`` unless the collection opens and its first documents and queries parse."""
    if dataset_id.startswith("local:"):
        folder, _ = _parse_local(dataset_id)
        for f in ("corpus.jsonl", "queries.jsonl"):
            _first_records(folder / f, records)
        return
    import ir_datasets

    level = logging.root.manager.disable
    logging.disable(logging.INFO)  # ir_datasets' loggers are each set to INFO: "[INFO] Opening ..." is not news here
    try:
        ds = ir_datasets.load(dataset_id)
        for it in (ds.docs_iter(), ds.queries_iter()):
            for _ in itertools.islice(it, records):
                pass
    except KeyError:
        return  # an unknown id is the config check's to name
    except Exception as e:  # noqa: BLE001 (ir_datasets raises per source: download, parse, missing file)
        raise DatasetError(f"{where}: dataset {dataset_id!r} cannot be read: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
                           + ("; offline, point IR_DATASETS_HOME at a ready copy of its cache" if "download" in str(e).lower() else "")
                           ) from None
    finally:
        logging.disable(level)


def teacher_files(t: TeacherConfig, where: str = "teacher") -> Iterable[tuple[str, str, str]]:
    """``(path, format, config path)`` of every file a teacher (and its ensemble members) reads."""
    for path, fmt in TEACHERS[t.kind].files(t):
        yield path, fmt, f"{where}.path"
    for i, m in enumerate(t.members):
        yield from teacher_files(m, f"{where}.members[{i}]")


def files_of(cfg: TrialConfig) -> dict[str, tuple[str, str]]:
    """``{path: (format, config path)}`` of every imported file ``cfg`` reads (teacher scores, candidates)."""
    out = {p: (f, w) for p, f, w in teacher_files(cfg.teacher)}
    imp = cfg.candidates.imported
    if imp is not None:
        out.setdefault(imp.path, (imp.format, "candidates.imported.path"))
    return out


def check_file(path: str, fmt: str, where: str, records: int = FIRST_RECORDS) -> None:
    """``TeacherError`` unless the file's format is known (or detected) and its first records parse."""
    try:
        check_head(path, fmt, records)
    except TeacherError as e:
        raise TeacherError(f"{e} (the file of {where})") from None


def inputs_of(cfg: TrialConfig, students: Optional[Iterable[str]] = None) -> tuple[dict[str, str], dict[str, str]]:
    """``({dataset id: config path}, {model: config path})`` that ``cfg`` (and each model of ``students``) reads."""
    collections = {cfg.data.train: "data.train"}
    for i, did in enumerate(cfg.data.eval):
        collections.setdefault(did, f"data.eval[{i}]")
    models = {cfg.student.model: "student.model"}
    for m in students or ():
        models.setdefault(m, "student.model (a value of the space)")
    for m, where in teacher_models(cfg.teacher):
        models.setdefault(m, where)
    return collections, models


def check_inputs(*cfgs: TrialConfig, students: Optional[Iterable[str]] = None) -> None:
    """Every collection, model and imported file the configs need, each checked once, before any work (a file's
    format detected and its first records parsed; its existence is the config's own check)."""
    collections: dict[str, str] = {}
    models: dict[str, str] = {}
    files: dict[str, tuple[str, str]] = {}
    for cfg in cfgs:
        c, m = inputs_of(cfg, students)
        for k, v in c.items():
            collections.setdefault(k, v)
        for k, v in m.items():
            models.setdefault(k, v)
        for k, v in files_of(cfg).items():
            files.setdefault(k, v)
    for path, (fmt, where) in files.items():
        check_file(path, fmt, where)
    for did, where in collections.items():
        check_collection(did, where)
    for m, where in models.items():
        check_model(m, where)
