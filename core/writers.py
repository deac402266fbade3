"""A trial's files: its resolved config, one metrics line per evaluation, the final metrics, and
per evaluation set the student's TREC run and per-query values.

``TrialWriter`` is the only part of a trial that touches its output folder; without a folder
(``output_dir`` unset) it writes nothing. The sweeper copies the folder to MLflow.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Optional

import yaml

from .config import TrialConfig

Run = Mapping[str, Mapping[str, float]]


class TrialWriter:
    """Writes one trial's files under ``folder`` (``None``: writes nothing)."""

    def __init__(self, folder: Optional[str | Path], tag: str = "ranksweep") -> None:
        self.folder = Path(folder) if folder else None
        self.tag = tag
        if self.folder:
            self.folder.mkdir(parents=True, exist_ok=True)

    def config(self, cfg: TrialConfig) -> None:
        """``config.yaml``: the full resolved config, defaults included."""
        if self.folder:
            (self.folder / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    def metrics(self, metrics: Mapping[str, float], final: bool = False) -> None:
        """One line of ``metrics.jsonl``; ``final`` also writes ``final.json`` (the trial trained its whole budget)."""
        if not self.folder:
            return
        with (self.folder / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(dict(metrics)) + "\n")
        if final:
            (self.folder / "final.json").write_text(json.dumps(dict(metrics), indent=1))

    def history(self, history: list[Mapping[str, float]]) -> None:
        """Rewrite ``metrics.jsonl`` from a restored trial's evaluations (a trial resumed elsewhere starts from an empty folder)."""
        if self.folder:
            with (self.folder / "metrics.jsonl").open("w") as f:
                f.writelines(json.dumps(dict(m)) + "\n" for m in history)

    def evaluation(self, name: str, run: Run, per_query: Mapping[str, Mapping[str, float]]) -> None:
        """The latest evaluation of set ``name``: ``runs/<name>.run`` and ``per_query/<name>.tsv``."""
        if self.folder:
            write_trec_run(self.folder / "runs" / f"{name}.run", run, tag=self.tag)
            write_per_query(self.folder / "per_query" / f"{name}.tsv", per_query)


def write_trec_run(path: str | Path, run: Run, tag: str = "ranksweep") -> Path:
    """Write ``run`` as a TREC run file (``qid Q0 docid rank score tag``), ranked by score."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w") as f:
        for qid in sorted(run):
            ranked = sorted(run[qid].items(), key=lambda kv: (-kv[1], kv[0]))
            for rank, (did, score) in enumerate(ranked, start=1):
                f.write(f"{qid} Q0 {did} {rank} {score:.6f} {tag}\n")
    return p


def write_per_query(path: str | Path, per_query: Mapping[str, Mapping[str, float]]) -> Path:
    """Write per-query measure values as TSV (``query_id`` then one column per measure)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    cols = sorted({m for v in per_query.values() for m in v})
    with p.open("w") as f:
        f.write("\t".join(["query_id", *cols]) + "\n")
        for qid in sorted(per_query):
            f.write("\t".join([qid, *(f"{per_query[qid].get(c, math.nan):.6f}" for c in cols)]) + "\n")
    return p
