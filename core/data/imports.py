"""Imported negatives and teacher scores: the public files the field distils from, streamed into memory-mapped tables.

Formats (registry ``FORMATS``; ``format: auto`` reads the file's first bytes, not its name):

=========  ========================================================================  ======  ==========
format     records                                                                   scores  candidates
=========  ========================================================================  ======  ==========
json       ``{qid: {docid: score}}`` (the seed code of arXiv 2505.21058)              yes     no
trec       TREC run ``qid Q0 docid rank score tag`` (e.g. Rank-DistiLLM runs)         yes     the run
sbert      sentence-transformers ``msmarco-hard-negatives.jsonl.gz``:                  if      per system
           ``{"qid", "pos": [pid], "neg": {system: [pid | {"pid", "ce-score"}]}}``      given
pickle     cross-encoder score pickle ``scores[qid][pid] -> float`` (int keys)        yes     no
tsv        Hofstätter et al.'s ``pos_score neg_score qid pos_pid neg_pid``,             yes     file order
           or the Margin-MSE variant ``margin qid pos_pid neg_pid``
jsonl      Tevatron ``{"query_id", "positive_passages": [{"docid", "score"?}],         if      file order
           "negative_passages"}``; FlagEmbedding ``{"query", "pos", "neg",              given
           "pos_scores", "neg_scores"}`` (texts: matched to the collection by text)
colbert    ColBERTv2 ``examples.json`` lines ``[qid, [pid, score], ...]``              yes     file order
=========  ========================================================================  ======  ==========

Every reader streams: a file of 160M pairs is read line by line (a pickle opcode by opcode, never
unpickled: only dict, int, float and str are admitted, since unpickling runs code), in chunks
whose ids are mapped to row numbers by binary search in the memory-mapped stores. The chunks are
sorted on disk by query row in blocks, as executor tasks, into one ``ImportedTable`` stage:

- ``pairs`` (``Ragged``, per query row, sorted documents) with ``scores`` (NaN: listed without a
  score), for teacher lookups of exactly the pairs a trial's pools hold;
- ``lists`` (``Ragged``, per query row, in (system, rank) order) with ``lists_system``: the
  ranked candidates each system of the file gave, for the ``imported`` sampler.

Margins only (the Margin-MSE TSV): each negative gets ``-margin`` and its positive ``0``. Every
loss here is shift-invariant within a group (``kl``, ``listnet`` over a softmax; ``margin_mse`` and
``ranknet`` on differences), so a group whose negatives share the positive's anchor trains exactly
as with the absolute scores. A query whose negatives are anchored to different positives mixes
bases; ``import.json`` counts such queries (``anchors_mixed``).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import math
import pickletools
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..errors import TeacherError
from ..executor import LOCAL, Executor
from ..progress import Progress
from ..registry import Registry
from .cache import stage
from .store import Ragged, TextStore

logger = logging.getLogger(__name__)

#: the system of a judged positive listed by the file (scored, never a candidate)
POSITIVE = -1
#: the system of a pair a scores-only file (json, pickle) lists: scored, not a ranked candidate
SCORED = -2
CHUNK = 1 << 20  # records per chunk of the first pass


def open_text(path: Path):
    """The file as text, gunzipped when it starts with the gzip magic (whatever its name)."""
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def open_binary(path: Path):
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


# ---------------------------------------------------------------------------------------------
# Records: what every reader yields, a chunk at a time
# ---------------------------------------------------------------------------------------------


@dataclass
class Records:
    """A chunk of ``(qid, pid, score, system, rank)`` records; ``line[i]`` is where record i was read (0: unknown)."""

    qids: list = field(default_factory=list)
    pids: list = field(default_factory=list)
    scores: list = field(default_factory=list)  # float, NaN: no score given
    system: list = field(default_factory=list)  # POSITIVE or a system index
    rank: list = field(default_factory=list)  # rank within its system's list (0 first); -1 for positives
    line: list = field(default_factory=list)
    by_text: bool = False  # qids and pids are texts (FlagEmbedding files), matched to the collection by text

    def add(self, qid, pid, score: float, system: int, rank: int, line: int) -> None:
        self.qids.append(qid)
        self.pids.append(pid)
        self.scores.append(score)
        self.system.append(system)
        self.rank.append(rank)
        self.line.append(line)

    def extend(self, qid, pids: list, scores: list, system: int, line: int) -> None:
        """Many documents of one query (ranks in list order for a candidate system, -1 otherwise)."""
        n = len(pids)
        self.qids.extend([qid] * n)
        self.pids.extend(pids)
        self.scores.extend(scores)
        self.system.extend([system] * n)
        self.rank.extend(range(n) if system >= 0 else [-1] * n)
        self.line.extend([line] * n)

    def __len__(self) -> int:
        return len(self.qids)


class Reader:
    """One format's streaming reader. ``records`` yields chunks; ``systems`` names the candidate lists it saw."""

    name = ""
    scores = True  # the format carries teacher scores
    candidates = False  # the format carries ranked candidate lists

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.systems: list[str] = []
        self._system_ids: dict[str, int] = {}
        self.anchors_mixed = 0

    def system(self, name: str) -> int:
        i = self._system_ids.get(name)
        if i is None:
            i = self._system_ids[name] = len(self.systems)
            self.systems.append(name)
        return i

    def error(self, line: int, what: str) -> TeacherError:
        return TeacherError(f"{self.path}:{line}: {what}")

    def score(self, value, line: int, qid, pid) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise self.error(line, f"the score of query {qid!r}, document {pid!r} is {value!r}, not a number") from None
        v = float(value)
        if not math.isfinite(v):
            raise self.error(line, f"the score of query {qid!r}, document {pid!r} is {v}: teacher scores must be finite numbers")
        return v

    def scores_of(self, values: list, line: int, qid, pids: list) -> list:
        """``values`` as floats, checked at once (the first bad one named as ``score`` names it)."""
        try:
            a = np.asarray(values, dtype=np.float64)
            if a.ndim == 1 and np.isfinite(a).all() and not any(isinstance(v, bool) for v in values):
                return a.tolist()
        except (TypeError, ValueError):
            pass
        return [self.score(v, line, qid, p) for v, p in zip(values, pids)]

    def records(self, chunk: int = CHUNK) -> Iterator[Records]:
        raise NotImplementedError

    @classmethod
    def sniff(cls, head: bytes, first: Optional[str]) -> bool:
        """Whether a file starting with ``head`` (raw, gunzipped) whose first non-empty line is ``first`` is this format."""
        return False


