"""Build and run a sweep with Ray Tune: ``build_tuner(sweep) -> tune.Tuner`` declares it all."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ranksweep.core import TrialConfig
from ranksweep.core.data.cache import cache_root

from .cost import max_budget
from .prepare import RayExecutor, check_shared, check_sweep_inputs, prepare_shared, shared_cache_path
from .schedulers import Resumable, early_stopping
from .spec import SpecError, Sweep, dump
from .runs import bound_http_retries
from .tracking import LIVE, MLflowTracking, reconcile, run_name
from .trainable import train_trial

logger = logging.getLogger(__name__)


def sweep_key(sweep: Sweep) -> str:
    """Identity of a sweep across driver restarts: its name, storage and spec (not where it is tracked)."""
    spec = {k: v for k, v in sweep.raw.items() if k != "tracking"}
    blob = json.dumps({"name": sweep.name, "storage": sweep.storage, "spec": spec}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def scheduler_journal(sweep: Sweep) -> Path:
    """Where the scheduler's journal lives: beside the experiment, or in the cache when storage is a URI."""
    if "://" not in sweep.storage:
        return Path(experiment_path(sweep)) / "ranksweep-scheduler.jsonl"

    return cache_root(sweep.base_config().data.cache_dir) / "journals" / f"{sweep_key(sweep)}.jsonl"


def _scheduler(sweep: Sweep, cfg: TrialConfig):
    from ray.tune.schedulers import FIFOScheduler


    s = sweep.fields.scheduler
    if s.name == "none":
        return FIFOScheduler()
    inner = early_stopping(s.name, s.grace_docs or cfg.eval_every_docs, s.reduction_factor, s.brackets, max_budget(sweep))
    return Resumable(inner, scheduler_journal(sweep))  # its state survives --resume (Ray #30838)


def _search(sweep: Sweep):
    f = sweep.fields
    if f.search == "grid":
        return None
    import optuna
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    sampler = optuna.samplers.TPESampler(seed=f.seed) if f.search == "optuna" else optuna.samplers.RandomSampler(seed=f.seed)
    alg = OptunaSearch(space=sweep.space.to_optuna_define_by_run(sweep.seeds[0]), metric=f.metric, mode=f.mode, sampler=sampler)
    return ConcurrencyLimiter(alg, max_concurrent=f.max_concurrent) if f.max_concurrent else alg


def trainable(sweep: Sweep, prepared: dict[str, str]):
    """The trial function with what is not searched bound: base trial, prepared data, resources."""
    from ray import tune

    r = sweep.fields.resources
    fn = tune.with_parameters(train_trial, base=sweep.base, prepared=prepared, cpus=r.cpu, gpus=r.gpu)
    return tune.with_resources(fn, {"cpu": r.cpu, "gpu": r.gpu})


def callbacks(sweep: Sweep, tracking_uri: Optional[str] = None) -> list:

    params = {"spec": sweep.raw, "axes": sweep.space.keys(), "trials": sweep.trial_count()}
    return [MLflowTracking(tracking_uri or sweep.tracking_uri, sweep.experiment, sweep.name, sweep_key(sweep), base=sweep.base,
                           params=params, artifacts={"sweep.yaml": dump(sweep)}, flush_timeout=sweep.fields.tracking.flush_timeout,
                           weights={"keep": sweep.fields.keep_weights, "metric": sweep.fields.metric, "mode": sweep.fields.mode})]


def trial_name(trial) -> str:
    """A trial's name in Ray's progress table, as MLflow names its run (``bm25-kl-T4-s1``), not its truncated config."""
    return run_name(trial.config.get("params", {}), int(trial.config.get("seed", 0)))


