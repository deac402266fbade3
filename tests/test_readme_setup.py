"""The README's setup commands, run verbatim on a fresh clone with ``../shared`` beside it (as CI has it)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def _block(readme: str, *words: str) -> str:
    """The README's first bash block that holds every one of ``words``."""
    return next(b.strip() for b in re.findall(r"```bash\n(.*?)```", readme, re.S) if all(w in b for w in words))


@pytest.mark.skipif(not (SHARED / "ir_datasets").is_dir(), reason="needs ../shared/ir_datasets beside the checkout")
def test_readme_install_and_data_commands_run_verbatim_on_a_fresh_clone(tmp_path):
    readme = (REPO / "README.md").read_text()
    install = _block(readme, "pip install", "torch==")
    data = _block(readme, "IR_DATASETS_HOME", "../shared")
    work = tmp_path / "work"
    work.mkdir()
    (work / "shared").symlink_to(SHARED)
    subprocess.run(["git", "clone", "-q", str(REPO), str(work / "clone")], check=True)
    # a virtual environment over this one's packages: the README's install then adds only the clone, editable
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(work / "venv")], check=True)
    script = (f"set -euo pipefail\nsource {work / 'venv' / 'bin' / 'activate'}\ncd {work / 'clone'}\n{install}\n{data}\n"
              "python -c 'import os, ranksweep.core; print(ranksweep.core.__file__); print(os.environ[\"IR_DATASETS_HOME\"])'\n"
              "ranksweep --help >/dev/null\n")
    env = {k: v for k, v in os.environ.items() if k not in ("IR_DATASETS_HOME", "PYTHONPATH", "VIRTUAL_ENV")}
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    module, home = out.stdout.strip().splitlines()[-2:]
    assert Path(module).resolve().is_relative_to((work / "clone").resolve())  # the clone is what got installed
    assert Path(home) == work / "clone" / ".cache" / "ir_datasets"
    assert sorted(p.name for p in Path(home).iterdir()) == sorted(p.name for p in (SHARED / "ir_datasets").iterdir())
