"""The CPU study of the seed papers' questions, end to end (docs/study/): sweeps, reports, pilot plan.

    python benchmarks/study.py [--only main teacher augment] [--skip-runs]

1. writes the 1-layer cut of all-MiniLM-L6-v2 that ``scifact_study_teacher.yaml`` uses as the
   teacher of the student's own size (``.cache/models/minilm-1-layer``);
2. runs ``sweeps/scifact_study.yaml`` (sampler x loss x temperature, 60 trials),
   ``sweeps/scifact_study_augment.yaml`` (augmentation on the best and worst cells) and
   ``sweeps/scifact_study_teacher.yaml`` (teacher size), one after another, with the README's
   ``ranksweep run``;
3. writes each sweep's report to ``docs/study/<sweep>/`` and the main sweep's learning curves and
   ``ranksweep plan`` to ``docs/pilot/`` (the early-stopping pilot is cut from the study);
4. prints the wall-clock time of each step.
Run it from the repository root with the README's environment (``IR_DATASETS_HOME``, ``HF_HUB_OFFLINE``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SWEEPS = {"main": ("scifact_study.yaml", "ranksweep-scifact-study"),
          "augment": ("scifact_study_augment.yaml", "ranksweep-scifact-study-augment"),
          "teacher": ("scifact_study_teacher.yaml", "ranksweep-scifact-study-teacher")}
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
        if not a.skip_runs:
            times[f"run {spec}"] = sh("ranksweep", "run", f"sweeps/{spec}")
        times[f"report {spec}"] = sh("ranksweep", "report", "--experiment", experiment, "--out", f"docs/study/{Path(spec).stem}")
        if key == "main":
            times["plan"] = sh("ranksweep", "plan", "--experiment", experiment, "--save-curves", "docs/pilot/curves.json")
    for k, v in times.items():
        print(f"{k}: {v / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
