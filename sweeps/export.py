"""``ranksweep export``: a trial's kept final weights, from MLflow, as a model folder others load (and log, and register).

A sweep keeps the final weights of the trials its ``keep_weights`` rule names in each trial's MLflow
run (``model/``); ``export`` downloads them, builds a sentence-transformers folder (bi) or a
transformers sequence-classification folder (cross) with ``ranksweep.core.export``, writes a
model card, and with ``--mlflow`` logs the folder to the trial's run with MLflow's
sentence-transformers or transformers flavour (``--register NAME``: into the model registry).
"""

from __future__ import annotations

import json
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Optional

from ranksweep.core.export import STUDENT_FILE, ExportError, export_student, student_info
from ranksweep.core.trial import MODEL_DIR

from .runs import SweepReader, TrialRun, WEIGHTS, cell_label


def pick(reader: SweepReader, trial: Optional[str], metric: Optional[str], mode: str) -> tuple[TrialRun, str]:
    """The trial run named ``trial`` (run name or id), or the best by ``metric`` among trials that trained their budget."""
    runs = reader.trials(("FINISHED",))
    metric = metric or reader.spec_value("metric", "dev/nDCG@10")
    if trial is not None:
        found = [r for r in runs if trial in (r.name, r.run_id)]
        if not found:
            names = ", ".join(r.name for r in runs[:8]) + (" …" if len(runs) > 8 else "")
            raise ExportError(f"no finished trial {trial!r} in sweep {reader.name!r} (trials: {names or 'none'})")
        return found[0], metric
    full = [r for r in runs if not r.stopped_early and metric in r.metrics]
    if not full:
        raise ExportError(f"no trial of sweep {reader.name!r} trained its full budget with metric {metric!r}")
    return sorted(full, key=lambda r: -r.metrics[metric] if mode == "max" else r.metrics[metric])[0], metric


def model_card(reader: SweepReader, run: TrialRun, config: str, info: dict, metric: str) -> str:
    import yaml

    cfg = yaml.safe_load(config) or {}
    metrics = "\n".join(f"| `{k}` | {v:.4f} |" for k, v in sorted(run.metrics.items()) if "/" in k)
    kind = "sentence-transformers bi-encoder" if info["kind"] == "bi" else "cross-encoder (transformers sequence classification, one logit)"
    usage = ('from sentence_transformers import SentenceTransformer\nmodel = SentenceTransformer("DIR")\n'
             f'scores = {info.get("scale", 1.0):g} * model.similarity(model.encode(queries), model.encode(passages))  # the trial\'s scores'
             if info["kind"] == "bi" else
             'from sentence_transformers import CrossEncoder\nmodel = CrossEncoder("DIR")\nscores = model.predict([(query, passage), ...])')
    return f"""---
library_name: {"sentence-transformers" if info["kind"] == "bi" else "transformers"}
tags: [ranksweep, distillation, information-retrieval]
---
# {run.name}: a {kind} distilled by ranksweep

Trial `{run.name}` of sweep `{reader.name}` (MLflow experiment `{reader.experiment}`, run `{run.run_id}`),
cell `{cell_label(run.cell)}`, seed {run.seed}; exported by ranksweep {version("ranksweep")}.
Selection metric `{metric}` = {run.metrics.get(metric, float("nan")):.4f}.

- training data: `{_get(cfg, "data.train")}`
- teacher: `{_get(cfg, "teacher")}`
- sampler: `{_get(cfg, "sampler")}`; group size {_get(cfg, "group_size")}
- loss: `{_get(cfg, "loss")}`; temperature {_get(cfg, "temperature")}
- student: `{info["model"]}`, {info.get("num_layers") or "all"} layers; {info.get("pooling", "")} {info.get("similarity", "")}
  (query tokens {info["max_query_length"]}, document tokens {info["max_doc_length"]})

```python
{usage}
```

## Metrics the trial logged

| metric | value |
|---|---|
{metrics}

## The trial's resolved configuration

```yaml
{config.strip()}
```
"""


def _get(cfg: dict, dotted: str):
    d = cfg
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return json.dumps(d) if isinstance(d, (dict, list)) else d


def export(experiment: str, tracking_uri: str, out: str | Path, trial: Optional[str] = None, metric: Optional[str] = None,
           mode: str = "max", sweep: Optional[str] = None, log_mlflow: bool = False, register: Optional[str] = None) -> dict:
    """Export one trial's kept weights to ``out``; return ``{"run_id", "name", "kind", "out", "model_uri"?}``.

    Raises:
        ExportError / RunsError: an unknown experiment or trial, a trial without kept weights, a non-empty ``out``.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"--out {out} exists and is not empty; name a new folder")
    reader = SweepReader(tracking_uri, experiment, sweep)
    run, metric = pick(reader, trial, metric, mode)
    import os

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one line on stderr for an expected failure
    import mlflow
    from mlflow.exceptions import MlflowException

    tags = reader.client.get_run(run.run_id).data.tags
    with tempfile.TemporaryDirectory() as tmp:
        try:
            src = mlflow.artifacts.download_artifacts(run_id=run.run_id, artifact_path=MODEL_DIR, tracking_uri=tracking_uri, dst_path=tmp)
        except (MlflowException, OSError):
            src = None
        if src is None or not (Path(src) / STUDENT_FILE).exists():
            rule = reader.spec_value("keep_weights", 1)
            raise ExportError(f"trial {run.name!r} has no kept weights (the sweep's keep_weights: {rule}; this run's weights: "
                              f"{tags.get(WEIGHTS, 'none logged')}); export a trial that kept them, e.g. --best")
        config = reader.artifact_text(run.run_id, "config.yaml") or ""
        info = student_info(src)
        export_student(src, out, model_card(reader, run, config, info, metric))
    result = {"run_id": run.run_id, "name": run.name, "kind": info["kind"], "out": str(out)}
    if log_mlflow or register:
        result["model_uri"] = log_model(out, info, run.run_id, tracking_uri, register)
    return result


def log_model(folder: Path, info: dict, run_id: str, tracking_uri: str, register: Optional[str]) -> str:
    """Log the exported folder to the trial's run with MLflow's sentence-transformers or transformers flavour."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=run_id):
        if info["kind"] == "bi":
            from sentence_transformers import SentenceTransformer

            logged = mlflow.sentence_transformers.log_model(SentenceTransformer(str(folder), device="cpu"), name="exported-model",
                                                            registered_model_name=register)
        else:
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            logged = mlflow.transformers.log_model(
                {"model": AutoModelForSequenceClassification.from_pretrained(folder), "tokenizer": AutoTokenizer.from_pretrained(folder)},
                name="exported-model", task="text-classification", registered_model_name=register)
    return logged.model_uri
