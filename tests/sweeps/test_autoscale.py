"""Autoscaling with Ray's fake multi-node provider: a head of 0 CPUs, workers added for pending work, removed when idle.

``RAY_FAKE_CLUSTER=1 ray start --head --autoscaling-config=…`` with provider ``fake_multinode`` starts real
raylets on this machine when the autoscaler asks for nodes. The ray 2.60 wheel lacks the provider's
``example.yaml``, so the config is written here. The head has no CPU, so the sweep's preparation tasks
and then its trials are what make the cluster grow; an Optuna search with ``max_pending_trials: 2`` keeps
two trials pending at once, so two workers are asked for together (Tune queues one trial at a time for a
search algorithm otherwise). The test starts the head in its own process group and stops only that group.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml
from conftest import fast_config

pytestmark = pytest.mark.ray

IP = "127.0.0.2"  # Ray rewrites 127.0.0.1 to the host's address


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((IP, 0))
        return s.getsockname()[1]


def _autoscaling_config(path: Path, port: int) -> None:
    cfg = {
        "cluster_name": "ranksweep-fake",
        "max_workers": 2,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": f"{IP}:{port}"},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            "ray.worker.cpu": {"resources": {"CPU": 1, "object_store_memory": 200_000_000}, "node_config": {},
                               "min_workers": 0, "max_workers": 2},
        },
        "head_node_type": "ray.head.default",
        "upscaling_speed": 2.0,
        "idle_timeout_minutes": 0.2,
        "auth": {}, "docker": {}, "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [], "file_mounts": {},
        "cluster_synced_files": [], "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
    }
    path.write_text(yaml.safe_dump(cfg))


def _workers(nodes: list[dict]) -> int:
    return sum(1 for n in nodes if n.get("Alive") and n["Resources"].get("CPU", 0) > 0)


def test_autoscaler_adds_workers_for_pending_work_and_removes_them_when_idle(tiny_model, tmp_path):
    from ranksweep.core.data.synthetic import write_synthetic_beir

    port = _free_port()
    short = Path(tempfile.mkdtemp(prefix="rsfake-", dir="/tmp"))  # Ray's socket paths must stay short
    _autoscaling_config(short / "autoscaler.yaml", port)
    env = dict(os.environ, RAY_FAKE_CLUSTER="1", RAY_AUTH_MODE="disabled")
    head = subprocess.Popen([sys.executable, "-m", "ray.scripts.scripts", "start", "--head", f"--node-ip-address={IP}",
                             f"--port={port}", "--num-cpus=0", f"--autoscaling-config={short / 'autoscaler.yaml'}",
                             f"--temp-dir={short / 'ray'}", "--include-dashboard=false", "--block"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"{IP}:{port}"
    seen: list[tuple[float, int]] = []
    stop = threading.Event()
    try:
        import ray

        deadline = time.time() + 120
        while True:
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False)
                break
            except Exception:  # noqa: BLE001 (the head is still starting)
                if time.time() > deadline:
                    raise
                time.sleep(2)
        assert _workers(ray.nodes()) == 0

        def watch() -> None:
            while not stop.is_set():
                seen.append((time.time(), _workers(ray.nodes())))
                time.sleep(1)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()

        col = write_synthetic_beir(tmp_path / "syn", 2000, seed=7)
        trial = fast_config(tmp_path, **{"student.model": tiny_model, "student.num_layers": None})
        trial.pop("output_dir")
        trial["data"].update(train=f"local:{col}:train", eval=[f"local:{col}:test"], cache_dir=str(tmp_path / "cache"))
        trial.update(budget_docs=128, eval_every_docs=64)
        spec = {"name": "fake", "base": trial, "space": {"axes": {"optim.lr": {"loguniform": [1e-5, 1e-3]}}},
                "search": "optuna", "num_samples": 2, "max_concurrent": 2, "max_pending_trials": 2,
                "scheduler": {"name": "none"}, "resources": {"cpu": 1}, "prepare": {"cpus": 1},
                "storage": str(tmp_path / "ray"), "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "fake"}}
        (tmp_path / "fake.yaml").write_text(yaml.safe_dump(spec))
        out = subprocess.run([sys.executable, "-m", "ranksweep.sweeps.cli", "run", str(tmp_path / "fake.yaml"),
                              "--address", address], capture_output=True, text=True, timeout=900,
                             env=dict(os.environ, RAY_AUTH_MODE="disabled"))
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert "2 trials, 0 failed" in out.stdout
        finished = time.time()
        peak = max(n for _, n in seen)
        assert peak == 2  # two pending trials asked for two workers; max_workers caps it there
        # idle workers go once the idle timeout (12 s) has passed
        deadline = time.time() + 180
        while _workers(ray.nodes()) > 0 and time.time() < deadline:
            time.sleep(2)
        assert _workers(ray.nodes()) == 0, f"workers still up {time.time() - finished:.0f} s after the sweep"
    finally:
        stop.set()
        import ray

        ray.shutdown()
        try:
            os.killpg(head.pid, signal.SIGTERM)
            head.wait(timeout=60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(short, ignore_errors=True)