def _lines(reader: Reader) -> Iterator[tuple[int, str]]:
    with open_text(reader.path) as f:
        for n, line in enumerate(f, start=1):
            if line.strip():
                yield n, line


def _json_line(reader: Reader, n: int, line: str, what: str):
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise reader.error(n, f"not valid JSON ({e.msg}); expected {what}") from None


class TrecReader(Reader):
    name, candidates = "trec", True

    @classmethod
    def sniff(cls, head, first):
        parts = (first or "").split()
        return len(parts) == 6 and _is_float(parts[4]) and _is_float(parts[3])

    def records(self, chunk=CHUNK):
        out = Records()
        for n, line in _lines(self):
            parts = line.split()
            if len(parts) != 6 or not _is_float(parts[4]) or not _is_float(parts[3]):
                raise self.error(n, "expected a TREC run line 'qid Q0 docid rank score tag'")
            q, _, d, rank, s, tag = parts
            out.add(q, d, self.score(s, n, q, d), self.system(tag), int(float(rank)), n)
            if len(out) >= chunk:
                yield out
                out = Records()
        yield out


class SbertReader(Reader):
    name, candidates = "sbert", True

    @classmethod
    def sniff(cls, head, first):
        try:
            rec = json.loads(first or "")
        except json.JSONDecodeError:
            return False
        return isinstance(rec, dict) and "qid" in rec and isinstance(rec.get("neg"), dict)

    def _entry(self, e, n: int, qid):
        if isinstance(e, dict):
            pid = e.get("pid", e.get("corpus_id"))
            if pid is None:
                raise self.error(n, f"a passage entry {e!r} has no 'pid'")
            s = e.get("ce-score", e.get("score"))
            return str(pid), (self.score(s, n, qid, pid) if s is not None else math.nan)
        if isinstance(e, (str, int)) and not isinstance(e, bool):
            return str(e), math.nan
        raise self.error(n, f"a passage entry {e!r} is neither a pid nor an object with 'pid'")

    def records(self, chunk=CHUNK):
        out = Records()
        what = '{"qid", "pos": [pid], "neg": {system: [pid, ...]}}'
        for n, line in _lines(self):
            rec = _json_line(self, n, line, what)
            if not isinstance(rec, dict) or "qid" not in rec or not isinstance(rec.get("neg", {}), dict):
                raise self.error(n, f"expected {what}")
            q = str(rec["qid"])
            for e in rec.get("pos", []):
                pid, s = self._entry(e, n, q)
                out.add(q, pid, s, POSITIVE, -1, n)
            for name, negs in rec.get("neg", {}).items():
                if not isinstance(negs, list):
                    raise self.error(n, f"the negatives of system {name!r} are not a list")
                sid = self.system(str(name))
                for r, e in enumerate(negs):
                    pid, s = self._entry(e, n, q)
                    out.add(q, pid, s, sid, r, n)
            if len(out) >= chunk:
                yield out
                out = Records()
        yield out