def build_tuner(sweep: Sweep, prepared: dict[str, str], tracking_uri: Optional[str] = None):
    """The one ``tune.Tuner`` of a sweep: trainable, TuneConfig, RunConfig and param space."""
    from ray import tune

    f = sweep.fields
    cfg = sweep.base_config()
    param_space = sweep.space.to_ray_param_space(sweep.seeds) if f.search == "grid" else {}
    scheduler = _scheduler(sweep, cfg)
    if hasattr(scheduler, "start_fresh"):
        scheduler.start_fresh()
    return tune.Tuner(
        trainable(sweep, prepared),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=f.metric, mode=f.mode, scheduler=scheduler, search_alg=_search(sweep),
            num_samples=1 if f.search == "grid" else f.num_samples,
            max_concurrent_trials=f.max_concurrent if f.search == "grid" else None,
            trial_name_creator=trial_name,
        ),
        run_config=tune.RunConfig(
            name=sweep.name, storage_path=sweep.storage, callbacks=callbacks(sweep, tracking_uri),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=f.retries),
            sync_config=tune.SyncConfig(sync_artifacts=True),  # trial outputs reach storage with every checkpoint
            verbose=1,
        ),
    )


def experiment_path(sweep: Sweep) -> str:
    """The sweep's folder in its storage; a URI keeps its query (``s3://b/p?endpoint_override=…`` → ``s3://b/p/name?…``)."""
    if "://" not in sweep.storage:
        return str(Path(sweep.storage) / sweep.name)
    from urllib.parse import urlsplit, urlunsplit

    u = urlsplit(sweep.storage)
    return urlunsplit(u._replace(path=f"{u.path.rstrip('/')}/{sweep.name}"))


def check_storage_uri(uri: str) -> None:
    """A storage URI (``s3://``, ``gs://``, ``file://``…) is reachable and writable, or a ``SpecError`` naming it.

    pyarrow answers an unreachable endpoint, a missing bucket or absent credentials with an
    ``OSError`` deep in Ray's first file call; here it is one line before any work. Credentials and
    the endpoint come from the URI's query (``endpoint_override``, ``region``, ``scheme``) and the
    usual AWS variables or instance role.
    """
    import tempfile

    import pyarrow.fs

    try:
        fs, path = pyarrow.fs.FileSystem.from_uri(uri)
        probe = f"{path.rstrip('/')}/.ranksweep-write-check-{os.getpid()}"
        fs.create_dir(probe, recursive=True)  # a local folder (file://) is made as Ray makes it
        with tempfile.TemporaryDirectory() as tmp:  # written as Ray writes (copy_files: one PUT per small file)
            Path(tmp, "ok").write_text("ok")
            pyarrow.fs.copy_files(tmp, probe, destination_filesystem=fs)
        fs.delete_dir(probe)
    except (OSError, ValueError) as e:
        raise SpecError(f"storage: cannot write to {uri}: {str(e).splitlines()[0][:300]}") from None


def reachable_address(address: str, timeout: Optional[float] = None) -> str:
    """The host:port a Ray ``address`` (``auto`` included) names, once something answers there; else a ``SpecError``.

    ``ray.init`` retries an unreachable cluster for many minutes; this gives up after ``timeout``
    seconds (default ``$RANKSWEEP_CONNECT_TIMEOUT`` or 30) and names the address.
    """
    import socket
    import time

    from ray._private.services import canonicalize_bootstrap_address

    if address.startswith("ray://"):
        return address
    timeout = float(os.environ.get("RANKSWEEP_CONNECT_TIMEOUT", 30)) if timeout is None else timeout
    where = canonicalize_bootstrap_address(address)
    if where is None:
        raise SpecError(f"--address {address}: no Ray cluster is recorded on this machine (RAY_ADDRESS is unset); start one "
                        "with `ray start --head`, or drop --address to run on a fresh local Ray")
    host, port = where.rsplit(":", 1)
    deadline, err = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, int(port)), timeout=3).close()
            return where
        except OSError as e:
            err = e
            time.sleep(1)
    raise SpecError(f"--address {address}: no Ray cluster answers at {where} after {timeout:.0f} s ({err})")


