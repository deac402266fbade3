"""Content-addressed on-disk cache stages, built once under a file lock and published atomically."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Optional

from filelock import FileLock

from ..errors import RanksweepError

logger = logging.getLogger(__name__)

#: bump when the layout of any stage changes, so old caches are never misread
CACHE_VERSION = 2


class CacheError(RanksweepError, OSError):
    """The cache cannot be created or written (a read-only or full disk, a path through a file)."""


def cache_location(configured: Optional[str] = None) -> str:
    """The cache folder as the user gave it: ``configured``, else ``$RANKSWEEP_CACHE``, else ``~/.cache/ranksweep``."""
    return configured or os.environ.get("RANKSWEEP_CACHE") or str(Path.home() / ".cache" / "ranksweep")


def cache_root(configured: Optional[str] = None) -> Path:
    """The cache folder (``cache_location``), resolved and created."""
    p = Path(cache_location(configured)).expanduser().resolve()
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CacheError(f"cache: cannot create {p}: {e.strerror or e}") from None
    return p


def file_stat_key(path: Path) -> str:
    """What identifies a file's version without reading it: resolved path, size, mtime, inode."""
    st = path.stat()
    return hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}".encode()).hexdigest()[:24]


def fingerprint(path: Path, kind: str, compute: Callable[[], dict], root: Optional[Path] = None) -> dict:
    """``{"key": content hash, **compute(...)}`` of a large file, read once per file version.

    The file is hashed in 1 MiB chunks; ``compute()`` may return more facts about it (a document count). The result is remembered in the cache's ``fingerprints/`` under the file's stat
    (``file_stat_key``), so every later process reads the memo instead of the file.
    """
    memo = (root or cache_root()) / "fingerprints" / f"{kind}-{file_stat_key(path)}.json"
    if memo.exists():
        return json.loads(memo.read_text())
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    out = {"key": digest.hexdigest()[:20], **compute(), "file": str(path.resolve())}
    memo.parent.mkdir(parents=True, exist_ok=True)
    tmp = memo.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(out))
    os.replace(tmp, memo)
    return out


def key_hash(key: Any) -> str:
    """A stable hash of a JSON-serialisable key."""
    blob = json.dumps({"v": CACHE_VERSION, "key": key}, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def stage(root: Path, kind: str, key: Any, build: Callable[[Path], None]) -> Path:
    """Return the folder of stage ``kind`` for ``key``, calling ``build(tmp_folder)`` if it is missing.

    Concurrent callers (trials on one machine, or on a shared file system) wait on one lock; the
    folder appears atomically with its ``key.json`` once ``build`` succeeded, so a crash never
    leaves a half-written stage behind. ``build`` may fan work out to other processes or nodes
    (an executor's shards write into the temporary folder, which lies on the same storage).
    ``build.json`` records how long the build took.
    """
    h = key_hash(key)
    final = root / kind / h
    if (final / "key.json").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if (final / "key.json").exists():
            return final
        tmp = final.parent / f".{h}.{uuid.uuid4().hex[:8]}.tmp"
        tmp.mkdir(parents=True)
        try:
            logger.info("building %s %s", kind, h)
            t0 = time.perf_counter()
            try:
                build(tmp)
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EDQUOT):
                    raise CacheError(f"cache: building {kind} in {root} failed: {e.strerror} ({e.filename or root}); "
                                     "stages already built are kept, so free the space or fix the path and run again") from None
                raise
            seconds = time.perf_counter() - t0
            (tmp / "build.json").write_text(json.dumps({"kind": kind, "seconds": seconds, "host": socket.gethostname()}))
            (tmp / "key.json").write_text(json.dumps(key, sort_keys=True, indent=1, default=str))
            if final.exists():  # a stale folder without key.json
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final