class JsonReader(Reader):
    """``{qid: {docid: score}}``, read one query object at a time (``raw_decode`` over a sliding buffer)."""

    name = "json"

    @classmethod
    def sniff(cls, head, first):
        s = (first or "").lstrip()
        if not s.startswith("{"):
            return False
        try:
            rec = json.loads(s)
        except json.JSONDecodeError:
            return True  # a JSON object spanning lines: the whole-file mapping
        return isinstance(rec, dict) and all(isinstance(v, dict) for v in rec.values())

    def records(self, chunk=CHUNK):
        dec = json.JSONDecoder()
        what = "expected {qid: {docid: score}}"
        with open_text(self.path) as f:
            buf, pos, line, eof, counted = "", 0, 1, False, 0  # line: the line of buf[counted]

            def fill() -> bool:
                nonlocal buf, pos, line, eof, counted
                if eof:
                    return False
                more = f.read(1 << 22)
                if not more:
                    eof = True
                    return False
                lineno()
                buf, pos, counted = buf[pos:] + more, 0, 0
                return True

            def lineno(at: Optional[int] = None) -> int:
                nonlocal line, counted
                at = pos if at is None else at
                if at > counted:
                    line += buf.count("\n", counted, at)
                    counted = at
                return line

            def skip_ws() -> str:
                nonlocal pos
                while True:
                    while pos < len(buf) and buf[pos] in " \t\r\n":
                        pos += 1
                    if pos < len(buf) or not fill():
                        return buf[pos] if pos < len(buf) else ""

            def value():
                nonlocal pos
                skip_ws()
                while True:
                    try:
                        v, end = dec.raw_decode(buf, pos)
                        if end == len(buf) and not eof and fill():  # a number may go on in the next read
                            continue
                        pos = end
                        return v
                    except json.JSONDecodeError as e:
                        if fill():
                            continue
                        raise self.error(lineno(e.pos), f"not valid JSON ({e.msg}); {what}") from None

            if skip_ws() != "{":
                raise self.error(lineno(), what)
            pos += 1
            out = Records()
            if skip_ws() == "}":
                yield out
                return
            while True:
                skip_ws()
                here = lineno()
                q = value()
                if not isinstance(q, str) or skip_ws() != ":":
                    raise self.error(here, what)
                pos += 1
                skip_ws()
                docs = value()
                if not isinstance(docs, dict):
                    raise self.error(here, f"the value of query {q!r} is not an object {{docid: score}}")
                pids = list(docs)
                out.extend(q, pids, self.scores_of(list(docs.values()), here, q, pids), SCORED, here)
                if len(out) >= chunk:
                    yield out
                    out = Records()
                c = skip_ws()
                pos += 1
                if c == "}":
                    break
                if c != ",":
                    raise self.error(lineno(), f"expected ',' or '}}' after query {q!r}; {what}")
            yield out


class TsvReader(Reader):
    """Hofstätter et al. (arXiv 2010.02666) ``pos_score neg_score qid pos neg``; or ``margin qid pos neg``."""

    name, candidates = "tsv", True

    @classmethod
    def sniff(cls, head, first):
        parts = (first or "").split()
        return (len(parts) == 5 and _is_float(parts[0]) and _is_float(parts[1])) or (len(parts) == 4 and _is_float(parts[0])
                                                                                     and "." in parts[0])

    def records(self, chunk=CHUNK):
        out = Records()
        sid = self.system("tsv")
        seen: dict[str, int] = {}  # negatives listed so far per query: its rank in file order
        anchor: dict[str, str] = {}  # margins only: the positive each query's negatives are anchored to
        margins = None
        for n, line in _lines(self):
            parts = line.split()
            if margins is None:
                margins = len(parts) == 4
            if margins:
                if len(parts) != 4:
                    raise self.error(n, "expected 'margin qid pos_pid neg_pid' (tab-separated, as the first line)")
                m, q, p, d = parts
                m = self.score(m, n, q, d)
                ps, ds = 0.0, -m
                if anchor.setdefault(q, p) != p and anchor[q] != "":
                    anchor[q] = ""
                    self.anchors_mixed += 1
            else:
                if len(parts) != 5:
                    raise self.error(n, "expected 'pos_score neg_score qid pos_pid neg_pid' (tab-separated)")
                ps, ds, q, p, d = parts
                ps, ds = self.score(ps, n, q, p), self.score(ds, n, q, d)
            out.add(q, p, ps, POSITIVE, -1, n)
            r = seen.get(q, 0)
            seen[q] = r + 1
            out.add(q, d, ds, sid, r, n)
            if len(out) >= chunk:
                yield out
                out = Records()
        yield out


