"""Issue 15 for lens 3 (feed-forward concepts): a report a researcher can trust.

Identical models give a retained variance of exactly 1 (float64 shares); the share tests are
two-sided unless asked, and the sentence names the test, its sidedness and the direction in
words; the share figure writes its p-values horizontally above the bars and never leaves a
panel empty without saying why; every figure passes the layout check.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from shiftlens import ModelPair, ShiftlensWarning, ffn
from shiftlens.lenses.ffn import plots
from shiftlens.viz.style import layout_problems, pyplot
from shiftlens.vocab import default_vocab


@pytest.fixture(scope="module")
def pair(tiny_dirs):
    return ModelPair.from_pretrained(*tiny_dirs("llama"))


@pytest.fixture(scope="module")
def vocab(pair):
    return default_vocab(pair.tokenizer, 300)


class _Hash:
    """Deterministic labels that vary between concepts (so the 0/1 samples are not constant)."""

    seeds = (0,)

    def annotate(self, words, *, seed=0):
        h = sum(map(ord, "".join(words[:3]))) % 4
        return ffn.Annotation(("coding", "none", "writing", "math")[h], ffn.LEVELS[h])


def _no_empty_panel_without_note(fig):
    for ax in fig.axes:
        if ax.get_label() == "<colorbar>":
            continue
        drawn = any(b.get_height() > 0 for b in ax.patches) or any(
            np.isfinite(np.asarray(line.get_ydata(), float)).any() for line in ax.lines)
        notes = [t.get_text() for t in ax.texts if t.get_text().startswith("no ")]
        assert drawn or notes, f"panel {ax.get_title()!r} is empty and says nothing"


# ------------------------------------------------------------------------------ float64 shares
def test_identical_models_keep_exactly_all_the_variance(tiny_dirs, vocab):
    """Item 10: var_retained was 1 - 6e-9 for identical models (a float32 denominator)."""
    base, _ = tiny_dirs("llama")
    with pytest.warns(ShiftlensWarning, match="identical weights"):
        twins = ModelPair.from_pretrained(base, base)  # two objects, the same weights
    for k in (4, 8, 16):
        df = ffn.rotation(twins, k, vocab=vocab, progress=False).to_frame()
        assert (df["var_retained"] == 1.0).all(), df["var_retained"].tolist()
        assert (df["tuned_var_by_base"] == df["tuned_var_by_tuned"]).all()
        assert (df["base_var_by_tuned"] == df["base_var_by_base"]).all()


def test_variance_shares_are_the_float64_projection_of_the_weights(pair, vocab):
    """tuned_var_by_tuned is computed like tuned_var_by_base (explained_share, float64), not
    from the float32 explained_variance_ratio."""
    from shiftlens.weights import mlp_out

    rot = ffn.rotation(pair, 6, vocab=vocab, progress=False)
    for layer in (0, 1):
        W = mlp_out(pair.tuned, layer)
        own = ffn.explained_share(W, ffn.pca(W, 6).components)
        row = rot.to_frame().iloc[layer]
        assert row["tuned_var_by_tuned"] == own
        assert row["var_retained"] == row["tuned_var_by_base"] / own


# ------------------------------------------------------------------------------ sidedness
def test_share_tests_are_two_sided_unless_asked_and_the_sentence_says_which(pair, vocab):
    two = ffn.concept_shift(pair, _Hash(), k=12, top_words=6, vocab=vocab, progress=False)
    assert two.params["alternative"] == "two-sided" and two.alternative == "two-sided"
    row = two.stats().set_index(["group", "kind", "label"]).loc[("all", "task", "user-oriented")]
    df = two.to_frame()
    ex = df[df.explainable]
    t = ex[ex.model == "tuned"]["task"].isin(ffn.USER_TASKS).astype(float)
    b = ex[ex.model == "base"]["task"].isin(ffn.USER_TASKS).astype(float)
    ref = stats.ttest_ind(t, b, equal_var=False)
    np.testing.assert_allclose(row["p"], ref.pvalue, rtol=1e-12)
    s = two.summary()["sentence"]
    verb = "rose" if t.mean() > b.mean() else "fell"
    assert s.startswith(f"The share of user-oriented concepts (writing, coding, math, "
                        f"translation) among the explainable W_out principal components {verb}")
    assert "two-sided Welch t-test across components p = " in s
    side = "greater" if t.mean() > b.mean() else "less"
    one = ffn.concept_shift(pair, _Hash(), k=12, top_words=6, vocab=vocab, alternative=side,
                            progress=False)
    row1 = one.stats().set_index(["group", "kind", "label"]).loc[("all", "task", "user-oriented")]
    ref1 = stats.ttest_ind(t, b, equal_var=False, alternative=side)
    np.testing.assert_allclose(row1["p"], ref1.pvalue, rtol=1e-12)
    arrow = "tuned > base" if side == "greater" else "tuned < base"
    assert f"one-sided ({arrow}) Welch t-test across components" in one.summary()["sentence"]
    assert one.stats("two-sided").set_index(["group", "kind", "label"]).loc[
        ("all", "task", "user-oriented"), "p"] == row["p"]  # asked per call too
    fig = one.plot(by_group=True)
    assert f"one-sided ({arrow}) Welch t-test" in fig._suptitle.get_text()
    pyplot().close("all")


def test_rotation_sentence_says_whether_tuning_rotated(pair, vocab, tiny_dirs):
    s = ffn.rotation(pair, 4, vocab=vocab, progress=False).summary()["sentence"]
    assert s.startswith("Tuning rotated the top-4 W_out principal subspaces")
    base, _ = tiny_dirs("llama")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ShiftlensWarning)
        twins = ModelPair.from_pretrained(base, base)
    one = ffn.rotation(twins, 4, layers=[1], vocab=vocab, progress=False).summary()["sentence"]
    assert one.startswith("Tuning did not rotate the top-4")
    assert "no CI over 1 layer" in one and "nan" not in one


# ------------------------------------------------------------------------------ figures
def test_share_figure_writes_p_horizontally_above_the_bars():
    """Item 5: p-values were stacked under the group names; now horizontal above each group."""
    rows = []
    for g in ("lower", "middle", "upper", "all"):
        for lab, b, t, p in (("coding", 0.1, 0.3, 0.012), ("math", 0.0, 0.0, np.nan),
                             ("writing", np.nan, 0.2, np.nan)):
            rows.append(dict(group=g, kind="task", label=lab, base_mean=b, base_std=np.nan,
                             tuned_mean=t, tuned_std=np.nan, p=p, unit="components",
                             alternative="two-sided"))
    fig = plots.concept_share_figure(pd.DataFrame(rows), labels=["coding", "math", "writing"])
    coding, math_ax, writing = fig.axes
    ps = [t for t in coding.texts if t.get_text().startswith("p=")]
    assert [t.get_text() for t in ps] == ["p=0.012"] * 4
    assert all(t.get_rotation() == 0 and t.xy[1] == pytest.approx(30.0) for t in ps)
    assert [t.get_text() for t in coding.get_xticklabels()] == ["lower", "middle", "upper", "all"]
    # an empty panel says why inside it; a group without a share says "no share", not "p=n/a"
    assert not math_ax.patches
    assert [t.get_text() for t in math_ax.texts] == ["no concept labelled\n'math'\nin either model"]
    assert [t.get_text() for t in writing.texts] == ["no share"] * 4
    assert "p=n/a" not in [t.get_text() for ax in fig.axes for t in ax.texts]
    assert layout_problems(fig) == []
    # the panels' labels do not run into each other
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    boxes = [ax.xaxis.label.get_window_extent(r) for ax in fig.axes]
    assert all(a.x1 < b.x0 for a, b in zip(boxes, boxes[1:]))
    pyplot().close("all")


def test_figures_of_an_uninformative_run_explain_their_empty_panels(pair, vocab):
    """The report's tiny example: no concept is labelled with a task by the lexicon."""
    res = ffn.concept_shift(pair, k=4, top_words=10, vocab=vocab, progress=False)
    for fig in (res.plot(by_group=True), res.plot(), res.plot(by_group=True, kind="level")):
        _no_empty_panel_without_note(fig)
        assert layout_problems(fig) == []
    pyplot().close("all")

    class Nothing:
        seeds = (0,)

        def annotate(self, words, *, seed=0):
            return ffn.Annotation("none", None, 1.0, 0.0, False, "cannot tell")

    none = ffn.concept_shift(pair, Nothing(), k=4, top_words=10, vocab=vocab, progress=False)
    for fig in (none.plot(by_group=True), none.plot()):
        _no_empty_panel_without_note(fig)
        assert any("neither model has\nan explainable concept" in t.get_text()
                   for ax in fig.axes for t in ax.texts)
        assert layout_problems(fig) == []
    assert none.summary()["headline"].endswith(
        "could not be compared: the base and the tuned models have no explainable component "
        "(every concept 'cannot tell').")
    pyplot().close("all")
