"""Test setup: offline, real collections from ../shared, caches kept under .cache/ in the repo.

``IR_DATASETS_HOME`` must be set before ir_datasets is imported, so this runs at import time:
the shared read-only cache is copied once to a writable place (ir_datasets writes docstores next
to its sources).
"""

from __future__ import annotations

import os
import re
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
    from ranksweep.core.config import apply

    return apply(d, over)


def tiny_config(tmp_path, tiny_model: str, **over):
    """``fast_config`` as a ``TrialConfig`` with the tiny random student (all its layers)."""
    from ranksweep.core.config import TrialConfig

    over.setdefault("student.model", tiny_model)
    over.setdefault("student.num_layers", None)
    return TrialConfig.from_dict(fast_config(tmp_path, **over))


def free_port(host: str = "127.0.0.1") -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _wait_for(check, what: str, timeout: float) -> None:
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{what} did not start in {timeout:.0f} s")


class Postgres:
    """A throwaway PostgreSQL cluster on a free loopback port (``initdb`` + ``pg_ctl``), run as the ``postgres`` user
    when this process is root (``initdb`` refuses root), with one database ``mlflow``; ``uri`` is SQLAlchemy's."""

    def __init__(self) -> None:
        import shutil
        import tempfile

        # not under pytest's tmp_path: its folders are private to root, and the server runs as postgres
        self.folder, self.port = Path(tempfile.mkdtemp(prefix="ranksweep-pg-")), free_port()
        self.folder.chmod(0o755)
        self.data, self.sock = self.folder / "data", self.folder / "sock"
        self.uri = f"postgresql://postgres@127.0.0.1:{self.port}/mlflow"
        bins = [shutil.which("initdb")] + sorted(str(p) for p in Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        found = [b for b in bins if b]
        if not found:
            raise RuntimeError("PostgreSQL is not installed (initdb not found): `apt-get install postgresql` (.ci/run does)")
        self.bin = Path(found[0]).parent

    def _as_postgres(self, *cmd: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else list(cmd)

    def start(self) -> "Postgres":
        import shutil
        import subprocess

        self.folder.mkdir(parents=True, exist_ok=True)
        self.sock.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres")
            shutil.chown(self.sock, "postgres")
        if not self.data.exists():
            subprocess.run(self._as_postgres(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust"),
                           check=True, capture_output=True)
        subprocess.run(self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "log"), "-w",
                                         "-o", f"-p {self.port} -k {self.sock} -h 127.0.0.1", "start"), check=True, capture_output=True)
        created = subprocess.run(self._as_postgres(str(self.bin / "createdb") if (self.bin / "createdb").exists() else "createdb",
                                                   "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "mlflow"),
                                 capture_output=True, text=True)
        if created.returncode != 0 and "already exists" not in created.stderr:
            raise RuntimeError(created.stderr)
        return self

    def stop(self, mode: str = "fast") -> None:
        import subprocess

        subprocess.run(self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"), capture_output=True)

    def remove(self) -> None:
        import shutil

        self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)


class S3Server:
    """An S3 API on loopback (moto's server mode) in its own process group; ``storage(bucket)`` is a pyarrow URI for it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                    "AWS_EC2_METADATA_DISABLED": "true", "MLFLOW_S3_ENDPOINT_URL": self.endpoint}
        self.proc = None

    def start(self) -> "S3Server":
        import subprocess
        import sys
        import urllib.request

        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        _wait_for(lambda: urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1), "moto server", 60)
        return self

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                            region_name="us-east-1")

    def bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def storage(self, bucket: str, prefix: str = "") -> str:
        return f"s3://{bucket}/{prefix}?endpoint_override=127.0.0.1:{self.port}&scheme=http&region=us-east-1"

    def keys(self, bucket: str) -> list[str]:
        c = self.client()
        return [o["Key"] for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket) for o in page.get("Contents", [])]

    def stop(self) -> None:
        import signal

        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=30)
            self.proc = None


class MlflowServer:
    """A local ``mlflow server`` in its own process group: started, killed and restarted on one port.

    Its store is SQLite in ``folder`` unless ``backend`` names another (a PostgreSQL URI); artifacts are
    served by the server (``--artifacts-destination``: a folder, or an ``s3://`` bucket with ``env``).
    """

    def __init__(self, folder: Path, port: int | None = None, backend: str | None = None, artifacts: str | None = None,
                 env: dict | None = None, flags: dict | None = None) -> None:
        self.folder, self.port = Path(folder), port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.backend = backend or f"sqlite:///{self.folder}/server.db"
        self.artifacts = artifacts or str(self.folder / "artifacts")
        self.env = env or {}
        self.flags = {"--workers": "1", "--serve-artifacts": None, **(flags or {})}  # a flag without a value: None
        self.proc = None

    def start(self, timeout: float = 90) -> "MlflowServer":
        import subprocess
        import sys
        import time
        import urllib.request

        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", **self.env)
        flags = {**self.flags, "--host": "127.0.0.1", "--port": str(self.port), "--backend-store-uri": self.backend,
                 "--artifacts-destination": self.artifacts}
        self.proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server",
                                      *[x for k, v in flags.items() for x in ((k,) if v is None else (k, v))]],
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


def tracebacks(log: str) -> list[str]:
    """The tracebacks of ``log`` but those of a Ray worker that Ray stopped with SIGTERM at a trial's end (Ray's
    handler raises ``SystemExit`` wherever the worker is; inside a garbage-collection callback Python prints it)."""
    out = []
    for line in log.splitlines():
        if "Traceback" in line:
            worker = re.match(r"\S*\((\w+ pid=\d+)\)", line)
            if worker and "in sigterm_handler" in "\n".join(x for x in log.splitlines() if f"({worker.group(1)})" in x):
                continue
            out.append(line)
    return out
