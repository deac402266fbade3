"""Progress lines of long work: done/total, rate and ETA, at most every few seconds."""

from __future__ import annotations

import logging

from ranksweep.core import progress as progress_module
from ranksweep.core.executor import LocalExecutor
from ranksweep.core.progress import Progress


def test_a_line_every_interval_and_at_the_end_with_rate_and_eta(monkeypatch, caplog):
    now = [100.0]
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: now[0])
    caplog.set_level(logging.INFO, logger="ranksweep.core.progress")
    p = Progress("encoding [0, 10,000) with minilm", 10_000, "sequences", every=10.0)
    now[0] += 4
    p.update(2_000)  # 4 s in: too soon for a line
    now[0] += 6
    p.update(2_000)  # 10 s in: 4,000 done at 400/s, 6,000 left
    now[0] += 15
    p.update(6_000)  # the end: always a line, no ETA
    assert [r.getMessage() for r in caplog.records] == [
        "encoding [0, 10,000) with minilm: 4,000/10,000 sequences (400.0/s, 10s, ETA 15s)",
        "encoding [0, 10,000) with minilm: 10,000/10,000 sequences (400.0/s, 25s)",
    ]


def test_slow_shards_are_counted_per_minute_and_the_local_executor_reports_its_shards(monkeypatch, caplog):
    now = [0.0]
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: now[0])
    p = Progress("doc_embeddings (4 shards)", 4, "shards")
    now[0] = 120.0
    p.done = 1
    assert p.line() == "doc_embeddings (4 shards): 1/4 shards (0.5/min, 2m00s, ETA 6m00s)"
    caplog.set_level(logging.INFO, logger="ranksweep.core.executor")

    def shard(x):
        now[0] += 20  # each shard takes 20 s
        return x * 2

    assert LocalExecutor().map(shard, [1, 2, 3], label="bm25 search (3 shards)") == [2, 4, 6]
    assert caplog.records[-1].getMessage() == "bm25 search (3 shards): 3/3 shards (3.0/min, 1m00s)"