def check_writable(paths: dict[str, str]) -> None:
    """One line naming the path, before any work, when a local path cannot be created or written to."""
    for what, path in paths.items():
        if "://" in path:
            continue
        p = Path(path).expanduser()
        try:
            p.mkdir(parents=True, exist_ok=True)
            probe = p / f".ranksweep-write-check-{os.getpid()}"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise SpecError(f"{what}: cannot write to {p}: {e.strerror or e}") from None


@dataclass
class SweepInterrupted(Exception):
    """The driver stopped on a signal before the sweep ended; what it had finished is kept, and ``--resume`` continues."""

    signum: int
    stage: str  # "preparation" or "trials"
    finished: int = 0
    running: int = 0
    pending: int = 0
    failed: int = 0
    total: int = 0

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 after SIGINT, 143 after SIGTERM

    def __str__(self) -> str:
        name = signal.Signals(self.signum).name
        if self.stage == "preparation":
            return (f"interrupted by {name} while preparing the shared data: no trial ran; the stages already built are "
                    "kept in the cache")
        return (f"interrupted by {name}: {self.finished} of {self.total} trials finished, {self.running} running (stopped at "
                f"their last checkpoint), {self.pending} pending, {self.failed} failed; the sweep is not complete")


class Interruption:
    """SIGINT and SIGTERM while a sweep runs, turned into a stop that keeps what is finished.

    Inside Tune's loop the first signal asks Tune for its own graceful stop (the SIGUSR1 it listens
    to: trials stop at their last checkpoint and the experiment state is saved for ``--resume``);
    outside it (preparation), or on a second signal, it raises ``KeyboardInterrupt``. ``signum`` is
    the first signal received. Tune's own SIGINT handler is switched off so that SIGINT comes here.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, on_signal=None) -> None:
        self.signum: Optional[int] = None
        self.in_tune = False
        self.on_signal = on_signal
        self._previous: dict = {}

    def __enter__(self) -> "Interruption":
        self._previous = {s: signal.getsignal(s) for s in self.SIGNALS}
        for s in self.SIGNALS:
            signal.signal(s, self._handle)
        self._tune_sigint = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        if self._tune_sigint is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = self._tune_sigint

    def _handle(self, signum, frame) -> None:
        first = self.signum is None
        if first:
            self.signum = signum
            if self.on_signal is not None:
                self.on_signal(signum)
        if first and self.in_tune and callable(signal.getsignal(signal.SIGUSR1)):
            logger.warning("%s received: stopping the trials at their last checkpoint and saving the sweep's state "
                           "(send it again to stop at once)", signal.Signals(signum).name)
            os.kill(os.getpid(), signal.SIGUSR1)
            return
        raise KeyboardInterrupt


class _QuietTuneResumeHint(logging.Filter):
    """Tune's "Resume experiment with: Tuner.restore(...)" after an interrupt: the CLI names ``ranksweep run --resume``."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Resume experiment with" not in record.getMessage()


def interrupted_counts(statuses: dict[str, str], total: int) -> dict[str, int]:
    """Finished, running, pending and failed trials from Tune's statuses at the last loop step."""
    finished = sum(s == "TERMINATED" for s in statuses.values())
    failed = sum(s == "ERROR" for s in statuses.values())
    running = sum(s in ("RUNNING", "PAUSED") for s in statuses.values())
    return {"finished": finished, "running": running, "failed": failed, "total": total,
            "pending": max(total - finished - failed - running, 0)}


