"""The `ranksweep` command: help, bad input naming the field, and a real trial from YAML."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import yaml
from conftest import REPO, fast_config

from ranksweep.core.config import reference_rows


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "ranksweep.sweeps.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=dict(os.environ), timeout=600)


def test_help_lists_commands_without_importing_torch():
    out = _cli("--help")
    assert out.returncode == 0 and "trial" in out.stdout
    code = "import sys; from ranksweep.sweeps import cli; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_unknown_command():
    out = _cli("trail")
    assert out.returncode == 2 and "did you mean 'trial'" in out.stderr


def test_bad_config_exits_2_naming_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sampler: bm52\n")
    out = _cli("trial", str(bad))
    assert out.returncode == 2 and "sampler.name" in out.stderr and "did you mean 'bm25'" in out.stderr
    bad.write_text("loss: kl\ngroup_size: 1\n")
    out = _cli("trial", str(bad))
    assert out.returncode == 2 and "group_size: must be >= 2" in out.stderr
    out = _cli("trial", str(bad), "--set", "group_size=4", "--set", "budget_docs=0")
    assert out.returncode == 2 and "budget_docs: must be > 0" in out.stderr


def test_trial_from_yaml_prints_final_metrics(tmp_path, tiny_model):
    d = fast_config(tmp_path)
    d["student"] = {"model": tiny_model, "num_layers": None}
    path = tmp_path / "trial.yaml"
    path.write_text(yaml.safe_dump(d))
    out = _cli("trial", str(path), "--json", "--set", "budget_docs=32", "--output-dir", str(tmp_path / "cli"))
    assert out.returncode == 0, out.stderr
    final = json.loads(out.stdout)
    assert final["docs_seen"] == 32 and 0 <= final["beir-scifact-test/nDCG@10"] <= 1
    assert (tmp_path / "cli" / "final.json").exists()


def test_shipped_trial_configs_are_valid():
    from ranksweep.core import TrialConfig

    for p in sorted((REPO / "sweeps" / "trials").glob("*.yaml")):
        TrialConfig.from_yaml(p)


def test_readme_documents_every_config_key():
    readme = (REPO / "README.md").read_text()
    missing = [k for k, _, _ in reference_rows() if f"| `{k}` |" not in readme]
    assert not missing, f"README config reference lacks {missing}"


def test_readme_shows_the_quickstart_report_as_the_command_wrote_it():
    """The README's report excerpt is the Summary of docs/quickstart-report/report.md, untouched."""
    readme = (REPO / "README.md").read_text()
    folder = REPO / "docs" / "quickstart-report"
    md = (folder / "report.md").read_text()
    summary = md.split("## Summary\n\n", 1)[1].split("\n## ", 1)[0].strip()
    assert summary in readme
    for fig in re.findall(r"\]\((docs/quickstart-report/[^)]+)\)", readme):
        assert (REPO / fig).exists(), fig
    data = json.loads((folder / "report.json").read_text())
    assert data["sweep"] == "quickstart" and data["counts"]["finished"] == 12
    assert data["equivalence"]["best"] == data["cells"][0]["label"]
