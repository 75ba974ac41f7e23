"""shiftlens.report: lens selection, prompt caps, findings in words, skipped/failed lenses, files."""

from __future__ import annotations

import json
import math
import re
import sys
from collections import Counter

import pandas as pd
import pytest

from shiftlens import InstructionPrompt, ShiftlensError, default_prompts
from shiftlens.report import (
    DEFAULT_LIMITS,
    LENSES,
    available_lenses,
    build_report,
    change_sentence,
    resolve_lenses,
    select_prompts,
)


def _strict_json(path):
    def bad(x):
        raise ValueError(f"non-standard JSON constant {x}")

    return json.loads(path.read_text(), parse_constant=bad)


# ----------------------------------------------------------------------------- pure helpers
def test_select_prompts_is_balanced_ordered_and_deterministic():
    prompts = default_prompts()
    for n in (1, 7, 16, 40):
        sub = select_prompts(prompts, n)
        assert len(sub) == n
        pos = [prompts.index(p) for p in sub]
        assert pos == sorted(pos)  # input order kept
        counts = Counter(p.category for p in sub)
        cats = {p.category for p in prompts}
        if n >= len(cats):
            assert set(counts) == cats
        assert max(counts.values()) - min(counts.values()) <= 1
        assert select_prompts(prompts, n) == sub
    assert select_prompts(prompts, None) == prompts
    assert select_prompts(prompts, len(prompts) + 5) == prompts


def test_report_order_does_not_depend_on_import_order():
    """Lenses with equal ``order`` keep BUILTIN_LENSES order whichever package was imported
    first (the registry's insertion order reversed changes nothing)."""
    from shiftlens.lenses import registered_lenses
    from shiftlens.lenses.registry import _REGISTRY

    before = list(registered_lenses())
    saved = dict(_REGISTRY)
    try:
        _REGISTRY.clear()
        _REGISTRY.update(reversed(list(saved.items())))
        assert list(registered_lenses()) == before
    finally:
        _REGISTRY.clear()
        _REGISTRY.update(saved)


def test_resolve_lenses():
    from shiftlens.lenses import BUILTIN_LENSES, registered_lenses

    # every registered lens, in registration (report) order: the built-in ones first
    assert resolve_lenses(None) == list(LENSES) == list(registered_lenses())
    assert list(LENSES)[:len(BUILTIN_LENSES)] == list(BUILTIN_LENSES)
    assert resolve_lenses("all") == list(LENSES)
    assert resolve_lenses("residual,attention") == ["attention", "residual"]  # report order
    assert resolve_lenses(["ffn", "ffn"]) == ["ffn"]
    with pytest.raises(ShiftlensError, match="unknown lens 'atention'; choose from attribution"):
        resolve_lenses("atention")


def test_change_sentence_wording_and_digits():
    s = change_sentence("the score", 0.2, 0.5, p=0.001, test="paired t-test", ci=(0.1, 0.4), n=9)
    assert s == ("The score rose significantly from 0.200 (base) to 0.500 (tuned) (difference "
                 "+0.300, 95% CI [0.100, 0.400], two-sided paired t-test p = 0.001, n = 9; "
                 "significant at 0.05).")
    assert change_sentence("x", 2.0, 1.0, p=0.2).startswith(
        "X fell, not significantly, from 2.000 (base) to 1.000")
    assert "not significant at 0.05" in change_sentence("x", 2.0, 1.0, p=0.2)
    # issue 15: a one-sided test never calls a clear drop "not significant" without saying why
    drop = change_sentence("x", 0.476, 0.117, p=1.0, test="Welch t-test", alternative="greater")
    assert "one-sided (tuned > base) Welch t-test p = 1" in drop
    assert "looked for the opposite direction" in drop and "not significant" not in drop
    up = change_sentence("x", 0.1, 0.2, p=0.01, test="Welch t-test", alternative="greater")
    assert up.startswith("X rose significantly") and "one-sided (tuned > base)" in up
    close = change_sentence("x", 0.4131310, 0.4131311)
    base, tuned = re.findall(r"from ([\d.]+) \(base\) to ([\d.]+)", close)[0]
    assert base != tuned and float(base) == pytest.approx(0.413131, abs=1e-6)
    assert "did not change" in change_sentence("x", 1.0, 1.0)
    assert "could not be compared" in change_sentence("x", float("nan"), 1.0)


