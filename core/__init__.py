"""ranksweep.core: one ranking-distillation trial as a plain function.

Pure PyTorch + transformers + ir_datasets (+ ir_measures, tantivy, FAISS). Nothing here imports
Ray, MLflow or Optuna, so a trial runs (and is tested) alone, from a notebook or on a GPU box::

    from ranksweep.core import TrialConfig, run_trial
    final = run_trial(TrialConfig.from_yaml("trial.yaml"), report=lambda m, docs: print(docs, m))
"""

from .config import ConfigError, TrialConfig
from .executor import Executor, LocalExecutor
from .preparation import NotPrepared, Prepared, PrepareOptions, prepare
from .trial import Trial, metric_keys, run_trial

__all__ = ["ConfigError", "TrialConfig", "Executor", "LocalExecutor", "NotPrepared", "Prepared", "PrepareOptions", "Trial",
           "metric_keys", "prepare", "run_trial"]
