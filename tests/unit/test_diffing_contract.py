"""The diffing lenses (activation_difference, weight_delta, amplification) keep the Result contract.

The same checks as tests/unit/test_contract.py and test_figures.py, run on these lenses while
they are not yet in ``BUILTIN_LENSES`` (importing the packages registers them), plus the diffing
interface every one of their Results shares: ``top_tokens(k)``, ``diffing_sources``,
``diffing_runner``.
"""

from __future__ import annotations

import inspect

import pytest
import torch

import shiftlens
import shiftlens.lenses.activation_difference
import shiftlens.lenses.amplification
import shiftlens.lenses.weight_delta  # noqa: F401 - registers the lenses
from shiftlens.lenses import get_lens, resolve_ref
from shiftlens.result import Result
from shiftlens.viz.style import layout_problems, pyplot

NAMES = ("activation_difference", "weight_delta", "amplification")


@pytest.fixture(scope="module")
def examples(tiny_dirs):
    from shiftlens import ModelPair, default_prompts

    pair = ModelPair.from_pretrained(*tiny_dirs("llama"))
    prompts = [p for p in default_prompts() if p.reference][:3]
    cache: dict = {}

    def get(name):
        if name not in cache:
            cache[name] = list(resolve_ref(get_lens(name).examples)(pair, prompts))
        return cache[name]

    return get


@pytest.mark.parametrize("name", NAMES)
def test_contract(name, examples, tmp_path):
    spec = get_lens(name)
    results = examples(name)
    assert set(spec.result_classes()) <= {type(r) for r in results}
    for r in results:
        cls = type(r).__name__
        assert isinstance(r, Result) and cls.endswith("Result")
        d = r.save(tmp_path / cls)
        back = shiftlens.load(d)
        assert type(back) is type(r) and r.equals(back), r.differences(back)
        s = r.summary()
        assert isinstance(s.get("sentence"), str) and len(s["sentence"]) > 20
        fig = r.show(tmp_path / f"{cls}.png")
        assert (tmp_path / f"{cls}.png").stat().st_size > 1000
        assert layout_problems(fig) == [], (cls, layout_problems(fig))
        pyplot().close(fig)
        html = r._repr_html_()
        assert "<img" in html and "failed" not in html.split("<img")[0][-200:]
        assert len(repr(r)) <= 200 and repr(r).startswith(cls)
        assert len(r.to_frame()) >= 1
        assert {"models", "params", "versions"} <= set(r.meta)


@pytest.mark.parametrize("name", NAMES)
def test_diffing_interface(name, examples):
    """Every Result of these lenses is a diffing Result: a ranking per declared source, and a
    runner taking (pair, texts)."""
    for r in examples(name):
        cls = type(r)
        assert cls.diffing_sources and callable(getattr(cls, "top_tokens", None))
        for source in cls.diffing_sources:
            try:
                top = r.top_tokens(3, source=source)
            except shiftlens.ShiftlensError as e:  # e.g. a source with nothing to read
                assert "no " in str(e)
                continue
            assert top.dtype == torch.long and top.shape == (3,)
            assert len(set(top.tolist())) == 3
        runner = resolve_ref(cls.diffing_runner)
        params = list(inspect.signature(runner).parameters)
        assert params[0] in ("pair", "base")
        with pytest.raises(shiftlens.ShiftlensError):
            r.top_tokens(3, source="no such source")


def test_cli_commands_parse():
    from shiftlens.cli import build_parser

    p = build_parser()
    for argv in (["adl", "toy:base", "toy:tuned", "--positions", "3"],
                 ["weight-delta", "toy:base", "toy:tuned", "--rank", "2"],
                 ["amplify", "toy:base", "toy:tuned", "the cat", "--alphas", "0,2"]):
        args = p.parse_args(argv)
        assert args.handler.startswith("shiftlens.lenses.")


def _script(name):
    """A benchmark script as a module (benchmarks/ is not a package)."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_docs_diffing_table_is_the_scripts_output():
    """docs/diffing.md's methods x organisms table is exactly what benchmarks/diffing_table.py
    writes from its JSON (no number typed by hand; tests/toy/test_diffing_organisms.py recomputes
    every cell's score from the top-20 token ids the JSON records)."""
    import json

    mod = _script("diffing_table")
    table = json.loads((mod.ROOT / "benchmarks/results/diffing_table.json").read_text())
    md = mod.markdown(table)
    block = f"{mod.START}\n{md}\n\n{mod._footer(table)}\n{mod.END}"
    assert block in (mod.ROOT / "docs/diffing.md").read_text(encoding="utf-8")
    assert (mod.ROOT / "benchmarks/results/diffing_table.md").read_text() == md + "\n"
    assert table["k"] == 20 and len(table["pairs"]) == 5
    scored = {c["method"] for c in table["cells"] if "score" in c}
    assert {"DiffMining", "Amplification", "reference"} <= scored


def test_docs_adl_cost_is_the_scripts_output():
    """The cost table of docs/diffing.md is benchmarks/activation_difference.py's markdown of its
    JSON; each ratio is the CPU time over its unit's."""
    import json

    mod = _script("activation_difference")
    rows = json.loads(mod.OUT.read_text())["measurements"]
    block = f"{mod.START}\n{mod.markdown(rows)}\n{mod.END}"
    assert block in (mod.ROOT / "docs/diffing.md").read_text(encoding="utf-8")
    by = {r["method"]: r for r in rows}
    for name in mod.WHAT:
        unit = by["forward" if by[name]["unit"] == "forward" else "greedy"]["cpu_s"]
        assert by[name]["ratio"] == pytest.approx(by[name]["cpu_s"] / unit, rel=0.02, abs=0.01)
