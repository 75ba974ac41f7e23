"""One contract for every registered Result: round trip equal, a sentence, a figure, HTML.

Parametrised over every lens in the registry (built-ins and anything registered), through each
lens's ``examples`` function on a tiny Llama pair.
"""

from __future__ import annotations

import re

import pytest

import shiftlens
from shiftlens.lenses import registered_lenses, resolve_ref
from shiftlens.result import Result

LENSES = [s for s in registered_lenses().values()]


@pytest.fixture(scope="module")
def examples(tiny_dirs):
    from shiftlens import ModelPair, default_prompts

    base, tuned = tiny_dirs("llama")
    pair = ModelPair.from_pretrained(base, tuned)
    prompts = [p for p in default_prompts() if p.reference][:3]
    cache: dict = {}

    def get(spec):
        if spec.name not in cache:
            cache[spec.name] = list(resolve_ref(spec.examples)(pair, prompts))
        return cache[spec.name]

    return get


@pytest.mark.parametrize("spec", LENSES, ids=[s.name for s in LENSES])
def test_every_result_keeps_the_contract(spec, examples, tmp_path):
    if spec.examples is None:
        pytest.fail(f"lens {spec.name!r} registers no examples function")
    results = examples(spec)
    kinds = {type(r) for r in results}
    declared = set(spec.result_classes())
    assert declared <= kinds, f"no example of {sorted(c.__name__ for c in declared - kinds)}"
    import matplotlib.pyplot as plt

    for r in results:
        name = type(r).__name__
        assert isinstance(r, Result) and name.endswith("Result"), name
        # round trip: equal, through shiftlens.load and through the class
        d = r.save(tmp_path / name)
        back = shiftlens.load(d)
        assert type(back) is type(r) and r.equals(back), r.differences(back)
        assert type(r).load(d).equals(r)
        # the summary has a sentence
        s = r.summary()
        assert isinstance(s.get("sentence"), str) and len(s["sentence"]) > 20, name
        # ...in words: no Python container or tensor repr inside it
        assert not re.search(r"\['|\[\"|\{'|tensor\(|array\(", s["sentence"]), (name, s["sentence"])
        # show writes a non-empty file and returns the figure
        fig = r.show(tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
        plt.close(fig)
        # notebooks
        html = r._repr_html_()
        assert s["sentence"][:40].replace("&", "&amp;")[:20] in html or "<p>" in html
        assert "<img" in html and "failed" not in html.split("<img")[0][-200:]
        # a short repr
        assert len(repr(r)) <= 200 and repr(r).startswith(name)
        # a frame
        assert len(r.to_frame()) >= 1
        # meta: models, seed, params, versions
        assert {"models", "params", "versions"} <= set(r.meta), name
