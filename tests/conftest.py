"""Test setup: offline, real collections from ../shared, caches kept under .cache/ in the repo.

``IR_DATASETS_HOME`` must be set before ir_datasets is imported, so this runs at import time:
the shared read-only cache is copied once to a writable place (ir_datasets writes docstores next
to its sources).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RANKSWEEP_SHARED", REPO.parent / "shared")).resolve()
WORK = Path(os.environ.get("RANKSWEEP_TEST_CACHE", REPO / ".cache")).resolve()

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
_irds = WORK / "ir_datasets"
if not (_irds / ".copied").exists():
    src = SHARED / "ir_datasets"
    if not src.exists():
        raise RuntimeError(f"tests need the shared ir_datasets cache at {src} (set RANKSWEEP_SHARED)")
    shutil.copytree(src, _irds, dirs_exist_ok=True)
    for p in _irds.rglob("*"):  # the shared copy is read-only; ir_datasets writes beside it
        p.chmod(p.stat().st_mode | 0o200)
    (_irds / ".copied").write_text("ok")
os.environ["IR_DATASETS_HOME"] = str(_irds)
os.environ.setdefault("RANKSWEEP_CACHE", str(WORK / "ranksweep"))

TINY_BEIR = REPO / "tests" / "data" / "tiny_beir"


@pytest.fixture(scope="session")
def cache_dir() -> str:
    return os.environ["RANKSWEEP_CACHE"]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A tiny random BERT (2 layers, hidden 64) with the shipped MiniLM tokenizer, saved to disk."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from ranksweep.core.models import resolve_model

    path = tmp_path_factory.mktemp("tiny_bert")
    tok = AutoTokenizer.from_pretrained(resolve_model("minilm"))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=128, max_position_embeddings=512)
    BertModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def fast_config(tmp_path, **over) -> dict:
    """A small trial on SciFact with a BM25 teacher (no model to encode the corpus with)."""
    d = {
        "data": {"eval": ["beir/scifact/test"], "eval_max_queries": 20, "max_doc_length": 48,
                 "max_query_length": 24},
        "candidates": {"dense_depth": 0, "bm25_depth": 50, "random_pool": 50},
        "teacher": {"kind": "bm25"},
        "sampler": "bm25",
        "group_size": 4,
        "loss": "kl",
        "optim": {"batch_size": 4, "lr": 1e-4},
        "budget_docs": 64,
        "eval_every_docs": 32,
        "eval": {"dev_depth": 10, "depth": 20, "probe_queries": 4, "at_start": False},  # mechanics tests: no docs-0 evaluation
        "output_dir": str(tmp_path / "trial"),
    }
    for k, v in over.items():
        cur = d
        parts = k.split(".")
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        cur[parts[-1]] = v
    return d


def free_port(host: str = "127.0.0.1") -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class MlflowServer:
    """A local ``mlflow server`` (SQLite store) in its own process group: started, killed and restarted on one port."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder, self.port = Path(folder), port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self, timeout: float = 90) -> "MlflowServer":
        import subprocess
        import sys
        import time
        import urllib.request

        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        self.proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
                                      "--workers", "1", "--backend-store-uri", f"sqlite:///{self.folder}/server.db",
                                      "--default-artifact-root", str(self.folder / "artifacts")],
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{self.url}/health", timeout=1)
                return self
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"mlflow server on port {self.port} did not start")

    def stop(self, sig=None) -> None:
        import signal

        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig or signal.SIGTERM)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        self.proc = None
