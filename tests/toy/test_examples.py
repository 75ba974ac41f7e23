"""Every example script runs offline, as a user would run it (a fresh process, its own working
directory), and exits 0. The prompt-source examples (``prompts_*.py``) are run, with their
output checked, by tests/unit/test_formats.py; ``real_models.py`` needs the real-checkpoint
packages (requirements/real.txt) and is in the real tier."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "results"
SCRIPTS = sorted(p for p in (ROOT / "examples").glob("*.py") if not p.stem.startswith("prompts_"))


def _load_regen():
    spec = importlib.util.spec_from_file_location("regen_docs", ROOT / "tools" / "regen_docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


#: tools/regen_docs.py (its results-file readers and ``same_value``), loaded once
regen = _load_regen()


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
    committed = RESULTS / f"{script.stem}.json"
    if committed.exists():
        fresh = sorted(tmp_path.rglob("numbers.json"))
        assert len(fresh) == 1, f"{script.name} wrote {len(fresh)} numbers.json files"
        assert_same_values(regen.flat_results(fresh[0])["values"],
                           regen.read_results(committed)["values"], script.stem)


def assert_same_values(fresh: dict, committed: dict, name: str, rel: float = 1e-4) -> None:
    """The values an example printed now are the ones the docs quote (docs/results/<stem>.json,
    whose numbers the docs' markers show; tests/unit/test_docs_numbers.py checks that part).
    Floats agree to ``rel`` (BLAS summation order may differ between machines), numbers printed in
    text to one unit of their last digit, the rest exactly (``regen_docs.same_value``)."""
    bad = [f"{key}: the run gives {fresh.get(key, '<missing>')!r}, docs/results/{name}.json "
           f"has {committed.get(key, '<missing>')!r}"
           for key in sorted(set(fresh) | set(committed))
           if not regen.same_value(fresh.get(key, "<missing>"), committed.get(key, "<missing>"),
                                   rel)]
    assert not bad, (f"examples/{name}.py: the numbers the docs quote are not what the example "
                     f"gives now (rerun `python tools/regen_docs.py --results {name}`):\n"
                     + "\n".join(bad[:30]))
