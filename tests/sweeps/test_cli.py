"""The `ranksweep` command: help, bad input naming the field, and a real trial from YAML."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import yaml
from conftest import REPO, fast_config

from ranksweep.core.config import reference_rows, reference_table


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


def test_readme_config_reference_is_the_schema_table():
    """The README's trial configuration reference is ``reference_table()`` (keys, defaults, meanings, bounds), verbatim."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Trial configuration reference"):]
    table = reference_table()
    assert table in section, ("README's config reference differs from the schema; paste the output of "
                              "python -c 'from ranksweep.core.config import reference_table; print(reference_table())'")
    assert len(table.splitlines()) == len(reference_rows()) + 2 and "`sampler.name`" in table


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


def _one_line_exit_2(out, prog: str) -> str:
    """An expected failure: exit code 2 and one line on stderr naming the problem, no traceback."""
    lines = [x for x in out.stderr.splitlines() if x.strip() and " INFO " not in x and " WARNING " not in x
             and not x.startswith("[INFO] ")]  # log lines: ours, and ir_datasets' own format
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr and len(lines) == 1 and lines[0].startswith(f"ranksweep {prog}: "), out.stderr[-2000:]
    return lines[0]


def test_best_and_report_against_a_closed_port_fail_fast_naming_the_uri(tmp_path):
    import time

    from conftest import free_port

    uri = f"http://127.0.0.1:{free_port()}"
    for args in (["best", "--experiment", "x", "--tracking-uri", uri],
                 ["report", "--experiment", "x", "--tracking-uri", uri, "--out", str(tmp_path / "r")]):
        t0 = time.monotonic()
        out = _cli(*args)
        assert time.monotonic() - t0 < 15
        assert f"cannot reach MLflow at {uri}" in _one_line_exit_2(out, args[0])


def test_address_auto_with_no_cluster_answering_fails_fast_naming_it(tmp_path):
    import time

    from conftest import free_port

    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"name": "nowhere", "base": str(REPO / "sweeps" / "trials" / "scifact_bi.yaml"),
                                    "space": "quickstart", "storage": str(tmp_path / "ray"), "scheduler": {"name": "none"}}))
    dead = f"127.0.0.2:{free_port('127.0.0.2')}"
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "ranksweep.sweeps.cli", "run", str(spec), "--address", "auto"], capture_output=True,
                         text=True, timeout=120, env=dict(os.environ, RAY_ADDRESS=dead, RANKSWEEP_CONNECT_TIMEOUT="5"))
    assert time.monotonic() - t0 < 30
    assert f"--address auto: no Ray cluster answers at {dead} after 5 s" in _one_line_exit_2(out, "run")
    assert not (tmp_path / "ray").exists()  # nothing started, nothing written


def test_bad_data_and_an_unusable_cache_exit_2_with_one_line(tmp_path, tiny_model):
    import gzip
    import shutil

    from conftest import TINY_BEIR

    def trial(**over):
        d = fast_config(tmp_path, **{"student.model": tiny_model, "student.num_layers": None, **over})
        path = tmp_path / "t.yaml"
        path.write_text(yaml.safe_dump(d))
        return _cli("trial", str(path))

    # a malformed local collection: the file and line are named
    folder = tmp_path / "broken"
    shutil.copytree(TINY_BEIR, folder)
    with (folder / "corpus.jsonl").open("a") as f:
        f.write('{"_id": "d99", "text": "unterminated\n')
    line = _one_line_exit_2(trial(**{"data.train": f"local:{folder}:test", "data.eval": []}), "trial")
    assert "corpus.jsonl:9: malformed JSON line" in line
    # a teacher file that lacks pairs the candidates need
    teacher = tmp_path / "teacher.json.gz"
    with gzip.open(teacher, "wt") as f:
        json.dump({"0": {"4983": 1.0}}, f)
    line = _one_line_exit_2(trial(teacher={"kind": "file", "path": str(teacher)}), "trial")
    assert f"teacher file {teacher} lacks" in line and "on_missing: drop" in line
    # a truncated gzipped teacher file, and one with a score that is not a number
    good = teacher.read_bytes()
    teacher.write_bytes(good[: len(good) - 10])
    line = _one_line_exit_2(trial(teacher={"kind": "file", "path": str(teacher)}), "trial")
    assert line.startswith(f"ranksweep trial: {teacher}: cannot be read to its end: truncated or corrupt")
    with gzip.open(teacher, "wt") as f:
        f.write('{"0": {"4983": NaN}}')
    line = _one_line_exit_2(trial(teacher={"kind": "file", "path": str(teacher)}), "trial")
    assert "the score of query '0', document '4983' is nan" in line
    # a report folder that cannot be created: refused before MLflow is read
    out = _cli("report", "--experiment", "none", "--tracking-uri", f"sqlite:///{tmp_path}/absent.db", "--out", "/dev/null/report")
    assert _one_line_exit_2(out, "report").startswith("ranksweep report: --out /dev/null/report: cannot create the folder")
    assert not (tmp_path / "absent.db").exists()
    # a cache that cannot be created
    line = _one_line_exit_2(trial(**{"data.cache_dir": "/dev/null/cache"}), "trial")
    assert line == "ranksweep trial: cache: cannot create /dev/null/cache: Not a directory"


