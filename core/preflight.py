"""Every input a trial needs, checked before any stage is built: one line naming the problem, not minutes later.

A trial reads collections (the training one and every evaluation one), models (the student, every
model teacher) and teacher files. Each is opened here and its first records are parsed, so that a
missing model, an unreadable corpus or a malformed first line is refused before BM25, teacher
scoring or training cost anything. A parse error further into a file is found when its corpus is
stored, which preparation does for every collection before the first expensive stage, and it names
``file:line`` there.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from pathlib import Path
from typing import Iterable, Optional

from .config import TeacherConfig, TrialConfig
from .data.collections import DatasetError, _parse_local
from .errors import ConfigError
from .models import resolve_model

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
    if t.model and t.kind in ("bi", "cross"):
        yield t.model, f"{where}.model"
    for i, m in enumerate(t.members):
        yield from teacher_models(m, f"{where}.members[{i}]")


def check_teacher_files(t: TeacherConfig, where: str = "teacher") -> None:
    if t.kind == "file" and t.path and not Path(t.path).expanduser().is_file():
        raise ConfigError(f"{where}.path: no such file: {t.path}")
    for i, m in enumerate(t.members):
        check_teacher_files(m, f"{where}.members[{i}]")


def _first_lines(path: Path, n: int) -> None:
    """Parse the first ``n`` JSON lines of ``path``; each needs an ``_id``."""
    try:
        with path.open() as f:
            for line_no, line in enumerate(itertools.islice(f, n), start=1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DatasetError(f"{path}:{line_no}: malformed JSON line ({e.msg})") from None
                if not isinstance(rec, dict) or "_id" not in rec:
                    raise DatasetError(f"{path}:{line_no}: a record without '_id'")
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot be read ({e})") from None


def check_collection(dataset_id: str, where: str, records: int = FIRST_RECORDS) -> None:
    """``DatasetError`` naming ``where`` unless the collection opens and its first documents and queries parse."""
    if dataset_id.startswith("local:"):
        folder, _ = _parse_local(dataset_id)
        for f in ("corpus.jsonl", "queries.jsonl"):
            _first_lines(folder / f, records)
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


def check_inputs(cfg: TrialConfig, students: Optional[Iterable[str]] = None) -> None:
    """Every collection, model and teacher file ``cfg`` needs (and each model of ``students``), before any work."""
    check_collection(cfg.data.train, "data.train")
    for i, did in enumerate(cfg.data.eval):
        check_collection(did, f"data.eval[{i}]")
    models = {cfg.student.model: "student.model"}
    for m in students or ():
        models.setdefault(m, "student.model (a value of the space)")
    for m, where in teacher_models(cfg.teacher):
        models.setdefault(m, where)
    for m, where in models.items():
        check_model(m, where)
    check_teacher_files(cfg.teacher)
