"""The CPU study of the seed papers' questions, end to end (docs/study/): sweeps, reports, pilot plan.

    python benchmarks/study.py [--only main teacher augment] [--skip-runs]

1. writes the 1-layer cut of all-MiniLM-L6-v2 that ``scifact_study_teacher.yaml`` uses as the
   teacher of the student's own size (``.cache/models/minilm-1-layer``);
2. runs ``sweeps/scifact_study_teacher.yaml`` (teacher size, 9 trials), ``sweeps/scifact_study.yaml``
   (sampler x loss x temperature, 60 trials) and ``sweeps/scifact_study_augment.yaml`` (augmentation,
   12 trials) on the best and on the worst cell of the study's grid by dev nDCG@10 (two copies of
   the spec under ``runs/study/`` with that cell's sampler, loss and temperature), one after another,
   with the README's ``ranksweep run``;
3. writes each sweep's report to ``docs/study/<sweep>/`` and the main sweep's learning curves and
   ``ranksweep plan`` to ``docs/pilot/`` (the early-stopping pilot is cut from the study);
4. prints the wall-clock time of each step.
Run it from the repository root with the README's environment (``IR_DATASETS_HOME``, ``HF_HUB_OFFLINE``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SWEEPS = {"teacher": ("scifact_study_teacher.yaml", "ranksweep-scifact-study-teacher-size"),
          "main": ("scifact_study.yaml", "ranksweep-scifact-study"),
          "augment": ("scifact_study_augment.yaml", "ranksweep-scifact-study-augment")}
SMALL_TEACHER = REPO / ".cache" / "models" / "minilm-1-layer"


def write_small_teacher(folder: Path = SMALL_TEACHER) -> Path:
    """all-MiniLM-L6-v2 cut to its first layer (the student's size and its starting point), as a model folder."""
    from transformers import AutoModel, AutoTokenizer

    from ranksweep.core.models import load_encoder, resolve_model

    if (folder / "config.json").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    load_encoder("minilm", 1).save_pretrained(folder)
    AutoTokenizer.from_pretrained(resolve_model("minilm")).save_pretrained(folder)
    assert AutoModel.from_pretrained(folder).config.num_hidden_layers == 1
    return folder


def extreme_cells() -> dict[str, tuple[dict, float]]:
    """The study grid's best and worst cell by mean dev nDCG@10: from its runs in ``./mlflow.db`` when
    they are there, else from its committed report (``docs/study/scifact-study/report.json``), so the
    augmentation sweeps can run without re-running the 60-trial grid."""
    from ranksweep.sweeps.best import best

    try:
        rows = best(SWEEPS["main"][1], f"sqlite:///{REPO / 'mlflow.db'}", top=1000)
    except ValueError as e:  # no database or no such experiment here: the committed report names the same cells
        print(f"scifact-study not in ./mlflow.db ({e}); its cells from docs/study/scifact-study/report.json")
        rows = []
    if rows:
        return {"best": (rows[0]["settings"], rows[0]["mean"]), "worst": (rows[-1]["settings"], rows[-1]["mean"])}
    report = json.loads((REPO / "docs" / "study" / "scifact-study" / "report.json").read_text())
    ranked = sorted(((sum(c["values"][report["selection"]]) / c["n"], c["cell"]) for c in report["cells"]),
                    key=lambda r: r[0], reverse=True)
    return {"best": (ranked[0][1], ranked[0][0]), "worst": (ranked[-1][1], ranked[-1][0])}


def augment_specs() -> list[tuple[str, str]]:
    """Copies of the augmentation spec on the study's best and worst cell by dev nDCG@10: ``[(spec path, experiment)]``."""
    import yaml

    picks = extreme_cells()
    out = []
    for which, (cell, mean) in picks.items():
        spec = yaml.safe_load((REPO / "sweeps" / SWEEPS["augment"][0]).read_text())
        spec["name"] = f"scifact-study-augment-{which}"
        spec["tracking"]["experiment"] = f"ranksweep-{spec['name']}"
        spec["base"] = str(REPO / "sweeps" / spec["base"])
        spec["trial"]["sampler"] = {"name": cell["sampler.name"]}
        spec["trial"]["loss"] = cell["loss"]
        if "temperature" in cell:
            spec["trial"]["temperature"] = cell["temperature"]
        path = REPO / "runs" / "study" / f"{spec['name']}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# the {which} cell of scifact-study by dev nDCG@10: {cell} ({mean:.4f})\n" + yaml.safe_dump(spec, sort_keys=False))
        out.append((str(path), spec["tracking"]["experiment"]))
    return out


def sh(*cmd: str) -> float:
    t0 = time.perf_counter()
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", choices=list(SWEEPS), default=list(SWEEPS))
    p.add_argument("--skip-runs", action="store_true", help="only write the reports and the plan from MLflow")
    a = p.parse_args(argv)
    write_small_teacher()
    times = {}
    for key in a.only:
        spec, experiment = SWEEPS[key]
        jobs = augment_specs() if key == "augment" else [(f"sweeps/{spec}", experiment)]
        for path, exp in jobs:
            if not a.skip_runs:
                times[f"run {path}"] = sh("ranksweep", "run", path)
            times[f"report {exp}"] = sh("ranksweep", "report", "--experiment", exp, "--out", f"docs/study/{exp.removeprefix('ranksweep-')}")
        if key == "main":
            times["plan"] = sh("ranksweep", "plan", "--experiment", experiment, "--save-curves", "docs/pilot/curves.json")
    for k, v in times.items():
        print(f"{k}: {v / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
