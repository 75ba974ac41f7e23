"""The residual lens's Results on the one Result base: meta, prompt ids, the aggregate frame,
save/load equality, invariants refused on load, the figure options, and the pair check.

Truths used: the arguments the functions were called with (meta), shiftlens.checks.prompt_id
(ids), the per-unit frames themselves (aggregates recomputed with pandas), and results edited to
break one invariant (refused on load, naming the invariant).
"""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pytest
import torch

import shiftlens
from shiftlens import ModelPair, ShiftlensError, ShiftlensWarning, default_prompts
from shiftlens.checks import prompt_id
from shiftlens.lenses import get_lens
from shiftlens.lenses.residual import compare, section
from shiftlens.prompts import InstructionPrompt
from shiftlens.residual import (
    OutputShiftResult,
    PatchingResult,
    SimilarityResult,
    check_pair,
    output_shift,
    patching,
    similarity,
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def llama(tiny_dirs) -> ModelPair:
    return ModelPair.from_pretrained(*tiny_dirs("llama"))


@pytest.fixture(scope="module")
def anonymous() -> list[InstructionPrompt]:
    """Two prompts with references: the first without an id, the second with one."""
    a, b = [p for p in default_prompts() if p.reference][:2]
    return [dataclasses.replace(a, id=""), b]


@pytest.fixture(scope="module")
def results(llama, anonymous):
    kw = dict(batch_size=2, n_boot=100, seed=3, progress=False)
    return (similarity(llama, anonymous, layers=[1], per_token=True, **kw),
            output_shift(llama, anonymous, top_k=2, segments=["response"], **kw),
            patching(llama, anonymous, components=["mlp_out"], response="reference", **kw))


def test_prompt_ids_are_the_shared_format_and_frames_join(results, anonymous):
    ids = [prompt_id(p, i) for i, p in enumerate(anonymous)]
    assert ids[0] == "#0" and ids[1] == anonymous[1].id
    sim, kl, pr = results
    for res in results:
        assert res.meta["prompt_ids"] == ids
    assert set(sim.to_frame().prompt_id) == set(ids) == set(sim.tokens.prompt_id)
    assert set(kl.to_frame().prompt_id) == set(ids)
    assert list(pr.prompts.prompt_id) == ids and set(pr.to_frame().prompt_id) == set(ids)
    # the lenses' frames join on the id
    j = sim.to_frame().query("segment == 'all'").merge(
        pr.prompts[["prompt_id", "gap"]], on="prompt_id", validate="many_to_one")
    assert set(j.prompt_id) == set(ids)


def test_meta_is_make_meta_with_the_call_arguments(results, llama):
    sim, kl, pr = results
    for res in results:
        assert {"models", "seed", "params", "versions", "n_layers", "prompt_ids"} <= set(res.meta)
        assert res.meta["models"] == dict(llama.names) == res.model_names
        assert res.meta["seed"] == 3 and res.meta["params"]["n_boot"] == 100
        assert res.meta["n_layers"] == llama.cfg.n_layers
        assert "model_names" not in res.meta  # no flat duplicates
    assert sim.meta["params"] == dict(layers=[1], hooks=["resid_pre", "resid_mid", "resid_post"],
                                      with_reference=True, per_token=True, n_boot=100)
    assert kl.meta["params"] == dict(layers=[0, 1], with_reference=True, segments=["response"],
                                     top_k=2, n_boot=100)
    assert pr.meta["params"] == dict(layers=[0, 1], components=["mlp_out"],
                                     directions=["tuned->base", "base->tuned"], positions="all",
                                     response="reference", max_new_tokens=16, min_gap=1e-4,
                                     alternative="two-sided", n_boot=100)
    assert kl.n_counted_positions == int(kl.to_frame().query(
        "site == 'logits' and segment == 'response'").shape[0])
    assert 0 <= kl.lens_check_max_abs_diff < 1e-4


def test_aggregate_frame_is_the_mean_over_prompts(results):
    sim, kl, pr = results
    a = sim.to_frame(aggregate=True)
    f = sim.to_frame()
    ref = f.groupby(["hook", "segment", "layer"]).cosine.mean()
    got = a.set_index(["hook", "segment", "layer"]).cosine
    np.testing.assert_allclose(got.loc[ref.index].to_numpy(), ref.to_numpy(), atol=1e-12)
    # output shift: per-prompt means first, then over prompts
    k = kl.to_frame()
    per_prompt = k.groupby(["layer", "prompt_id"]).kl.mean().groupby("layer").mean()
    allk = kl.to_frame(aggregate=True).query("segment == 'all'").set_index("layer").kl
    np.testing.assert_allclose(allk.loc[per_prompt.index].to_numpy(), per_prompt.to_numpy(),
                               atol=1e-12)
    # patching: ratio of means over prompts
    agg = pr.to_frame(aggregate=True).set_index(["direction", "component", "layer"])
    for key, g in pr.to_frame().groupby(["direction", "component", "layer"]):
        want = (g.lp_patched - g.lp_target).mean() / (g.lp_source - g.lp_target).mean()
        assert agg.loc[key, "recovery"] == pytest.approx(want, abs=1e-12)
    # a copy each time: editing it changes nothing
    a.loc[:, "cosine"] = -5.0
    assert (sim.to_frame(aggregate=True).cosine > -5).all()


def test_table_is_a_deprecated_alias(results):
    for res in results:
        with pytest.warns(DeprecationWarning, match=r"to_frame\(aggregate=True\)"):
            t = res.table()
        assert t.equals(res.to_frame(aggregate=True))


def test_save_load_equal_through_shiftlens_load(results, tmp_path):
    for res in results:
        d = res.save(tmp_path / type(res).__name__)
        back = shiftlens.load(d)
        assert type(back) is type(res) and res.equals(back), res.differences(back)
        assert json.dumps(back.summary(), default=str) == json.dumps(res.summary(), default=str)
        assert back.to_frame(aggregate=True).equals(res.to_frame(aggregate=True))


@pytest.mark.parametrize("which, edit, match", [
    (0, lambda r: dataclasses.replace(r, frame=r.frame[r.frame.prompt_id != "#0"]),
     "'all' rows"),
    (0, lambda r: dataclasses.replace(r, tokens=r.tokens.iloc[1:]), "token rows"),
    (0, lambda r: dataclasses.replace(r, frame=r.frame.assign(hook_name="blocks.9.hook_x")),
     "hook_name"),
    (1, lambda r: dataclasses.replace(r, n_counted_positions=r.n_counted_positions + 1),
     "top-token counts"),
    (1, lambda r: dataclasses.replace(r, frame=r.frame.iloc[1:]), "different numbers"),
    (1, lambda r: dataclasses.replace(r, frame=r.frame.assign(site="logits")), "site"),
    (2, lambda r: dataclasses.replace(r, frame=r.frame.iloc[1:]), "rows, expected"),
    (2, lambda r: dataclasses.replace(r, prompts=r.prompts.assign(gap=r.prompts.gap + 1)),
     "gap"),
    (2, lambda r: dataclasses.replace(r, meta={k: v for k, v in r.meta.items()
                                               if k != "prompt_ids"}), "prompt_ids"),
])
def test_inconsistent_results_are_refused_on_load(results, tmp_path, which, edit, match):
    bad = edit(results[which])
    d = bad.save(tmp_path / "bad")  # saving does not judge; loading does
    with pytest.raises(ShiftlensError, match=match) as e:
        shiftlens.load(d)
    assert str(tmp_path / "bad") in str(e.value)


def test_plot_options_and_figures(results, tmp_path):
    import matplotlib.pyplot as plt

    sim, kl, pr = results
    n_seg = sim.to_frame(aggregate=True).query("n_cosine > 0").segment.nunique()
    for metric, lines in (("cosine", 1), ("cka", 1), ("both", 2)):
        fig = sim.show(metric=metric)
        assert len(fig.axes) == n_seg  # one panel per segment, each metric a line in it
        assert max(len(ax.lines) for ax in fig.axes) == lines
        plt.close(fig)
    with pytest.raises(ShiftlensError, match="metric must be"):
        sim.plot(metric="angle")
    fig = kl.show(tmp_path / "kl.svg", n_tokens=1)
    assert len(fig.axes[1].patches) == 1 and (tmp_path / "kl.svg").stat().st_size > 1000
    plt.close(fig)
    fig = pr.plot()
    assert [ax.get_title() for ax in fig.axes] == ["base run, tuned activations patched in",
                                                    "tuned run, base activations patched in"]
    plt.close(fig)


def test_check_pair_refuses_mixed_dtypes_without_rewarning(tiny_dirs):
    from shiftlens.pair import load_bridge

    b, t = tiny_dirs("llama")
    base = load_bridge(b)
    tuned = load_bridge(t, dtype=torch.float64)
    p = ModelPair.from_models(base, tuned, check=False)
    with pytest.raises(ShiftlensError, match=r"incompatible pair .*dtypes torch.float32 != "
                                             r"torch.float64"):
        check_pair(p)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        same = ModelPair.from_models(base, base, check=False)
        check_pair(same)  # identical weights: the pair's warning is not repeated here
    assert not [w for w in rec if issubclass(w.category, ShiftlensWarning)]
    with pytest.raises(ShiftlensError, match="expected a shiftlens.ModelPair"):
        check_pair(object())


def test_registry_and_examples(llama):
    spec = get_lens("residual")
    assert [c.__name__ for c in spec.result_classes()] == [
        "SimilarityResult", "OutputShiftResult", "PatchingResult"]
    assert spec.run_section() is section.section
    ex = section.examples(llama, [p for p in default_prompts() if p.reference][:3])
    assert [type(r) for r in ex] == [SimilarityResult, OutputShiftResult, PatchingResult]
    # the old public path and the package name the same objects
    import shiftlens.lenses.residual as pkg
    import shiftlens.residual as old

    assert pkg.similarity is old.similarity is compare.similarity
    assert set(old.__all__) <= set(pkg.__all__) | {"RESULT_SEGMENTS"}


@pytest.mark.parametrize("name", ["shiftlens.lenses.residual", "shiftlens.lenses.residual.core",
                                  "shiftlens.residual"])
def test_docstring_examples_run(name):
    import doctest
    import importlib

    r = doctest.testmod(importlib.import_module(name),
                        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert r.attempted > 0 and r.failed == 0


# ---------------------------------------------------------------------------- issue 15: trust
def test_similarity_figure_is_a_readable_grid(llama):
    """Five or six segments drew as many panels in one strip up to 19 x 2.8 inches (2292 x 366
    px in the report); now a grid at most 3 panels across, each at least 2.5 x 1.8 inches."""
    from shiftlens.viz.style import layout_problems, pyplot

    prompts = [p for p in default_prompts() if p.reference and p.context][:2]
    sim = similarity(llama, prompts, batch_size=2, n_boot=50, progress=False)
    segs = sim.to_frame(aggregate=True).query("n_cosine > 0").segment.unique()
    assert len(segs) >= 5  # bos, instruction, context, response, all (no template here)
    for metric in ("cosine", "both"):
        fig = sim.show(metric=metric)
        w, h = fig.get_size_inches()
        assert w / h <= 2.5, (w, h)
        assert w * 120 <= 1600  # the report's PNG (dpi 120) stays within a page
        assert len(fig.axes) == len(segs)
        for ax in fig.axes:
            bb = ax.get_position()
            assert bb.width * w >= 2.5 and bb.height * h >= 1.8, (bb.width * w, bb.height * h)
        assert layout_problems(fig) == []
        pyplot().close(fig)


def test_patching_gap_that_may_be_zero_is_said_and_warned(llama, anonymous):
    """On the tiny pair (tuned = base + noise) the reference responses' gap has a CI across 0:
    the sentence used to state recoveries alone; now it says the gap is not reliably non-zero."""
    from scipy import stats as st

    with pytest.warns(ShiftlensWarning, match="not reliably non-zero"):
        pr = patching(llama, anonymous, components=["mlp_out"], response="reference",
                      batch_size=2, n_boot=200, progress=False)
    s = pr.summary()
    q = pr.prompts
    assert s["gap"]["ci"][0] <= 0 <= s["gap"]["ci"][1] and not s["gap"]["reliable"]
    assert "not reliably non-zero" in s["sentence"] and s["caveat"]
    # the gap test is a two-sided paired t-test of lp_tuned vs lp_base (scipy, independently)
    want = st.ttest_rel(q.lp_tuned, q.lp_base)
    assert s["gap_test"]["pvalue"] == pytest.approx(want.pvalue, rel=1e-9)
    assert s["gap_test"]["alternative"] == "two-sided"
    assert "two-sided paired t-test" in s["sentence"]
    verb = "rose" if q.gap.mean() > 0 else "fell"
    assert f"{verb}, not significantly," in s["sentence"]


def test_patching_reliable_gap_and_one_sided_test(results):
    """A clear gap (every prompt's tuned log-prob 5 nats higher): no caveat, "rose
    significantly"; a one-sided test is named as such; a bad alternative is refused."""
    pr = results[2]
    q = pr.prompts.copy()
    q["lp_tuned"] = q.lp_base + np.array([5.0, 5.5])
    q["gap"] = q.lp_tuned - q.lp_base
    q["defined"] = True
    clear = dataclasses.replace(pr, prompts=q)
    clear.validate()
    s = clear.summary()
    assert s["caveat"] == "" and s["gap"]["reliable"]
    assert "rose significantly" in s["sentence"] and "not reliably" not in s["sentence"]
    one = dataclasses.replace(clear, meta={**clear.meta, "params": {
        **clear.meta["params"], "alternative": "greater"}})
    assert "one-sided (tuned > base) paired t-test" in one.summary()["sentence"]


def test_rising_tokens_are_display_strings(results, llama):
    """Token strings shown to people go through shiftlens.tokens: the text a token adds after
    another token (a word-initial space kept), made visible in the sentence."""
    from shiftlens.tokens import display_token, token_strings

    kl = results[1]
    top = kl.top_tokens
    assert list(top.token) == [token_strings(llama.tokenizer, [int(i), int(i)])[1]
                               for i in top.token_id]
    s = kl.summary()["sentence"]
    for t in top.token.head(5):
        assert repr(display_token(t)) in s