def test_inputs_are_checked_before_any_stage_is_built(tmp_path, tiny_model):
    """A broken eval collection or an unavailable model: one line, exit 2, and nothing expensive built first."""
    import shutil

    from conftest import TINY_BEIR

    cache = tmp_path / "cache"

    def trial(**over):
        d = fast_config(tmp_path, **{"student.model": tiny_model, "student.num_layers": None, "data.cache_dir": str(cache), **over})
        path = tmp_path / "t.yaml"
        path.write_text(yaml.safe_dump(d))
        return _cli("trial", str(path))

    def built() -> list[str]:
        return sorted(p.name for p in cache.rglob("*") if p.is_dir()) if cache.exists() else []

    # an eval corpus whose first records do not parse: refused before the training collection is even stored
    early = tmp_path / "early"
    shutil.copytree(TINY_BEIR, early)
    with (early / "corpus.jsonl").open("a") as f:
        f.write('{"_id": "d99", "text": "unterminated\n')
    line = _one_line_exit_2(trial(**{"data.eval": [f"local:{early}:test"]}), "trial")
    assert line == f"ranksweep trial: {early / 'corpus.jsonl'}:9: malformed JSON line (Invalid control character at)"
    assert built() == []
    # a malformed line deep in an eval corpus: found when its corpus is stored, before BM25 or any teacher scoring
    deep = tmp_path / "deep"
    shutil.copytree(TINY_BEIR, deep)
    with (deep / "corpus.jsonl").open("a") as f:
        for i in range(200):
            f.write(json.dumps({"_id": f"x{i}", "title": "", "text": f"filler passage {i}"}) + "\n")
        f.write("not json\n")
    line = _one_line_exit_2(trial(**{"data.eval": [f"local:{deep}:test"]}), "trial")
    assert line.startswith(f"ranksweep trial: {deep / 'corpus.jsonl'}:209: malformed JSON line")
    assert built() and not [n for n in built() if "bm25" in n or "teacher" in n or "embed" in n], built()
    # a model that is neither a folder nor in the offline cache: named, with how to make it available
    env_line = _one_line_exit_2(trial(**{"student.model": "no-such-org/no-such-model"}), "trial")
    assert env_line.startswith("ranksweep trial: student.model: model 'no-such-org/no-such-model' is not available: ")
    assert "hf download no-such-org/no-such-model" in env_line
    line = _one_line_exit_2(trial(teacher={"kind": "ensemble", "members": [{"kind": "bm25"}, {"kind": "bi", "model": "no/teacher"}]}),
                            "trial")
    assert line.startswith("ranksweep trial: teacher.members[1].model: model 'no/teacher' is not available")
    # the same checks refuse a sweep before Ray starts
    spec = {"name": "bad", "base": fast_config(tmp_path, **{"student.model": tiny_model, "data.eval": [f"local:{early}:test"]}),
            "space": {"axes": {"loss": ["kl", "lce"]}}, "search": "grid", "resources": {"cpu": 1},
            "storage": str(tmp_path / "ray"), "tracking": {"uri": f"sqlite:///{tmp_path}/m.db", "experiment": "bad"}}
    spec["base"].pop("output_dir")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(spec))
    out = _cli("run", str(tmp_path / "bad.yaml"))
    assert _one_line_exit_2(out, "run").endswith("corpus.jsonl:9: malformed JSON line (Invalid control character at)")
    assert "Ray instance" not in out.stdout + out.stderr
