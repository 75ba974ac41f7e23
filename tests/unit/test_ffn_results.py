"""Lens 3's Results, figures, report section and argument checks (the lens package's shape).

The numbers themselves are tested in test_ffn.py against independent computations; here: the
Result contract specifics (round trip, invariants refused on load, meta, old names), the
figures' contents, the section's sentences against the Results' own numbers, devices.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

import shiftlens
from shiftlens import ModelPair, ShiftlensError, ffn
from shiftlens.io import to_jsonable
from shiftlens.lenses import get_lens
from shiftlens.lenses.ffn import compare, plots, section
from shiftlens.lenses.registry import Section
from shiftlens.result import result_kinds
from shiftlens.viz.style import pyplot
from shiftlens.vocab import default_vocab


@pytest.fixture(scope="module")
def pair(tiny_dirs):
    base, tuned = tiny_dirs("llama")
    return ModelPair.from_pretrained(base, tuned)


@pytest.fixture(scope="module")
def vocab(pair):
    return default_vocab(pair.tokenizer, 500)


@pytest.fixture(scope="module")
def results(pair, vocab):
    cs = ffn.concept_shift(pair, k=4, top_words=10, vocab=vocab, progress=False)
    rot = ffn.rotation(pair, 4, vocab=vocab, top_words=5, n_moved=2, progress=False)
    return cs, rot


# ------------------------------------------------------------------------------ the Results
def test_round_trip_meta_and_old_names(results, tmp_path):
    cs, rot = results
    for r in (cs, rot):
        back = shiftlens.load(r.save(tmp_path / type(r).__name__))
        assert type(back) is type(r) and r.equals(back), r.differences(back)
        assert to_jsonable(back.summary()) == to_jsonable(r.summary())
        assert {"models", "seed", "params", "versions"} <= set(r.meta)
    assert cs.params == {"layers": [0, 1], "k": 4, "top_words": 10, "annotator": "lexicon",
                         "annotator_repr": "LexiconAnnotator(top_n=15, min_share=0.2)",
                         "seeds": [0], "vocab_size": cs.params["vocab_size"], "method": "auto",
                         "device": "cpu", "alternative": "two-sided"}
    assert rot.params["n_moved"] == 2 and rot.meta["seed"] == 0 and rot.k == 4
    assert rot.chance_overlap == pytest.approx(4 / 32)
    assert ffn.ConceptShift is ffn.ConceptShiftResult and ffn.Rotation is ffn.RotationResult
    kinds = result_kinds()
    assert kinds["ConceptShift"] is ffn.ConceptShiftResult
    assert kinds["Rotation"] is ffn.RotationResult
    assert repr(rot).startswith("RotationResult(") and "k=4" in repr(rot)
    assert len(repr(cs)) <= 200 and "annotator='lexicon'" in repr(cs)


def test_params_is_a_copy(results):
    cs, _ = results
    cs.params["k"] = 99
    assert cs.params["k"] == 4


def test_inconsistent_rotation_is_refused_on_load(results, tmp_path):
    _, rot = results
    bad = ffn.RotationResult(rot.layers, rot.moved, rot.angles[:1], dict(rot.meta))
    with pytest.raises(ShiftlensError, match="1 rows of angles for 2 layers"):
        ffn.RotationResult.load(bad.save(tmp_path / "a"))
    bad = ffn.RotationResult(rot.layers, rot.moved, rot.angles + 2.0, dict(rot.meta))
    with pytest.raises(ShiftlensError, match=r"outside \[0, pi/2\]"):
        shiftlens.load(bad.save(tmp_path / "b"))
    moved = rot.moved.assign(layer=7)
    bad = ffn.RotationResult(rot.layers, moved, rot.angles, dict(rot.meta))
    with pytest.raises(ShiftlensError, match=r"layers \[7\] that were not compared"):
        shiftlens.load(bad.save(tmp_path / "c"))
    bad = ffn.RotationResult(rot.layers.drop(columns="overlap"), rot.moved, rot.angles,
                             dict(rot.meta))
    with pytest.raises(ShiftlensError, match="lacks the columns.*overlap"):
        shiftlens.load(bad.save(tmp_path / "d"))


def test_inconsistent_concept_shift_is_refused_on_load(results, tmp_path):
    cs, rot = results
    df = cs.annotations
    bad = ffn.ConceptShiftResult(df.iloc[:-1].reset_index(drop=True), dict(cs.meta))
    with pytest.raises(ShiftlensError, match=r"15 annotations, but 2 models x 2 layers x k=4"):
        shiftlens.load(bad.save(tmp_path / "a"))
    dup = pd.concat([df.iloc[:-1], df.iloc[:1]], ignore_index=True)
    bad = ffn.ConceptShiftResult(dup, dict(cs.meta))
    with pytest.raises(ShiftlensError, match="occurs twice"):
        shiftlens.load(bad.save(tmp_path / "b"))
    bad = ffn.ConceptShiftResult(df.assign(task="poetry"), dict(cs.meta))
    with pytest.raises(ShiftlensError, match=r"unknown task labels \['poetry'\]"):
        shiftlens.load(bad.save(tmp_path / "c"))
    bad = ffn.ConceptShiftResult(df.assign(model="other"), dict(cs.meta))
    with pytest.raises(ShiftlensError, match="unknown model roles"):
        shiftlens.load(bad.save(tmp_path / "d"))
    meta = {**cs.meta, "params": {**cs.params, "alternative": "bigger"}}
    with pytest.raises(ShiftlensError, match="alternative 'bigger' is not one of"):
        shiftlens.load(ffn.ConceptShiftResult(df, meta).save(tmp_path / "e"))
    bad = ffn.RotationResult(rot.layers.assign(overlap=np.nan), rot.moved, rot.angles,
                             dict(rot.meta))
    with pytest.raises(ShiftlensError, match="non-finite overlap in layer 0"):
        shiftlens.load(bad.save(tmp_path / "f"))


# ------------------------------------------------------------------------------ figures
def test_concept_share_figure_bars_are_percent_shares():
    rows = []
    for g in ("lower", "upper", "all"):
        for lab, b, t in (("coding", 0.1, 0.3), ("user-oriented", 0.2, 0.5)):
            rows.append(dict(group=g, kind="task", label=lab, base_mean=b, base_std=np.nan,
                             tuned_mean=t, tuned_std=np.nan, p=0.04))
    fig = plots.concept_share_figure(pd.DataFrame(rows), labels=["coding", "user-oriented"])
    assert len(fig.axes) == 2
    np.testing.assert_allclose([p.get_height() for p in fig.axes[0].patches],
                               [10, 10, 10, 30, 30, 30])
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["lower", "upper", "all"]
    # each group's p written horizontally above its taller bar (issue 15: not stacked vertically)
    notes = [t for t in fig.axes[0].texts if t.get_text().startswith("p=")]
    assert [t.get_text() for t in notes] == ["p=0.04"] * 3
    assert all(t.get_rotation() == 0 for t in notes)
    assert [t.xy for t in notes] == [(0, 30.0), (1, 30.0), (2, 30.0)]
    assert "two-sided Welch t-test" in fig._suptitle.get_text()
    assert "%" in fig.axes[0].get_ylabel()
    with pytest.raises(ShiftlensError, match="no level shares"):
        plots.concept_share_figure(pd.DataFrame(rows), kind="level")
    pyplot().close("all")


def test_figures_of_the_results(results, tmp_path):
    cs, rot = results
    fig = cs.plot()
    assert len(fig.axes) == 3
    st = cs.stats().set_index(["group", "kind", "label"])
    heights = [p.get_height() for p in fig.axes[0].patches][: len(ffn.TASKS)]
    np.testing.assert_allclose(heights, [st.loc[("all", "task", t), "base_mean"]
                                         for t in ffn.TASKS])
    fig = cs.show(tmp_path / "groups.png", by_group=True, kind="level")
    assert [ax.get_title() for ax in fig.axes] == list(ffn.LEVELS)
    assert (tmp_path / "groups.png").stat().st_size > 1000
    assert any(cs.model_names["base"] in t.get_text() for t in fig.texts)  # show names them
    fig = rot.plot()
    cbar = [ax for ax in fig.axes if getattr(ax, "_colorbar", None) is not None][0]
    assert cbar.get_ylabel() == "principal angle (degrees)"
    assert fig.axes[0].get_ylabel() == "overlap / variance share (0-1)"
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), rot.layers["overlap"])
    image = fig.axes[1].images[0].get_array()
    np.testing.assert_allclose(image, np.degrees(rot.angles.numpy()).T, rtol=1e-6)
    pyplot().close("all")


def test_rotation_in_a_given_layer_order_draws_one_column_each(pair, vocab):
    rot = ffn.rotation(pair, 4, layers=[1, 0], vocab=vocab, progress=False)
    assert rot.layers["layer"].tolist() == [1, 0] and rot.params["layers"] == [1, 0]
    fig = rot.plot()
    assert [t.get_text() for t in fig.axes[1].get_xticklabels()] == ["1", "0"]
    assert fig.axes[1].images[0].get_array().shape == (4, 2)
    pyplot().close("all")


# ------------------------------------------------------------------------------ the section
class _Ctx:
    """A minimal ReportContext: records what the section hands the report."""

    def __init__(self, pair, out, debug=False, options=None):
        self.pair, self.out, self.debug = pair, out, debug
        self.prompts, self.seed, self.progress = [], 0, False
        self.options = options or {"concept_k": 4, "rotation_k": 4}
        self.figures, self.tables, self.saved = [], [], []

    def prompts_for(self, key):
        return self.prompts

    def limit_note(self, key, used):
        return f"{used} prompts"

    def figure(self, sec, fig, name, text, *, key="", alt=""):
        from shiftlens.lenses.registry import Finding

        self.figures.append((name, fig))
        f = Finding(text, "<img>", key)
        sec.findings.append(f)
        return f

    def csv(self, sec, frame, name):
        self.tables.append((name, frame))
        sec.tables.append(f"csv/{sec.name}_{name}.csv")
        return sec.tables[-1]

    def save_result(self, result, name):
        self.saved.append(name)
        result.save(self.out / name)

    def attempt(self, sec, what, fn):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - what the report does
            if self.debug:
                raise
            sec.errors.append(f"{what}: {type(e).__name__}: {e}")
            return None


def test_section_states_the_lens_numbers(pair, tmp_path):
    ctx = _Ctx(pair, tmp_path)
    sec = Section("ffn", "FFN")
    get_lens("ffn").run_section()(ctx, sec)
    assert sec.errors == [] and sec.note == "Weight-based: no prompts are used."
    assert set(sec.summaries) == {"concept_shift", "rotation"}
    rot = compare.rotation(pair, k=4, progress=False)
    s = rot.summary()
    assert sec.summaries["rotation"]["sentence"] == s["sentence"]
    key = sec.findings[1].key
    assert f"layer {s['most_rotated_layer']} (overlap {s['min_overlap']:.3f}" in key
    cs = compare.concept_shift(pair, k=4, progress=False)
    cs_s = cs.summary()
    uo = cs_s["task"]["user-oriented"]
    assert sec.findings[0].key == cs_s["headline"]
    assert f"from {uo['base_mean']:.1%} (base) to {uo['tuned_mean']:.1%} (tuned)" in cs_s["headline"]
    assert sec.summaries["concept_shift"]["sentence"] == cs_s["sentence"]
    assert [n for n, _ in ctx.figures] == ["concept_shares", "rotation"]
    assert [n for n, _ in ctx.tables] == ["concepts", "concept_stats", "rotation",
                                          "rotation_moved"]
    pd.testing.assert_frame_equal(dict(ctx.tables)["rotation"], rot.to_frame())
    assert ctx.saved == ["ffn_concepts", "ffn_rotation"]
    assert shiftlens.load(tmp_path / "ffn_rotation").equals(rot)
    assert len(sec.views) == 1 and f"layer {s['most_rotated_layer']}" in sec.views[0].title
    pyplot().close("all")


def test_section_records_a_failed_analysis_and_goes_on(pair, tmp_path, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("boom in rotation")

    monkeypatch.setattr(compare, "rotation", broken)
    ctx = _Ctx(pair, tmp_path)
    sec = Section("ffn", "FFN")
    section.section(ctx, sec)
    assert sec.errors == ["rotation: RuntimeError: boom in rotation"]
    assert list(sec.summaries) == ["concept_shift"] and len(sec.findings) == 1
    assert len(sec.views) == 1 and "layer 1" in sec.views[0].title  # the last layer
    with pytest.raises(RuntimeError, match="boom"):
        section.section(_Ctx(pair, tmp_path, debug=True), Section("ffn", "FFN"))
    pyplot().close("all")


def test_examples_give_one_of_each_result(pair):
    out = section.examples(pair, [])
    assert [type(r) for r in out] == get_lens("ffn").result_classes()


def test_registry_references_resolve_and_the_package_imports_no_torch():
    spec = get_lens("ffn")
    assert spec.run_section() is section.section
    assert spec.result_classes() == [ffn.ConceptShiftResult, ffn.RotationResult]
    code = ("import sys, shiftlens.lenses.ffn as F; assert F.SPEC.name == 'ffn'; "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "F.rotation; assert 'torch' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert set(ffn.__all__) >= {"ConceptShift", "Rotation", "concept_shift", "rotation", "pca"}


# ------------------------------------------------------------------------------ arguments
def test_bad_arguments_are_clear_errors(pair, vocab, unchecked):
    with pytest.raises(ShiftlensError, match="top_words must be >= 1"):
        ffn.concept_shift(pair, k=2, top_words=0, vocab=vocab, progress=False)
    with pytest.raises(ShiftlensError, match="method must be one of"):
        ffn.rotation(pair, 2, method="qr", vocab=vocab, progress=False)
    with pytest.raises(ShiftlensError, match="method must be one of"):
        ffn.pca(torch.randn(10, 4), 2, method="qr")
    with pytest.raises(ShiftlensError, match="n_moved must be >= 0"):
        ffn.rotation(pair, 2, n_moved=-1, vocab=vocab, progress=False)
    with pytest.raises(ShiftlensError, match="k must be >= 1"):
        ffn.rotation(pair, 0, vocab=vocab, progress=False)
    with pytest.raises(ShiftlensError, match="layers must be a list"):
        ffn.concept_shift(pair, layers="0", k=2, vocab=vocab, progress=False)
    with pytest.raises(ShiftlensError, match="min_share must be <= 1"):
        ffn.LexiconAnnotator(min_share=2.0)
    with pytest.raises(ShiftlensError, match="saturation must be > 0"):
        ffn.LexiconAnnotator(saturation=0.0)
    with pytest.raises(ShiftlensError, match="lexicons must be a Lexicons"):
        ffn.LexiconAnnotator(lexicons={"tasks": {}})
    with pytest.raises(ShiftlensError, match="top_n must be >= 1"):
        ffn.GenerativeAnnotator(lambda p: "x", top_n=0)

    class NoSeeds:
        seeds = ()

        def annotate(self, words, *, seed=0):
            return ffn.Annotation("none", "syntax")

    with pytest.raises(ShiftlensError, match="has no seeds"):
        ffn.concept_shift(pair, NoSeeds(), k=2, vocab=vocab, progress=False)


def test_duplicate_layers_are_read_once(pair, vocab):
    res = ffn.concept_shift(pair, layers=[1, 1], k=2, top_words=5, vocab=vocab, progress=False)
    assert res.params["layers"] == [1] and len(res.to_frame()) == 2 * 2


# ------------------------------------------------------------------------------ devices
def test_default_device_is_the_models(pair, vocab, monkeypatch):
    """device=None computes where the (base) model lives: shiftlens.bridge.device_of."""
    import shiftlens.bridge as core

    seen = []

    def spy(model):
        seen.append(model)
        return torch.device("cpu")

    monkeypatch.setattr(core, "device_of", spy)
    rot = ffn.rotation(pair, 2, layers=[0], vocab=vocab, progress=False)
    assert seen == [pair.base] and rot.params["device"] == "cpu"
    seen.clear()
    pc = ffn.principal_components(pair.tuned, 0, k=2)
    assert seen == [pair.tuned] and pc.components.device.type == "cpu"
    seen.clear()
    ffn.principal_components(pair.tuned, 0, k=2, device="cpu")
    assert seen == []  # an explicit device is used as given