def run_sweep(sweep: Sweep, address: Optional[str] = None, tracking_uri: Optional[str] = None, resume: bool = False):
    """Prepare shared data, start (or reattach to) Ray, run or resume the sweep; return the ResultGrid."""
    import ray
    from ray import tune

    if sweep.fields.max_pending_trials:
        os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = str(sweep.fields.max_pending_trials)
    path = experiment_path(sweep)
    if "://" in sweep.storage:
        check_storage_uri(sweep.storage)  # before Ray asks it anything: one line, not pyarrow's traceback
    if resume and not tune.Tuner.can_restore(path):
        raise SpecError(f"--resume: no sweep to resume at {path}")
    if not resume and tune.Tuner.can_restore(path):
        raise SpecError(f"a sweep named {sweep.name!r} already exists at {path}; use --resume, or another name/storage")
    if sweep.fields.resources.gpu > 0 and address is None:
        import torch

        if torch.cuda.device_count() == 0:
            raise SpecError(f"resources.gpu: {sweep.fields.resources.gpu} GPU per trial requested but this machine has none "
                            "(set resources.gpu: 0, or pass --address of a cluster with GPU workers)")
    check_sweep_inputs(sweep)
    # no --address: a fresh local Ray, never a cluster some earlier run left recorded on this machine
    ray.init(address=reachable_address(address) if address else "local", ignore_reinit_error=True, include_dashboard=False,
             log_to_driver=True,
             runtime_env={"env_vars": {k: v for k, v in os.environ.items()
                                       if k in ("IR_DATASETS_HOME", "RANKSWEEP_CACHE", "HF_HUB_OFFLINE", "HF_HOME", "TRANSFORMERS_OFFLINE")}})
    if sweep.fields.resources.gpu > 0 and ray.cluster_resources().get("GPU", 0) == 0:
        logger.warning("no GPU in the cluster yet: trials wait until the autoscaler adds GPU workers")
    shared = {"cache (data.cache_dir / RANKSWEEP_CACHE)": shared_cache_path(sweep.base_config().data.cache_dir),
              "storage": sweep.fields.storage}
    check_shared(shared)  # on a cluster: absolute paths that every node sees
    check_writable({**shared, "storage": sweep.storage})
    track = callbacks(sweep, tracking_uri)[0]
    LIVE.use(track.sweep_key, track.tracking_uri)  # a restored callback writes where this run asks, too
    writer = track.live_writer()
    writer.interrupted, writer.statuses = None, {}
    with Interruption(on_signal=writer.interrupt) as stop:
        try:
            prepared = prepare_shared(sweep, RayExecutor())
        except KeyboardInterrupt:
            raise SweepInterrupted(stop.signum or signal.SIGINT, "preparation") from None
        bound_http_retries()
        if resume:
            tuner = tune.Tuner.restore(path, trainable=trainable(sweep, prepared), resume_unfinished=True, resume_errored=False,
                                       restart_errored=False)
        else:
            tuner = build_tuner(sweep, prepared, tracking_uri)
        hint = _QuietTuneResumeHint()
        logging.getLogger("ray.tune.tune").addFilter(hint)
        stop.in_tune = True
        try:
            results = tuner.fit()
        except KeyboardInterrupt:  # a second signal: Tune did not finish its stop; its last saved state is what resumes
            writer.interrupt(stop.signum or signal.SIGINT)
            writer.drain(5)
            raise SweepInterrupted(stop.signum or signal.SIGINT, "trials",
                                   **interrupted_counts(writer.statuses, sweep.trial_count())) from None
        finally:
            stop.in_tune = False
            logging.getLogger("ray.tune.tune").removeFilter(hint)
    if stop.signum is not None:
        # the trials that ended before the stop are written; those Tune stopped stay open for --resume
        ended = {t for t, s in writer.statuses.items() if s in ("TERMINATED", "ERROR")}
        reconcile(writer, results, sweep.base, only=ended)
        if not writer.drain(sweep.fields.tracking.flush_timeout):
            writer.warn_not_written(path)
        raise SweepInterrupted(stop.signum, "trials", **interrupted_counts(writer.statuses, sweep.trial_count()))
    # whatever MLflow lacks (the server was away, an earlier driver was killed) is written from Ray's results
    reconcile(writer, results, sweep.base)
    writer.end_sweep(len(results.errors))
    if not writer.flush(sweep.fields.tracking.flush_timeout):
        writer.warn_not_written(path)
    return results