class JsonlReader(Reader):
    """Tevatron and FlagEmbedding training files."""

    name, candidates = "jsonl", True
    QID = ("query_id", "qid", "_id")
    POS = ("positive_passages", "pos")
    NEG = ("negative_passages", "neg")

    @classmethod
    def sniff(cls, head, first):
        try:
            rec = json.loads(first or "")
        except json.JSONDecodeError:
            return False
        return isinstance(rec, dict) and any(k in rec for k in cls.POS + cls.NEG) and not isinstance(rec.get("neg"), dict)

    def _passage(self, e, n, q, by_text: bool):
        if isinstance(e, dict):
            pid = next((e[k] for k in ("docid", "doc_id", "pid", "id", "_id") if k in e), None)
            if pid is None:
                raise self.error(n, f"a passage {str(e)[:80]!r} has no 'docid'")
            s = e.get("score")
            return str(pid), (self.score(s, n, q, pid) if s is not None else math.nan)
        if isinstance(e, (str, int)) and not isinstance(e, bool):
            return str(e), math.nan
        raise self.error(n, f"a passage {e!r} is neither an id, a text nor an object with 'docid'")

    def records(self, chunk=CHUNK):
        out = Records()
        sid = self.system("neg")
        what = '{"query_id", "positive_passages", "negative_passages"} or {"query", "pos", "neg", "pos_scores", "neg_scores"}'
        for n, line in _lines(self):
            rec = _json_line(self, n, line, what)
            if not isinstance(rec, dict):
                raise self.error(n, f"expected {what}")
            qkey = next((k for k in self.QID if k in rec), None)
            by_text = qkey is None  # FlagEmbedding: a query and passages as texts
            if by_text and "query" not in rec:
                raise self.error(n, f"no query id ({', '.join(self.QID)}) and no 'query' text")
            if by_text != out.by_text and len(out):
                raise self.error(n, "records with query ids and records with only query texts are mixed")
            out.by_text = by_text
            q = str(rec["query"] if by_text else rec[qkey])
            for key_set, system in ((self.POS, POSITIVE), (self.NEG, sid)):
                key = next((k for k in key_set if k in rec), None)
                if key is None:
                    continue
                entries = rec[key]
                scores = rec.get(f"{key}_scores")  # FlagEmbedding: pos_scores / neg_scores beside the texts
                if not isinstance(entries, list) or (scores is not None and (not isinstance(scores, list) or len(scores) != len(entries))):
                    raise self.error(n, f"'{key}' must be a list{' and ' + key + '_scores one of the same length' if scores is not None else ''}")
                for r, e in enumerate(entries):
                    pid, s = self._passage(e, n, q, by_text)
                    if scores is not None:
                        s = self.score(scores[r], n, q, pid)
                    out.add(q, pid, s, system, r if system != POSITIVE else -1, n)
            if len(out) >= chunk:
                yield out
                out = Records(by_text=out.by_text)
        yield out


class ColbertReader(Reader):
    name, candidates = "colbert", True

    @classmethod
    def sniff(cls, head, first):
        return (first or "").lstrip().startswith("[")

    def records(self, chunk=CHUNK):
        out = Records()
        sid = self.system("examples")
        for n, line in _lines(self):
            rec = _json_line(self, n, line, "[qid, [pid, score], ...]")
            if not isinstance(rec, list) or len(rec) < 2 or isinstance(rec[0], (list, dict)):
                raise self.error(n, "expected [qid, [pid, score], ...]")
            q = str(rec[0])
            for r, e in enumerate(rec[1:]):
                if not isinstance(e, list) or len(e) < 2:
                    raise self.error(n, f"entry {r + 1} is {e!r}, not [pid, score]")
                out.add(q, str(e[0]), self.score(e[1], n, q, e[0]), sid, r, n)
            if len(out) >= chunk:
                yield out
                out = Records()
        yield out


class _ReadOnly:
    """``read`` and ``readline`` only: ``pickletools.genops`` asks a file with ``tell`` for it at every opcode (a seek in gzip)."""

    def __init__(self, f) -> None:
        self.read, self.readline = f.read, f.readline


class PickleReader(Reader):
    """``{qid: {pid: score}}`` pickles, interpreted opcode by opcode (``pickletools.genops``): never unpickled.

    Only the opcodes that build dicts of ints, floats and strings are admitted; a global, a call or
    any other object is refused with the opcode's name. Nothing is kept but the query being read,
    so memory does not grow with the file.
    """

    name = "pickle"
    ALLOWED = {
        "PROTO", "FRAME", "STOP", "MARK", "EMPTY_DICT", "SETITEM", "SETITEMS", "MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT",
        "GET", "BINGET", "LONG_BINGET", "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT",
        "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "STRING", "BINSTRING", "SHORT_BINSTRING",
    }

    @classmethod
    def sniff(cls, head, first):
        return head[:1] == b"\x80" or head[:1] == b"}"

    def records(self, chunk=CHUNK):
        out = Records()
        mark = object()
        stack: list = []
        memo: dict = {}
        depth_of: dict[int, tuple] = {}  # id(dict marker) -> (depth, qid)
        what = "expected a pickled {qid: {pid: score}}"
        with open_binary(self.path) as raw:
            f = _ReadOnly(io.BufferedReader(raw, buffer_size=1 << 20) if not isinstance(raw, io.BufferedReader) else raw)
            for op, arg, pos in pickletools.genops(f):
                name = op.name
                if name not in self.ALLOWED:
                    raise TeacherError(f"{self.path}: the pickle holds a {name} opcode (an object other than dict, int, "
                                       "float or str): refused; only dicts of numbers and strings are read from a pickle, since "
                                       "unpickling arbitrary objects runs code")
                if name in ("PROTO", "FRAME"):
                    continue
                if name == "STOP":
                    break
                if name == "MARK":
                    stack.append(mark)
                elif name == "EMPTY_DICT":
                    marker = [None]
                    if not stack:
                        depth_of[id(marker)] = (1, None)
                    else:
                        key = stack[-1]
                        if key is mark or isinstance(key, list):
                            raise TeacherError(f"{self.path}: a dict nested deeper than {{qid: {{pid: score}}}}; {what}")
                        depth_of[id(marker)] = (2, str(key))
                    stack.append(marker)
                elif name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
                    memo[len(memo) if name == "MEMOIZE" else arg] = stack[-1]
                elif name in ("GET", "BINGET", "LONG_BINGET"):
                    stack.append(memo[arg])
                elif name in ("SETITEM", "SETITEMS"):
                    if name == "SETITEMS":
                        k = len(stack) - 1 - stack[::-1].index(mark)
                        items, target = stack[k + 1:], stack[k - 1]
                        del stack[k:]
                    else:
                        items, target = stack[-2:], stack[-3]
                        del stack[-2:]
                    depth, qid = depth_of.get(id(target), (0, None)) if isinstance(target, list) else (0, None)
                    if depth == 2:
                        for pid, s in zip(items[::2], items[1::2]):
                            if isinstance(s, list):
                                raise TeacherError(f"{self.path}: a dict nested deeper than {{qid: {{pid: score}}}}; {what}")
                            out.add(qid, str(pid), self.score(s, 0, qid, pid), SCORED, -1, 0)
                        if len(out) >= chunk:
                            yield out
                            out = Records()
                    elif depth == 1:
                        for v in items[1::2]:
                            if not isinstance(v, list):
                                raise TeacherError(f"{self.path}: the value of query {items[0]!r} is {v!r}, not a dict; {what}")
                            depth_of.pop(id(v), None)
                    else:
                        raise TeacherError(f"{self.path}: items set on something other than a dict; {what}")
                else:  # a number or a string
                    stack.append(arg.decode("utf-8") if isinstance(arg, bytes) else arg)
            else:
                raise TeacherError(f"{self.path}: the pickle ends before its STOP opcode: truncated")
        yield out

    def score(self, value, line, qid, pid):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TeacherError(f"{self.path}: the score of query {qid!r}, document {pid!r} is {value!r}, not a number")
        v = float(value)
        if not math.isfinite(v):
            raise TeacherError(f"{self.path}: the score of query {qid!r}, document {pid!r} is {v}: teacher scores must be finite numbers")
        return v


