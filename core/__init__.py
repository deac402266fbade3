"""ranksweep.core: one ranking-distillation trial as a plain function.

Pure PyTorch + transformers + ir_datasets (+ ir_measures, tantivy, FAISS). Nothing here imports
Ray, MLflow or Optuna, so a trial runs (and is tested) alone, from a notebook or on a GPU box::

    from ranksweep.core import TrialConfig, run_trial
    final = run_trial(TrialConfig.from_yaml("trial.yaml"), report=lambda m, docs: print(docs, m))

The names below are imported when first used, so ``ranksweep.core.errors`` (what every command's
error handling needs) loads without torch.
"""

from importlib import import_module

_WHERE = {"ConfigError": "errors", "RanksweepError": "errors", "TrialConfig": "config", "Executor": "executor",
          "LocalExecutor": "executor", "NotPrepared": "preparation", "Prepared": "preparation", "PrepareOptions": "preparation",
          "prepare": "preparation", "Trial": "trial", "metric_keys": "trial", "run_trial": "trial"}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_WHERE[name]}", __name__), name)
