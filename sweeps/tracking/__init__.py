"""MLflow tracking of a sweep, by job: ``writer`` (the only MLflow writer, its own thread, no Ray),
``callback`` (Tune's events handed to it) and ``reconciler`` (Ray's results on disk handed to it after a fit).

Names load with their module on first use, so importing the writer does not import Ray.
"""

from importlib import import_module

_WHERE = {"LIVE": "callback", "MLflowTracking": "callback", "trial_params": "callback", "reconcile": "reconciler",
          "MLflowWriter": "writer", "flatten": "writer", "result_metrics": "writer", "run_name": "writer"}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_WHERE[name]}", __name__), name)