def test_available_lenses_reports_missing_modules_and_functions(monkeypatch):
    av = available_lenses()
    assert set(av) == set(LENSES)
    monkeypatch.setitem(sys.modules, "shiftlens.residual", None)  # import fails
    import shiftlens.lenses.ffn.compare as ffn_compare

    monkeypatch.delattr(ffn_compare, "rotation")
    av = available_lenses()
    assert av["residual"][0] is False and "cannot be imported" in av["residual"][1]
    assert av["ffn"][0] is False and "shiftlens.lenses.ffn.compare:rotation cannot be imported" in av["ffn"][1]


def test_build_report_rejects_bad_input(llama_pair, tmp_path):
    with pytest.raises(ShiftlensError, match="no prompts"):
        build_report(llama_pair, [], tmp_path)
    with pytest.raises(ShiftlensError, match="not an InstructionPrompt"):
        build_report(llama_pair, ["text"], tmp_path)
    with pytest.raises(ShiftlensError, match="max_prompts"):
        build_report(llama_pair, default_prompts()[:2], tmp_path, max_prompts=0)
    with pytest.raises(ShiftlensError, match="unknown lens"):
        build_report(llama_pair, default_prompts()[:2], tmp_path, lenses="nope")
    with pytest.raises(ShiftlensError, match="unknown prompt-cap key"):
        build_report(llama_pair, default_prompts()[:2], tmp_path, limits={"attn": 3})
    # the default caps are the union of the registered lenses' own caps (a lens without a
    # prompt loop, such as weight_delta, declares none)
    from shiftlens.lenses import registered_lenses

    want = {k: v for spec in registered_lenses().values() for k, v in spec.limits.items()}
    assert dict(DEFAULT_LIMITS) == want and "patching" in want


# ----------------------------------------------------------------------------- a whole report
def test_report_skips_missing_lens_reports_failed_lens_and_writes_files(llama_pair, tmp_path,
                                                                        monkeypatch):
    import shiftlens.ffn as ffn
    import shiftlens.lenses.attention as attention

    monkeypatch.setitem(sys.modules, "shiftlens.residual", None)  # not installed

    def broken(*a, **k):
        raise RuntimeError("boom in instruction_attention")

    monkeypatch.setattr(attention, "instruction_attention", broken)
    prompts = default_prompts()[:6]
    rep = build_report(llama_pair, prompts, tmp_path / "r", lenses="attention,ffn,residual",
                       progress=False, options={"concept_k": 4, "rotation_k": 4})
    st = {s.name: s.status for s in rep.sections}
    assert st == {"attention": "failed", "ffn": "ok", "residual": "skipped"}
    assert rep.failed == ["attention"]
    html = rep.html_path.read_text()
    assert "Lens not available: shiftlens.residual:similarity cannot be imported" in html
    assert "boom in instruction_attention" in html
    assert (tmp_path / "r" / "errors" / "attention.txt").read_text().count("Traceback") == 1

    # the numbers in the words are the lens's own numbers (independent rerun, same settings)
    rot = ffn.rotation(llama_pair, k=4, progress=False).summary()
    key = [h for h in rep.headlines if "rotated most" in h][0]
    assert f"layer {rot['most_rotated_layer']}" in key
    assert f"overlap {rot['min_overlap']:.3f}" in key
    cs = ffn.concept_shift(llama_pair, k=4, progress=False)
    uo = cs.summary()["task"]["user-oriented"]
    key = [h for h in rep.headlines if "user-oriented" in h][0]
    # the lens states shares in percent ("from 12.5% (base) to 10.0% (tuned)"), with at least
    # one decimal: the printed numbers equal the rerun's means to the printed precision
    got = re.search(r"from (-?[\d.]+)% \(base\) to (-?[\d.]+)% \(tuned\)", key)
    assert got, key
    for printed, mean in zip(got.groups(), (uo["base_mean"], uo["tuned_mean"])):
        decimals = len(printed.partition(".")[2])
        assert decimals >= 1 and float(printed) == pytest.approx(100 * mean, abs=0.5 * 10 ** -decimals)

    # files: metrics.json (strict JSON), CSVs equal to the Results' frames, PNG + SVG figures
    m = _strict_json(rep.metrics_path)
    assert m["models"] == llama_pair.names and m["n_prompts"] == 6
    assert m["lenses"]["residual"]["status"] == "skipped"
    assert m["lenses"]["ffn"]["summary"]["rotation"]["most_rotated_layer"] == rot["most_rotated_layer"]
    got = pd.read_csv(tmp_path / "r" / "csv" / "ffn_rotation.csv")
    want = ffn.rotation(llama_pair, k=4, progress=False).to_frame()
    pd.testing.assert_series_equal(got["overlap"], want["overlap"], check_names=False, atol=1e-9)
    for f in m["lenses"]["ffn"]["figures"]:
        assert (tmp_path / "r" / f).stat().st_size > 1000
    assert {p.suffix for p in (tmp_path / "r" / "figures").iterdir()} == {".png", ".svg"}
    # saved Results reload
    assert ffn.Rotation.load(tmp_path / "r" / "results" / "ffn_rotation").to_frame().shape == want.shape

    # self-contained page: figures inline, no network, one circuitsvis bundle for the views
    assert html.count("data:image/png;base64,") == len(m["lenses"]["ffn"]["figures"]) // 2
    assert not re.search(r"""<(script|link|img)[^>]+(src|href)=["']?https?:""", html)
    from shiftlens.viz import circuitsvis_js

    assert html.count(circuitsvis_js()) == (1 if "CircuitsVis.render(" in html else 0)


