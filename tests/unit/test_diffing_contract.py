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