def _is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


FORMATS: Registry[type[Reader]] = Registry("teacher/candidate file format")
for _r in (JsonReader, TrecReader, SbertReader, PickleReader, TsvReader, JsonlReader, ColbertReader):
    FORMATS.register(_r.name, _r)
#: ``auto`` tries these in order (the specific JSON shapes before the whole-file mapping)
SNIFF_ORDER = (PickleReader, SbertReader, JsonlReader, ColbertReader, JsonReader, TrecReader, TsvReader)


def detect(path: str | Path) -> str:
    """The format of ``path`` from its content (raises ``TeacherError`` naming the formats when none fits)."""
    p = Path(path)
    if not p.exists():
        raise TeacherError(f"file not found: {p}")
    try:
        with open_binary(p) as f:
            head = f.read(4096)
        first = None
        if not head[:1] == b"\x80":
            with open_text(p) as f:
                for line in f:
                    if line.strip():
                        first = line.strip()
                        break
    except (EOFError, OSError, zlib.error, UnicodeDecodeError) as e:
        raise TeacherError(f"{p}: cannot be read to its end: truncated or corrupt ({type(e).__name__}: {e})") from None
    for r in SNIFF_ORDER:
        if r.sniff(head, first):
            return r.name
    raise TeacherError(f"{p}: not a known teacher/candidate file (first line {str(first)[:80]!r}); known formats: {', '.join(FORMATS)} "
                       "(set format: explicitly if detection is wrong)")


def reader(path: str | Path, fmt: str = "auto") -> Reader:
    return FORMATS[detect(path) if fmt == "auto" else fmt](Path(path))


def check_head(path: str | Path, fmt: str = "auto", records: int = 100) -> str:
    """Detect the format and parse the first ``records`` records (``TeacherError`` naming file:line); the format."""
    r = reader(path, fmt)
    try:
        for chunk in r.records(chunk=records):
            if len(chunk) >= records:
                break
    except (EOFError, OSError, zlib.error, UnicodeDecodeError) as e:
        raise TeacherError(f"{path}: cannot be read to its end: truncated or corrupt ({type(e).__name__}: {e})") from None
    return r.name


# ---------------------------------------------------------------------------------------------
# The imported table
# ---------------------------------------------------------------------------------------------


