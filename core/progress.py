"""Progress of long work as log lines: done/total, rate and ETA, at most every few seconds.

Preparation stages run for minutes at MS MARCO size (a corpus encoded by the teacher, millions of
pairs cross-encoded): each shard logs its own progress, and the executor logs the stage's progress
across shards. In a Ray task the lines reach the driver with the worker's prefix.
"""

from __future__ import annotations

import logging
import time
from typing import Optional

logger = logging.getLogger(__name__)


def _duration(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Progress:
    """``update(n)`` as work is done (``total`` None: a stream of unknown length, no ETA); a line ``label: done/total unit (rate/s, ETA)`` every ``every`` seconds and at the end."""

    def __init__(self, label: str, total: Optional[int], unit: str = "items", every: float = 10.0, log: logging.Logger = logger) -> None:
        self.label, self.total, self.unit, self.every, self.log = label, total, unit, every, log
        self.done = 0
        self.t0 = self._last = time.perf_counter()

    def line(self) -> str:
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        rate = self.done / elapsed
        speed = f"{rate:,.1f}/s" if rate >= 1 or self.done == 0 else f"{60 * rate:,.1f}/min"  # shards of minutes each
        if self.total is None:  # a stream of unknown length
            return f"{self.label}: {self.done:,} {self.unit} ({speed}, {_duration(elapsed)})"
        eta = f", ETA {_duration((self.total - self.done) / rate)}" if 0 < self.done < self.total else ""
        return f"{self.label}: {self.done:,}/{self.total:,} {self.unit} ({speed}, {_duration(elapsed)}{eta})"

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if (self.total is not None and self.done >= self.total) or now - self._last >= self.every:
            self._last = now
            self.log.info(self.line())
