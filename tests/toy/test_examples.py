"""Every example script runs offline, as a user would run it (a fresh process, its own working
directory), and exits 0. The prompt-source examples (``prompts_*.py``) are run, with their
output checked, by tests/unit/test_formats.py; ``real_models.py`` needs the real-checkpoint
packages (requirements/real.txt) and is in the real tier."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(p for p in (ROOT / "examples").glob("*.py") if not p.stem.startswith("prompts_"))


def _param(p: Path):
    marks = [pytest.mark.slow]
    if p.stem == "real_models":
        marks.append(pytest.mark.real)
    return pytest.param(p, id=p.stem, marks=marks)


def test_every_capability_has_its_example():
    assert {p.stem for p in SCRIPTS} >= {
        "attribution", "attention", "ffn", "residual", "capture", "report", "runner", "scale",
        "diffing", "crosscoder", "organisms", "real_models"}


@pytest.mark.parametrize("script", [_param(p) for p in SCRIPTS])
def test_example_runs_offline(script, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, f"{script.name} exited {r.returncode}:\n{r.stderr[-3000:]}"
    assert r.stdout.strip(), f"{script.name} printed nothing"