@dataclass
class ImportedTable:
    """A file's records for the query rows of a ``QuerySet``: scores by (row, doc), ranked lists by system."""

    pairs: Ragged  # per row: sorted unique documents the file lists for the query
    scores: np.ndarray  # aligned with pairs.values; NaN: listed without a score
    lists: Ragged  # per row: candidates in (system, rank) order (positives left out)
    lists_system: np.ndarray  # aligned with lists.values: the system index
    info: dict
    folder: Optional[Path] = None

    @property
    def systems(self) -> list[str]:
        return self.info["systems"]

    @classmethod
    def load(cls, folder: Path) -> "ImportedTable":
        return cls(Ragged.load(folder, "pairs"), np.load(folder / "scores.npy", mmap_mode="r"), Ragged.load(folder, "lists"),
                   np.load(folder / "lists_system.npy", mmap_mode="r"), json.loads((folder / "import.json").read_text()), folder)

    def lookup(self, pools: Ragged, block: int = 1 << 22) -> np.ndarray:
        """Scores (aligned with ``pools.values``) of the pools' pairs; NaN where the file has none. Row blocks of
        about ``block`` pairs: memory does not grow with the file."""
        out = np.full(len(pools.values), np.nan, dtype=np.float32)
        n = len(pools)
        ip, tp = np.asarray(pools.indptr), np.asarray(self.pairs.indptr)
        a = 0
        while a < n:
            b = int(min(n, max(a + 1, np.searchsorted(tp, tp[a] + block, side="right") - 1)))
            b = int(min(b, max(a + 1, np.searchsorted(ip, ip[a] + block, side="right") - 1)))
            t_lo, t_hi, p_lo, p_hi = int(tp[a]), int(tp[b]), int(ip[a]), int(ip[b])
            if t_hi > t_lo and p_hi > p_lo:
                width = np.int64(max(int(np.max(self.pairs.values[t_lo:t_hi])), int(np.max(pools.values[p_lo:p_hi]))) + 1)
                tk = np.repeat(np.arange(a, b, dtype=np.int64), np.diff(tp[a:b + 1])) * width + np.asarray(self.pairs.values[t_lo:t_hi])
                pk = np.repeat(np.arange(a, b, dtype=np.int64), np.diff(ip[a:b + 1])) * width + np.asarray(pools.values[p_lo:p_hi])
                pos = np.minimum(np.searchsorted(tk, pk), len(tk) - 1)
                hit = tk[pos] == pk
                out[p_lo:p_hi][hit] = np.asarray(self.scores[t_lo:t_hi])[pos[hit]]
            a = b
        return out


@dataclass(frozen=True)
class ImportJob:
    path: str
    format: str
    corpus: str  # corpus TextStore folder
    queries: str  # the trial's query TextStore folder
    known: Optional[str]  # every query of the collection (a TextStore folder): an id outside it is unknown, not just unused
    on_unknown: str
    out: str  # work folder
    chunk: int = CHUNK


def _text_index(store: TextStore) -> tuple[np.ndarray, np.ndarray]:
    """Sorted 64-bit hashes of every text of ``store`` and the positions they sort from (for files that name passages by text)."""
    h = np.empty(len(store), dtype=np.uint64)
    step = 1 << 16
    for a in range(0, len(store), step):
        h[a:a + step] = [int.from_bytes(hashlib.blake2b(t.strip().encode("utf-8"), digest_size=8).digest(), "little")
                         for t in store.texts(a, a + step)]
    order = np.argsort(h, kind="stable")
    return h[order], order


def _by_text(index: tuple[np.ndarray, np.ndarray], texts: list[str]) -> np.ndarray:
    hashes, order = index
    want = np.array([int.from_bytes(hashlib.blake2b(t.strip().encode("utf-8"), digest_size=8).digest(), "little") for t in texts],
                    dtype=np.uint64)
    if not len(hashes):
        return np.full(len(texts), -1, dtype=np.int64)
    pos = np.minimum(np.searchsorted(hashes, want), len(hashes) - 1)
    return np.where(hashes[pos] == want, order[pos], -1).astype(np.int64)


def first_pass(job: ImportJob) -> dict:
    """Stream the file; map ids to rows; write chunks sorted by query row (``chunk-*.npz``); return the counts."""
    r = reader(job.path, job.format)
    docs, queries = TextStore.load(Path(job.corpus)), TextStore.load(Path(job.queries))
    known = TextStore.load(Path(job.known)) if job.known else None
    out = Path(job.out)
    counts = {"records": 0, "scored": 0, "kept": 0, "outside_queries": 0, "unknown_queries": 0, "unknown_docs": 0}
    examples: dict[str, tuple] = {}
    text_docs = text_queries = text_known = None
    progress = Progress(f"importing {job.path}", None, "records")
    n_chunks = 0
    try:
        for rec in r.records(job.chunk):
            if not len(rec):
                continue
            if rec.by_text:
                text_docs = text_docs or _text_index(docs)
                text_queries = text_queries or _text_index(queries)
                q, d = _by_text(text_queries, rec.qids), _by_text(text_docs, rec.pids)
            else:
                q, d = queries.index_of(rec.qids), docs.index_of(rec.pids)
            line = np.asarray(rec.line, dtype=np.int64)
            counts["records"] += len(rec)
            counts["scored"] += int((~np.isnan(np.asarray(rec.scores, dtype=np.float64))).sum())
            outside = q < 0
            unknown_q = np.zeros(len(q), dtype=bool)
            if known is not None and outside.any():  # outside the collection, not only outside the trial's queries
                where = np.nonzero(outside)[0]
                if rec.by_text:
                    text_known = text_known or _text_index(known)
                    k = _by_text(text_known, [rec.qids[i] for i in where])
                else:
                    k = known.index_of([rec.qids[i] for i in where])
                unknown_q[where[k < 0]] = True
            unknown_d = (d < 0) & ~outside
            counts["unknown_queries"] += int(unknown_q.sum())
            counts["outside_queries"] += int((outside & ~unknown_q).sum())
            counts["unknown_docs"] += int(unknown_d.sum())
            for kind, mask, ids in (("query", unknown_q, rec.qids), ("document", unknown_d, rec.pids)):
                if mask.any() and kind not in examples:
                    i = int(np.nonzero(mask)[0][0])
                    examples[kind] = (int(line[i]), ids[i][:80])
            if job.on_unknown == "error" and examples:
                kind, (ln, ident) = next(iter(examples.items()))
                where = f"{job.path}:{ln}" if ln else job.path
                what = "the corpus" if kind == "document" else "the collection's queries"
                raise TeacherError(f"{where}: {kind} {'text' if rec.by_text else 'id'} {ident!r} is not in {what}; "
                                   "set on_unknown: skip to count such records and leave them out")
            keep = ~outside & ~unknown_d
            q, d = q[keep].astype(np.int32), d[keep].astype(np.int32)
            order = np.argsort(q, kind="stable")
            np.savez(out / f"chunk-{n_chunks:05d}.npz", q=q[order], d=d[order],
                     s=np.asarray(rec.scores, dtype=np.float32)[keep][order],
                     sys=np.asarray(rec.system, dtype=np.int16)[keep][order], rank=np.asarray(rec.rank, dtype=np.int32)[keep][order])
            counts["kept"] += int(keep.sum())
            n_chunks += 1
            progress.update(len(rec))
    except (EOFError, OSError, zlib.error, UnicodeDecodeError) as e:  # gzip.BadGzipFile is an OSError
        raise TeacherError(f"{job.path}: cannot be read to its end: truncated or corrupt ({type(e).__name__}: {e})") from None
    return {"format": r.name, "systems": r.systems, "chunks": n_chunks, "anchors_mixed": r.anchors_mixed, **counts,
            "examples": {k: list(v) for k, v in examples.items()}}


