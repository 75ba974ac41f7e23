"""Issue 15 for lens 2 (attention), a report a researcher can trust: one correction method for
the heatmap's dots and the sentence (named, with a legend), legends inside the figures and clear
of the bars, the attention-pattern view opened on the head the finding names, newline tokens
visible, the verb-shift sentence naming its settings and the relatedness filter's drops,
two-sided tests by default (a one-sided test named), and the full bilinear QK score of word
pairs (top pairs per head, base-vs-tuned diff) equal to an independent computation."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import torch

import shiftlens.lenses.attention as A
import shiftlens.lenses.attention.section as section
from shiftlens import ModelPair
from shiftlens.lenses.attention import (
    EmbeddingFilter,
    instruction_attention,
    pair_diff,
    qk_scores,
    top_pairs,
    verb_shift,
    word_embeddings,
    word_pairs,
)
from shiftlens.lenses.registry import Section
from shiftlens.prompts import InstructionPrompt, default_prompts
from shiftlens.viz.style import layout_problems, pyplot
from shiftlens.vocab import default_vocab
from shiftlens.weights import qk_weights

VERBS = {"instruction": ["write", "explain", "list"], "general": ["go", "make", "take", "see"]}


@pytest.fixture(scope="module")
def lpair(tiny_dirs) -> ModelPair:
    return ModelPair.from_pretrained(*tiny_dirs("llama"))


@pytest.fixture(scope="module")
def small(lpair):
    return default_vocab(lpair.tokenizer, 300)


def _prompts(n=4):
    return [p for p in default_prompts() if p.reference][:n]


@pytest.fixture(scope="module")
def ia(lpair):
    return instruction_attention(lpair, _prompts(6), progress=False)


def _with_tests(res, p):
    """The result with chosen adjusted p-values: ``p={(layer, head): (p_holm, p_bh)}``."""
    t = res.tests.copy()
    t["p_holm"], t["p_bh"] = 1.0, 1.0
    for (layer, head), (ph, pb) in p.items():
        m = (t.layer == layer) & (t["head"] == head)
        t.loc[m, "p_holm"], t.loc[m, "p_bh"] = ph, pb
    return dataclasses.replace(res, tests=t)


def _boxes(fig, artists):
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    return [a.get_window_extent(r) for a in artists]


# ----------------------------------------------------------------------------- figures
def test_heatmap_dots_and_sentence_count_with_holm(ia):
    """Head (0, 1) significant after Holm, heads (1, 2) and (1, 3) only after BH: the dots and
    the sentence's counts are Holm's, and the legend says so."""
    res = _with_tests(ia, {(0, 1): (0.01, 0.01), (1, 2): (0.2, 0.03), (1, 3): (0.3, 0.04)})
    fig = res.plot()
    ax = fig.axes[0]
    dots = np.asarray(ax.collections[0].get_offsets())
    assert dots.tolist() == [[1.0, 0.0]]  # (head 1, row of layer 0)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["Holm-adjusted p < 0.05 (1 of 8 heads)"]
    s = res.summary()
    d01 = float(res.tests.set_index(["layer", "head"]).loc[(0, 1), "delta"])
    up, down = (1, 0) if d01 > 0 else (0, 1)
    assert (s["n_heads_up_holm"], s["n_heads_down_holm"]) == (up, down)
    assert (f"{up} of 8 heads attend to the instruction significantly more after tuning and "
            f"{down} significantly less (two-sided paired t-test per head across prompts, "
            "Holm-adjusted p < 0.05 over all 8 heads)") in s["sentence"]
    assert "BH" not in s["sentence"]
    pyplot().close(fig)
    fig = res.plot(correction="bh")  # asked for: BH dots, named BH
    assert len(fig.axes[0].collections[0].get_offsets()) == 3
    assert fig.axes[0].get_legend().get_texts()[0].get_text().startswith("BH-adjusted p < 0.05")
    pyplot().close(fig)


def test_head_delta_legends_inside_and_clear_of_the_bars(ia):
    long = {"base": "/work/main/shiftlens/zoo/pair/base", "tuned": "/work/main/shiftlens/zoo/pair/tuned"}
    res = dataclasses.replace(ia, meta={**ia.meta, "models": long})
    fig = res.show()
    assert layout_problems(fig) == []
    heat, bars = fig.axes[0], fig.axes[1]
    fig_box = _boxes(fig, [fig])[0]
    (leg,) = _boxes(fig, [bars.get_legend()])
    for b in _boxes(fig, bars.patches):
        assert not leg.overlaps(b), "the legend covers a bar"
    (dot_leg, xlabel) = _boxes(fig, [heat.get_legend(), heat.xaxis.label])
    assert fig_box.contains(dot_leg.x0, dot_leg.y0) and fig_box.contains(dot_leg.x1, dot_leg.y1)
    assert not dot_leg.overlaps(xlabel)
    texts = [t.get_text() for t in fig.texts]
    assert any("tuned: /work/main/shiftlens/zoo/pair/tuned" in t for t in texts), texts  # whole
    pyplot().close(fig)


def test_verb_figure_legend_clear_of_bars_and_pvalues(lpair, small):
    vs = verb_shift(lpair, small, top_dims=4, top_k=20, progress=False, **VERBS)
    long = {"base": "/work/main/shiftlens/zoo/pair/base", "tuned": "/work/main/shiftlens/zoo/pair/tuned"}
    vs = dataclasses.replace(vs, meta={**vs.meta, "models": long})
    fig = vs.show()
    assert layout_problems(fig) == []
    ax = fig.axes[0]
    (leg,) = _boxes(fig, [ax.get_legend()])
    ptexts = [t for t in ax.texts if t.get_text().startswith("p")]
    assert len(ptexts) == len(vs.tests)
    for b in _boxes(fig, [*ax.patches, *ptexts]):
        assert not leg.overlaps(b)
    assert "two-sided Welch t-test" in ax.get_title()
    assert any("tuned: /work/main/shiftlens/zoo/pair/tuned" in t.get_text() for t in fig.texts)
    pyplot().close(fig)


# ----------------------------------------------------------------------------- the report section
class _Ctx:
    """A minimal ReportContext that records what the section hands it."""

    def __init__(self, pair, prompts):
        self.pair, self.prompts, self.seed, self.progress, self.debug = pair, prompts, 0, False, True
        self.options = {"verb_words": 300, "view_heads": 3}
        self.findings, self.tables, self.results = [], {}, {}

    def prompts_for(self, key):
        return list(self.prompts)

    def limit_note(self, key, used):
        return f"all {used} prompts"

    def figure(self, sec, fig, name, text, *, key="", alt=""):
        from shiftlens.lenses.registry import Finding

        pyplot().close(fig)
        f = Finding(text, "<img>", key)
        sec.findings.append(f)
        return f

    def csv(self, sec, frame, name):
        self.tables[name] = frame
        return name

    def save_result(self, result, name):
        self.results[name] = result

    def attempt(self, sec, what, fn):
        return fn()


def test_pattern_view_opens_on_the_finding_head_with_visible_newlines(lpair, monkeypatch):
    """The finding names layer 1 head 3 (its largest increase): the view shows layer 1 and
    opens on head 3 (circuitsvis opens on the first head); its token labels show newlines."""
    nl = InstructionPrompt("Sort:\n\nb a", instruction=["Sort:"], context=["b a"],
                           reference="a\nb", id="nl")
    prompts = [nl, *_prompts(3)]
    real = instruction_attention(lpair, prompts, progress=False)
    t = real.tests.copy()
    top = (t.layer == 1) & (t["head"] == 3)
    t.loc[top, "delta"] = t.delta.max() + 0.5  # head 3 of layer 1 rose most
    t = t.sort_values("delta", ascending=False, kind="stable").reset_index(drop=True)
    t["rank"] = np.arange(len(t))
    res = dataclasses.replace(real, tests=t)
    monkeypatch.setattr(A, "instruction_attention", lambda *a, **k: res)
    ctx, sec = _Ctx(lpair, prompts), Section("attention", "Attention")
    section.section(ctx, sec)
    assert "Largest increase: layer 1 head 3" in sec.findings[0].text
    # the verb-shift finding names its settings (the example's differ: its sentence says so)
    assert "Settings: " in sec.findings[2].text and "top_dims=10 (8 used: d_head)" in \
        sec.findings[2].text
    (vis,) = sec.views
    heads = [p for n, p in vis.components if n == "AttentionHeads"]
    assert heads and all(p["attentionHeadNames"][0] == "L1H3" for p in heads)
    assert len(heads[0]["attentionHeadNames"]) == 3  # view_heads
    assert "opened on head 3" in vis.title
    tokens = heads[0]["tokens"]
    assert "⏎⏎" in tokens or tokens.count("⏎") >= 2
    assert all(tok.strip() for tok in tokens), tokens  # no blank label


def test_group_finding_states_direction_and_test(ia):
    from shiftlens.lenses.attention.section import _group_finding

    text = _group_finding(ia.summary())
    assert text.startswith("Attention on the instruction per layer group, base -> tuned (mean "
                           "over the group's heads; two-sided paired t-test across prompts): ")
    for g, v in ia.summary()["by_layer_group"].items():
        word = "rose" if v["mean_a"] > v["mean_b"] else "fell"
        assert f"{g} (layer {v['layers'][0]}) {word}" in text


# ----------------------------------------------------------------------------- sentences
def test_two_sided_by_default_and_a_one_sided_test_is_named(lpair, small, ia):
    s = ia.summary()["sentence"]
    assert "two-sided paired t-test across prompts" in s
    assert re.search(r"\(mean over all heads\) (rose|fell)", s)
    one = instruction_attention(lpair, _prompts(6), alternative="greater", progress=False)
    assert "one-sided (tuned > base) paired t-test" in one.summary()["sentence"]
    vs = verb_shift(lpair, small, top_dims=4, top_k=20, progress=False, **VERBS)
    assert vs.params["alternative"] == "two-sided"
    assert "two-sided Welch t-test per layer group" in vs.summary()["sentence"]
    vg = verb_shift(lpair, small, top_dims=4, top_k=20, alternative="greater", progress=False,
                    **VERBS)
    assert "one-sided (tuned > base) Welch t-test" in vg.summary()["sentence"]


def test_verb_sentence_names_its_settings_and_the_filter_drops(lpair, small):
    """Two runs with other settings give other numbers; each sentence says which settings, and
    how many candidate pairs the relatedness filter dropped in each model, and why."""
    a = verb_shift(lpair, small, top_dims=4, top_k=20, progress=False, **VERBS)
    b = verb_shift(lpair, small, top_dims=6, top_k=30, min_dims=2, progress=False, **VERBS)
    n = a.meta["n_words"]
    for res, (td, tk, md) in ((a, (4, 20, 1)), (b, (6, 30, 2))):
        s = res.summary()["sentence"]
        assert (f"Settings: {n:,}-word vocabulary, top_dims={td}, top_k={tk}, min_dims={md}, "
                "exclude_self=True, all layers, filter EmbeddingFilter(z=1.96, n_baseline=3000) "
                "bound to base.") in s
        # the drops: an unfiltered run keeps every same-sign pair (rows counted, independent)
        raw = verb_shift(lpair, small, top_dims=td, top_k=tk, min_dims=md, filter=None,
                         progress=False, **VERBS)
        f, c = res.funnel, res.filter_counts()
        for role in ("base", "tuned"):
            assert c[role]["unrelated"] + c[role]["kept"] == int((raw.pairs.role == role).sum())
            assert c[role]["kept"] == int((res.pairs.role == role).sum())
        assert raw.summary()["sentence"].endswith(
            "No relatedness filter: every same-sign candidate pair was kept.")
        assert (f"The relatedness filter dropped {c['base']['unrelated']:,} of "
                f"{c['base']['unrelated'] + c['base']['kept']:,} same-sign candidate pairs in "
                f"base and {c['tuned']['unrelated']:,} of "
                f"{c['tuned']['unrelated'] + c['tuned']['kept']:,} in tuned because the two "
                "words' cosine similarity was not above mean + 1.96 sd") in s
        assert (f.candidates == f["self"] + f.opposite_sign + f.unrelated + f.kept).all()
        for g in ("lower", "middle", "all"):
            r = res.tests.set_index("group").loc[g]
            assert (f"{int(r.n_instruction)} of 3 instruction and {int(r.n_general)} of 4 general verbs "
                    "changed in some head") in s
    assert a.summary()["sentence"] != b.summary()["sentence"]
    # a size the model caps is said: the tiny Llama's d_head is 8
    c = verb_shift(lpair, small, top_dims=10, top_k=20, progress=False, **VERBS)
    assert "top_dims=10 (8 used: d_head), top_k=20," in c.summary()["sentence"]


def test_word_pairs_say_what_the_filter_dropped(lpair, small):
    kw = dict(top_dims=4, top_k=20)
    df = word_pairs(lpair.base, 1, None, small, **kw)
    raw = word_pairs(lpair.base, 1, None, small, filter=None, **kw)
    per_raw = raw.groupby("head").size()
    for f in df.attrs["funnel"]:
        h = f["head"]
        assert f["candidates"] == 4 * 20 * 20
        assert f["self"] + f["opposite_sign"] + f["unrelated"] + f["kept"] == f["candidates"]
        assert f["kept"] == int((df["head"] == h).sum())
        assert f["unrelated"] + f["kept"] == int(per_raw.get(h, 0))  # unfiltered: all same-sign
    c = df.attrs["counts"]
    assert df.attrs["filter_note"] == (
        f"The relatedness filter EmbeddingFilter(z=1.96, n_baseline=3000) dropped "
        f"{c['unrelated']:,} of {c['unrelated'] + c['kept']:,} same-sign candidate pairs "
        f"({c['unrelated'] / (c['unrelated'] + c['kept']):.0%}) because the two words' cosine "
        f"similarity was not above mean + 1.96 sd of each word's cosines to the {len(small):,} "
        f"baseline words; {c['kept']:,} kept ({c['opposite_sign']:,} of {c['candidates']:,} "
        f"candidates dropped for opposite signs, {c['self']:,} as a word with itself).")
    assert raw.attrs["filter_note"].startswith(f"No relatedness filter: all {len(raw):,}")


# ----------------------------------------------------------------------------- the full score
def _full(model, vocab, layer):
    """[head, n, n] full scores by plain matmuls: E W_Q[h] (E W_K[h])^T."""
    E = word_embeddings(model, vocab).double()
    W_Q, W_K = qk_weights(model, layer)
    return torch.stack([(E @ W_Q[h].double()) @ (E @ W_K[h].double()).T
                        for h in range(W_Q.shape[0])])


def test_qk_scores_is_the_sum_over_every_dimension(lpair, small):
    words = small.words[:6]
    S = qk_scores(lpair.tuned, 1, 2, words, words[::-1], small)
    full = _full(lpair.tuned, small, 1)[2]
    idx = [small.words.index(w) for w in words]
    torch.testing.assert_close(S, full[idx][:, idx[::-1]], rtol=1e-6, atol=1e-9)
    # the per-dimension pairs are its terms: with every dimension and every word kept, the
    # pair's per-dimension scores of its same-sign dimensions sum to at most the full score's
    # positive part, and each term is Q[a, d] K[b, d]
    df = word_pairs(lpair.tuned, 1, 2, small, top_dims=None, top_k=len(small), filter=None)
    a, b = words[0], words[1]
    terms = df[(df.q_word == a) & (df.k_word == b)]
    Q = word_embeddings(lpair.tuned, small).double() @ qk_weights(lpair.tuned, 1)[0][2].double()
    K = word_embeddings(lpair.tuned, small).double() @ qk_weights(lpair.tuned, 1)[1][2].double()
    ia_, ib_ = small.words.index(a), small.words.index(b)
    prod = Q[ia_] * K[ib_]
    assert sorted(terms.dim) == sorted((prod > 0).nonzero().flatten().tolist())
    assert float(S[0, len(words) - 2]) == pytest.approx(float(prod.sum()), rel=1e-6)


@pytest.mark.parametrize("filt", [None, "embedding"])
def test_top_pairs_and_pair_diff_equal_a_full_matrix(lpair, small, filt):
    k = 7
    bound = EmbeddingFilter().bind(lpair.base, small) if filt else None
    n = len(small)
    ok = ~torch.eye(n, dtype=torch.bool)
    if bound is not None:
        ii, jj = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        ok &= bound(ii.flatten(), jj.flatten()).reshape(n, n)
    S = {role: _full(m, small, 1) for role, m in lpair}
    tp = top_pairs(lpair.tuned, 1, None, small, k=k, filter=filt)
    bt = EmbeddingFilter().bind(lpair.tuned, small) if filt else None
    okt = ~torch.eye(n, dtype=torch.bool)
    if bt is not None:
        ii, jj = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        okt &= bt(ii.flatten(), jj.flatten()).reshape(n, n)
    for h in range(lpair.cfg.n_heads):
        want = S["tuned"][h].masked_fill(~okt, -np.inf).flatten().topk(k)
        got = tp[tp["head"] == h]
        assert (got.q_index * n + got.k_index).tolist() == want.indices.tolist()
        np.testing.assert_allclose(got.score, want.values.numpy(), rtol=1e-4)
        raw = S["tuned"][h].masked_fill(torch.eye(n, dtype=torch.bool), -np.inf).flatten().topk(k)
        removed = int((~okt.flatten()[raw.indices]).sum())
        assert tp.attrs["funnel"][h]["removed"] == removed
    d = pair_diff(lpair, 1, None, small, k=k, filter=filt, progress=False)
    for h in range(lpair.cfg.n_heads):
        D = (S["tuned"][h] - S["base"][h]).masked_fill(~ok, np.nan)
        for change, sign in (("gained", 1), ("lost", -1)):
            want = (sign * D).nan_to_num(nan=-np.inf).flatten().topk(k)
            got = d[(d["head"] == h) & (d.change == change)]
            assert (got.q_index * n + got.k_index).tolist() == want.indices.tolist()
            np.testing.assert_allclose(got.delta, sign * want.values.numpy(), rtol=1e-4)
            a, b = got.q_index.to_numpy(), got.k_index.to_numpy()
            np.testing.assert_allclose(got.base, S["base"][h][a, b].numpy(), rtol=1e-4, atol=1e-9)
            np.testing.assert_allclose(got.tuned, S["tuned"][h][a, b].numpy(), rtol=1e-4,
                                       atol=1e-9)
    assert d.attrs["filter_model"] == "base" and d.attrs["models"] == dict(lpair.names)