def test_report_debug_reraises(llama_pair, tmp_path, monkeypatch):
    import shiftlens.lenses.ffn.compare as ffn_compare

    def broken(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(ffn_compare, "concept_shift", broken)
    with pytest.raises(RuntimeError, match="boom"):
        build_report(llama_pair, default_prompts()[:2], tmp_path, lenses="ffn", progress=False,
                     debug=True, options={"rotation_k": 4})


def test_attention_section_states_the_lens_numbers(llama_pair, tmp_path):
    from shiftlens.attention import instruction_attention

    prompts = default_prompts()[:8]
    rep = build_report(llama_pair, prompts, tmp_path, lenses="attention", max_prompts=5,
                       progress=False, options={"verb_words": 300, "view_heads": 2})
    sec = rep.sections[0]
    assert sec.status == "ok", sec.errors
    used = select_prompts(prompts, 5)
    res = instruction_attention(llama_pair, used, progress=False)
    s = res.summary()["instruction_mass"]
    # the view shows the layer of the top head, and its 2 heads whose change is largest
    t = res.tests
    layer = int(t.iloc[0]["layer"])
    lt = t[t.layer == layer].assign(a=lambda d: d.delta.abs()).sort_values("a", ascending=False)
    want = [f"L{layer}H{h}" for h in sorted(lt["head"].head(2).astype(int))]
    for _, props in sec.views[0].components:
        assert props["attentionHeadNames"] == want
    key = rep.headlines[0]
    b, t = re.findall(r"from ([\d.]+) \(base\) to ([\d.]+) \(tuned\)", key)[0]
    assert float(b) == pytest.approx(s["mean_b"], abs=10 ** -(len(b.split(".")[1])) / 2 + 1e-12)
    assert float(t) == pytest.approx(s["mean_a"], abs=10 ** -(len(t.split(".")[1])) / 2 + 1e-12)
    p = float(re.findall(r"p = ([\d.e-]+)", key)[0])
    assert math.isclose(p, s["pvalue"], rel_tol=1e-2)
    assert sec.n_prompts == {"instruction_attention": 5}
    assert [c for v in sec.views for c, _ in v.components] == ["AttentionHeads"] * 3
    assert "verb_shift" in sec.summaries
    html = rep.html_path.read_text()
    assert html.count("CircuitsVis.render(") == 3
    assert "attention_head_tests.csv" in html


def test_prompts_without_category_and_ids(llama_pair, tmp_path, monkeypatch):
    import shiftlens.lenses.ffn.compare as ffn_compare

    def broken(*a, **k):
        raise RuntimeError("skip the work")

    monkeypatch.setattr(ffn_compare, "concept_shift", broken)
    monkeypatch.setattr(ffn_compare, "rotation", broken)
    prompts = [InstructionPrompt("Reverse: a b c", instruction=["Reverse:"], reference=" c b a"),
               InstructionPrompt("Count: a b", instruction=["Count:"], reference=" 2")]
    rep = build_report(llama_pair, prompts, tmp_path, lenses="ffn", progress=False)
    assert rep.sections[0].status == "failed" and len(rep.sections[0].errors) == 2
    m = _strict_json(rep.metrics_path)
    assert m["categories"] == {"(none)": 2} and m["prompt_ids"] == ["", ""]
    assert "No lens produced a finding" in rep.html_path.read_text()


@pytest.mark.parametrize("name", ["shiftlens.report", "shiftlens.report.core", "shiftlens.cli"])
def test_docstring_examples(name):
    import doctest
    import importlib

    res = doctest.testmod(importlib.import_module(name),
                          optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert res.attempted > 0 and res.failed == 0