@dataclass(frozen=True)
class MergeJob:
    folder: str
    chunks: int
    start: int  # query rows [start, stop)
    stop: int
    out: str


def merge_block(job: MergeJob) -> int:
    """Rows ``[start, stop)`` of every chunk, as the table's two orders: (row, doc) deduplicated, and (row, system, rank)."""
    parts = {k: [] for k in ("q", "d", "s", "sys", "rank")}
    for i in range(job.chunks):
        with np.load(Path(job.folder) / f"chunk-{i:05d}.npz") as z:
            q = z["q"]
            a, b = np.searchsorted(q, job.start), np.searchsorted(q, job.stop)
            for k in parts:
                parts[k].append(z[k][a:b])
    q, d, s, sys, rank = (np.concatenate(parts[k]) for k in ("q", "d", "s", "sys", "rank"))
    # scores: sorted by (row, doc); a pair listed twice keeps its first score (a later one only fills a missing score)
    order = np.lexsort((np.isnan(s), d, q))
    q1, d1, s1 = q[order], d[order], s[order]
    first = np.ones(len(q1), dtype=bool)
    first[1:] = (q1[1:] != q1[:-1]) | (d1[1:] != d1[:-1])
    np.save(f"{job.out}.pair_q.npy", q1[first])
    np.save(f"{job.out}.pair_d.npy", d1[first])
    np.save(f"{job.out}.pair_s.npy", s1[first])
    # lists: candidates (not positives) by (row, system, rank)
    cand = sys >= 0
    order = np.lexsort((d[cand], rank[cand], sys[cand], q[cand]))
    np.save(f"{job.out}.list_q.npy", q[cand][order])
    np.save(f"{job.out}.list_d.npy", d[cand][order])
    np.save(f"{job.out}.list_sys.npy", sys[cand][order])
    return job.stop - job.start


def _concat(paths: list[str], target: Path, dtype) -> int:
    """Concatenate .npy files into one, streaming (nothing of the whole held in memory)."""
    n = sum(int(np.load(p, mmap_mode="r").shape[0]) for p in paths)
    out = np.lib.format.open_memmap(target, mode="w+", dtype=dtype, shape=(n,))
    pos = 0
    for p in paths:
        a = np.load(p)
        out[pos:pos + len(a)] = a
        pos += len(a)
        out.flush()
        Path(p).unlink()
    del out
    return n


def _indptr(paths: list[str], n_rows: int) -> np.ndarray:
    counts = np.zeros(n_rows, dtype=np.int64)
    for p in paths:
        counts += np.bincount(np.load(p), minlength=n_rows)[:n_rows]
        Path(p).unlink()
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return indptr


