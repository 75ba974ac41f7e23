"""The numbers the docs quote equal docs/numbers.json, which tools/regen_docs.py writes from a run.

Fast (no model): every ``<!-- n:KEY|FMT -->...<!-- /n -->`` marker in README.md and docs/*.md
names a key of docs/numbers.json and shows exactly its formatted value; every
``<!-- generated:NAME -->`` block equals numbers.json's block; no marker is unknown or unclosed.

Slow (opt-in): ``SHIFTLENS_DOCS_RUN=DIR`` names a ``shiftlens demo`` output directory (e.g. one
``tools/regen_docs.py --out DIR`` kept); the deterministic ``values`` of numbers.json must equal
what that run gives. The suite's own demo run (``tests/unit/test_cli.py::test_demo_end_to_end``)
writes into a per-test temporary directory that this test cannot reach, and a second demo run
costs minutes, so without the variable this part is skipped.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_tool():
    spec = importlib.util.spec_from_file_location("regen_docs", ROOT / "tools" / "regen_docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


regen = _load_tool()


@pytest.fixture(scope="module")
def numbers():
    return regen.read_numbers()


def test_numbers_json_shape(numbers):
    assert numbers["generated_by"] == "tools/regen_docs.py"
    assert {"values", "measured", "blocks"} <= set(numbers)
    assert any(k.startswith("demo.") for k in numbers["values"])
    assert any(k.startswith("zoo.") for k in numbers["values"])


def test_docs_agree_with_numbers_json(numbers):
    bad = regen.problems(numbers)
    assert not bad, "run `python tools/regen_docs.py` (or fix the marker):\n" + "\n".join(bad)


def test_docs_carry_markers(numbers):
    """The pages that quote the demo and the manifest are marked, and every block is used."""
    texts = {p.name: p.read_text(encoding="utf-8") for p in regen.doc_files()}
    for page in ("report.md", "zoo.md", "reproducibility.md", "cli.md", "attribution.md"):
        assert "<!-- n:" in texts[page] or "<!-- generated:" in texts[page], page
    used = {name for t in texts.values() for name, _ in regen.blocks(t)}
    for name in ("demo-key-findings", "demo-lens-times", "zoo-evaluation", "generate-benchmark",
                 "demo-cli-output"):
        assert name in used and name in numbers["blocks"], name


def test_rendering_is_idempotent(numbers):
    for path in regen.doc_files():
        text = path.read_text(encoding="utf-8")
        assert regen.render(text, numbers) == text, path.name


def test_problems_catch_drift(tmp_path):
    """A wrong, unknown, badly formatted or unclosed marker and a stale block are all reported."""
    nums = {"values": {"a.b": 0.18123, "c": 3, "t": "x"}, "measured": {"s": 21.4},
            "blocks": {"tbl": "| a |\n|---|"}}
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text(
        "ok <!-- n:a.b|.3f -->0.181<!-- /n --> <!-- n:measured.s|.0f -->21<!-- /n --> "
        "<!-- n:t -->x<!-- /n -->\n<!-- generated:tbl -->\n| a |\n|---|\n<!-- /generated -->\n")
    assert regen.problems(nums, tmp_path) == []
    (tmp_path / "docs" / "p.md").write_text(
        "<!-- n:a.b|.3f -->0.191<!-- /n --> <!-- n:zz|.3f -->1<!-- /n --> "
        "<!-- n:t|.3f -->x<!-- /n --> <!-- n:c|d -->3\n"
        "<!-- generated:tbl -->\n| b |\n<!-- /generated -->\n"
        "<!-- generated:nope -->\nx\n<!-- /generated -->\n")
    bad = "\n".join(regen.problems(nums, tmp_path))
    assert "a.b shows '0.191', the run gives '0.181'" in bad
    assert "unknown number 'zz'" in bad
    assert "cannot be formatted" in bad
    assert "not closed" in bad
    assert "generated block 'tbl' differs" in bad
    assert "unknown generated block 'nope'" in bad
    fixed = regen.render((tmp_path / "docs" / "p.md").read_text(), nums)
    assert "<!-- n:a.b|.3f -->0.181<!-- /n -->" in fixed and "| b |" not in fixed


def test_fmt():
    assert regen.fmt(0.18123, ".3f") == "0.181"
    assert regen.fmt(0.103, "+.3f") == "+0.103"
    assert regen.fmt(0.971, ".1%") == "97.1%"
    assert regen.fmt(float("nan"), ".3f") == "n/a"
    assert regen.fmt("blocks.3", None) == "blocks.3"


def test_value_differences():
    a = {"values": {"x": 0.5, "n": float("nan"), "s": "a"}}
    assert regen.value_differences(a, {"values": {"x": 0.5, "n": float("nan"), "s": "a"}}) == []
    diff = regen.value_differences(a, {"values": {"x": 0.6, "n": float("nan"), "y": 1}})
    assert len(diff) == 3 and diff[0].startswith("s:")


def test_same_value_tolerates_summation_order_not_changes():
    assert regen.same_value(0.1810000001, 0.181, rel=1e-4)
    assert not regen.same_value(0.185, 0.181, rel=1e-4)
    assert regen.same_value("rose from 0.181 (base), p = 1.03e-26", "rose from 0.182 (base), "
                            "p = 1.04e-26")
    assert not regen.same_value("rose from 0.181", "rose from 0.183")  # two units
    assert not regen.same_value("rose from 0.181", "fell from 0.181")  # words differ
    assert not regen.same_value("layer 2 head 3", "layer 2 head 1")  # an integer is exact
    assert not regen.same_value("9,798 act/s", "9,799 act/s") and not regen.same_value(1, 2)
    assert regen.same_value("1.5 x", "1.6 x") and not regen.same_value("1.5 x", "1.7 x")
    assert regen.same_value(float("nan"), float("nan")) and not regen.same_value(True, 1)


@pytest.mark.slow
def test_numbers_json_values_equal_a_demo_run(numbers, tmp_path):
    """The demo's numbers that the docs quote (docs/numbers.json ``values``) are what the demo
    gives now, with the docs' options (``regen_docs.DEMO_ARGS``: one thread, seed 0). Run in CI
    (about 2 minutes); ``SHIFTLENS_DOCS_RUN=DIR`` reuses a demo output directory instead."""
    run = os.environ.get("SHIFTLENS_DOCS_RUN")
    if not run:
        run = tmp_path / "demo"
        regen.run_demo(run)
    fresh = regen.collect(Path(run))
    bad = regen.value_differences(regen.read_numbers(results=None), fresh, rel=1e-4)
    assert not bad, ("the docs quote a demo run that differs from a fresh one (rerun "
                     "`python tools/regen_docs.py`):\n" + "\n".join(bad[:40]))
    assert not any(isinstance(v, float) and math.isinf(v) for v in fresh["values"].values())


def test_results_files_merge_under_their_name(tmp_path):
    """docs/results/NAME.json adds NAME.KEY values, measured.NAME.KEY and NAME-BLOCK blocks, and
    a marker naming one is checked like any other."""
    (tmp_path / "docs" / "results").mkdir(parents=True)
    regen.write_numbers({"values": {"demo.x": 1.0}, "measured": {}, "blocks": {}},
                        tmp_path / "docs" / "numbers.json")
    regen.write_results(tmp_path / "docs" / "results" / "ex.json", generated_by="python x.py",
                        values={"a": {"b": 0.25, "c": float("nan")}}, measured={"seconds": 3.5},
                        blocks={"table": "| a |\n"})
    n = regen.read_numbers(tmp_path / "docs" / "numbers.json", tmp_path / "docs" / "results")
    assert n["values"]["ex.a.b"] == 0.25 and math.isnan(n["values"]["ex.a.c"])
    assert n["values"]["demo.x"] == 1.0 and n["measured"]["ex.seconds"] == 3.5
    assert n["blocks"]["ex-table"] == "| a |\n"
    good = ("<!-- n:ex.a.b|.2f -->0.25<!-- /n --> <!-- n:ex.a.c|.2f -->n/a<!-- /n -->\n"
            "<!-- generated:ex-table -->\n| a |\n<!-- /generated -->\n")
    (tmp_path / "README.md").write_text(good)
    assert regen.problems(n, tmp_path) == []
    (tmp_path / "README.md").write_text(good.replace("0.25", "0.26"))
    assert regen.problems(n, tmp_path) == ["README.md: ex.a.b shows '0.26', the run gives '0.25'"]
    # nested values an example writes come back flat, as the committed file has them
    (tmp_path / "numbers.json").write_text(json.dumps({"values": {"a": {"b": 0.25}}}))
    assert regen.flat_results(tmp_path / "numbers.json")["values"] == {"a.b": 0.25}


def test_every_results_file_names_its_source():
    """Each committed docs/results/NAME.json says what made it: examples/NAME.py (rerun and
    compared by the example tier) or a command naming an existing script."""
    for f in sorted((ROOT / "docs" / "results").glob("*.json")):
        r = regen.read_results(f)
        assert r["values"] or r["measured"] or r["blocks"], f"{f.name} is empty"
        script = r["generated_by"].split()[1]
        assert (ROOT / script).exists(), f"{f.name}: {r['generated_by']!r} names no script"
        if (ROOT / "examples" / f"{f.stem}.py").exists():
            assert r["generated_by"] == f"python examples/{f.stem}.py", f.name


def test_every_embedded_figure_comes_from_its_page_example():
    """Each figure a page embeds from docs/figures/ exists, and the page names the example that
    writes it (``Made by `python examples/X.py ...```), whose source names the file:
    ``tools/regen_docs.py --examples`` reruns it and copies the figure."""
    seen = 0
    for path in regen.doc_files():
        script, figs = regen.page_figures(path.read_text(encoding="utf-8"))
        for folder, name in figs:
            seen += 1
            assert (ROOT / "docs" / "figures" / folder / name).exists(), (path.name, name)
            assert script is not None, f"{path.name} embeds {name} but names no example"
            src = (ROOT / script).read_text(encoding="utf-8")
            assert name in src or name.rsplit(".", 1)[0] in src, (path.name, script, name)
    assert seen >= 15
