"""Issue 14's probe list (tools/reliability_probes.py) and its table in docs/reliability.md.

Each probe runs through the public API or the CLI; its outcome must be the one it documents: a
ShiftlensError, CLI exit 2, or a valid result, never another exception. A probe marked ``open``
(a known finding not fixed yet) is an expected failure, strict: when the fix lands the test
says so and the mark must go. The docs table must be what the script last wrote to its JSON, and
each probe's covering test must exist.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_script():
    name = "reliability_probes"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / "reliability_probes.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


R = _load_script()


def _param(p):
    marks = []
    if p.slow:
        marks.append(pytest.mark.slow)
    if p.open:
        marks.append(pytest.mark.xfail(reason=f"open finding: should be {p.open}", strict=True))
    return pytest.param(p, id=p.name, marks=marks)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    c = R.Ctx(tmp_path_factory.mktemp("probes"))
    yield c
    torch.set_num_threads(n)


@pytest.mark.parametrize("p", [_param(p) for p in R.PROBES])
def test_probe_gets_what_it_documents(p, ctx, unchecked):
    rec = R.run_probe(p, ctx)
    assert rec["kind"] in ("error", "exit 2", "ok"), rec["outcome"]  # never another exception
    assert rec["kind"] == p.expect, rec["outcome"]
    if p.expect == "exit 2":
        assert rec["outcome"].startswith("exit 2: shiftlens: error: "), rec["outcome"]


def test_probe_list_covers_every_point_and_lens():
    assert {p.point for p in R.PROBES} == {1, 2, 3, 4, 5}
    assert len({p.name for p in R.PROBES}) == len(R.PROBES)
    lenses = {"attribution", "attention", "ffn", "residual", "activation_difference",
              "weight_delta", "amplification", "crosscoder"}
    named = {m.group(1) for p in R.PROBES if p.point == 3
             for m in [re.match(r"lens (\w+):", p.text)] if m}
    assert named == lenses


def test_covering_tests_exist():
    for p in R.PROBES:
        if p.test.startswith("("):
            continue
        path, _, name = p.test.partition("::")
        f = ROOT / path
        assert f.is_file(), p.test
        name, _, param = name.partition("[")  # a parametrized test: its case is this probe's
        assert re.search(rf"^def {re.escape(name)}\(", f.read_text(), re.M), p.test
        if param:
            assert param.rstrip("]") in {q.name for q in R.PROBES}, p.test


def test_docs_table_is_the_scripts_last_output():
    data = json.loads(R.JSON_PATH.read_text(encoding="utf-8"))
    records = data["probes"]
    assert [r["name"] for r in records] == [p.name for p in R.PROBES], \
        "the probe list changed: run tools/reliability_probes.py"
    for r, p in zip(records, R.PROBES):
        assert (r["point"], r["probe"], r["test"], r["open"]) == (p.point, p.text, p.test, p.open)
        assert r["kind"] == p.expect or p.open, r
    doc = R.DOC_PATH.read_text(encoding="utf-8")
    i, j = doc.index(R.BEGIN), doc.index(R.END) + len(R.END)
    assert doc[i:j] == R.doc_section(records, data["meta"]), \
        "docs/reliability.md is out of sync: run tools/reliability_probes.py"