def import_table(root: Path, path: str, fmt: str, file_key: str, corpus, queries, known=None, on_unknown: str = "error",
                 executor: Optional[Executor] = None, block_pairs: int = 8_000_000, chunk: int = CHUNK) -> ImportedTable:
    """The ``ImportedTable`` of ``path`` over the rows of ``queries`` (a ``QuerySet``), cached as a stage.

    ``known``: every query of the collection (a ``QuerySet``); a query id outside it is unknown (an error
    unless ``on_unknown`` is ``skip``), one inside it but not among ``queries`` is only left out.
    ``file_key`` identifies the file's content (its digest). The first pass streams the file in
    one task; sorting into rows runs as tasks over row blocks of about ``block_pairs`` records.
    """
    executor = executor or LOCAL
    docs = corpus.store(root, executor)
    key = {"file": file_key, "format": fmt, "corpus": corpus.key, "queries": queries.key, "known": known.key if known else None,
           "on_unknown": on_unknown, "version": 1}

    def build(tmp: Path) -> None:
        work = tmp / "work"
        work.mkdir()
        job = ImportJob(str(Path(path).resolve()), fmt, str(docs.folder), str(queries.store.folder),
                        str(known.store.folder) if known else None, on_unknown, str(work), chunk)
        (info,) = executor.map(first_pass, [job], cpus=1, label=f"import {Path(path).name}")
        n = len(queries)
        counts = np.zeros(n, dtype=np.int64)
        for i in range(info["chunks"]):
            with np.load(work / f"chunk-{i:05d}.npz") as z:
                counts += np.bincount(z["q"], minlength=n)[:n]
        blocks, a = [], 0
        cum = np.concatenate([[0], np.cumsum(counts)])
        while a < n:
            b = int(max(a + 1, np.searchsorted(cum, cum[a] + block_pairs, side="right") - 1))
            blocks.append((a, min(b, n)))
            a = min(b, n)
        jobs = [MergeJob(str(work), info["chunks"], a, b, str(work / f"block-{i:05d}")) for i, (a, b) in enumerate(blocks)]
        executor.map(merge_block, jobs, cpus=1, label=f"sorting {Path(path).name} ({len(jobs)} row blocks)")
        for i in range(info["chunks"]):
            (work / f"chunk-{i:05d}.npz").unlink()
        pairs_indptr = _indptr([f"{j.out}.pair_q.npy" for j in jobs], n)
        lists_indptr = _indptr([f"{j.out}.list_q.npy" for j in jobs], n)
        np.save(tmp / "pairs.indptr.npy", pairs_indptr)
        np.save(tmp / "lists.indptr.npy", lists_indptr)
        _concat([f"{j.out}.pair_d.npy" for j in jobs], tmp / "pairs.values.npy", np.int32)
        _concat([f"{j.out}.pair_s.npy" for j in jobs], tmp / "scores.npy", np.float32)
        _concat([f"{j.out}.list_d.npy" for j in jobs], tmp / "lists.values.npy", np.int32)
        _concat([f"{j.out}.list_sys.npy" for j in jobs], tmp / "lists_system.npy", np.int16)
        work.rmdir()
        info.update(pairs=int(pairs_indptr[-1]), listed=int(lists_indptr[-1]), queries_with_records=int((counts > 0).sum()))
        (tmp / "import.json").write_text(json.dumps(info, indent=1))
        skipped = info["unknown_queries"] + info["unknown_docs"]
        logger.info("imported %s (%s): %d records, %d pairs for %d of %d queries; %d records of other queries left out%s",
                    path, info["format"], info["records"], info["pairs"], info["queries_with_records"], n, info["outside_queries"],
                    f"; {skipped} records with unknown ids skipped ({info['unknown_queries']} queries, {info['unknown_docs']} documents)"
                    if skipped else "")

    return ImportedTable.load(stage(root, "imported", key, build))


def candidate_lists(table: ImportedTable, rows: range | np.ndarray, systems: Optional[list[str]] = None,
                    per_system: Optional[int] = None, keep: Optional[Callable[[int, np.ndarray], np.ndarray]] = None) -> Ragged:
    """Each row's candidates from ``systems`` (all: None), ``keep(row, docs)`` (a mask; e.g. the teacher margin filter) applied
    before the first ``per_system`` of each system are taken; merged by rank across systems (ties: system order), deduplicated.
    """
    names = table.systems
    if systems:
        missing = [s for s in systems if s not in names]
        if missing:
            raise TeacherError(f"{table.info.get('format')} file: no system {missing} (systems in the file: {', '.join(names) or 'none'})")
        chosen = np.array([names.index(s) for s in systems], dtype=np.int16)
    else:
        chosen = np.arange(len(names), dtype=np.int16)
    out = []
    for r in rows:
        lo, hi = int(table.lists.indptr[r]), int(table.lists.indptr[r + 1])
        docs = np.asarray(table.lists.values[lo:hi], dtype=np.int64)
        sys = np.asarray(table.lists_system[lo:hi])
        sel = np.isin(sys, chosen)
        docs, sys = docs[sel], sys[sel]
        if keep is not None and len(docs):
            ok = keep(int(r), docs)
            docs, sys = docs[ok], sys[ok]
        # position within its system's (filtered) list: the lists are (system, rank)-ordered
        starts = np.r_[0, np.nonzero(sys[1:] != sys[:-1])[0] + 1] if len(sys) else np.zeros(0, np.int64)
        pos = np.arange(len(sys)) - np.repeat(starts, np.diff(np.r_[starts, len(sys)])) if len(sys) else np.zeros(0, np.int64)
        if per_system is not None:
            docs, sys, pos = docs[pos < per_system], sys[pos < per_system], pos[pos < per_system]
        rank_of_sys = np.searchsorted(chosen, sys) if systems is None else np.array([list(chosen).index(s) for s in sys], dtype=np.int64)
        order = np.lexsort((rank_of_sys, pos))
        docs = docs[order]
        _, first = np.unique(docs, return_index=True)
        out.append(docs[np.sort(first)])
    return Ragged.from_rows(out)
