"""Lens 2 (shiftlens.attention) on tiny random models: activation view, word pairs, verb shift.

The planted QK edit is in tests/planted/test_attention_planted.py, the embedded pair in
tests/toy/test_attention_toy.py."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pandas as pd
import pytest
import torch
from attention_reference import direct_mass, full_patterns  # tests/attention_reference.py
from scipy import stats as st

from shiftlens import ModelPair, ShiftlensError, ShiftlensWarning
from shiftlens.attention import (
    InstructionAttentionResult,
    VectorFilter,
    VerbShiftResult,
    general_verbs,
    instruction_attention,
    instruction_verbs,
    layer_word_pairs,
    model_word_pairs,
    pair_word_counts,
    verb_shift,
    word_embeddings,
    word_pairs,
    word_pairs_layer,
)
from shiftlens.pair import load_bridge
from shiftlens.prompts import InstructionPrompt, default_prompts
from shiftlens.stats import p_adjust
from shiftlens.vocab import default_vocab
from shiftlens.weights import WordVocab

# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def lpair(tiny_dirs) -> ModelPair:
    base, tuned = tiny_dirs("llama")
    return ModelPair.from_pretrained(base, tuned)


@pytest.fixture(scope="module")
def vocab(lpair) -> WordVocab:
    return default_vocab(lpair.tokenizer, 5000)


def _prompts() -> list[InstructionPrompt]:
    ps = [p for p in default_prompts() if p.reference][:5]
    no_ref = dataclasses.replace(ps[0], reference=None, id="no-ref")
    no_ins = InstructionPrompt("The weather was warm and the market was busy.", id="no-ins")
    return ps + [no_ref, no_ins]




# ----------------------------------------------------------------------------- activation view


@pytest.fixture(scope="module")
def full_cache(lpair):
    """Full attention patterns (reduce=None) of the prompts that have instruction tokens."""
    return full_patterns(lpair, _prompts()[:-1])


@pytest.fixture(scope="module")
def ia_response(lpair):
    with pytest.warns(ShiftlensWarning, match="no instruction tokens"):
        return instruction_attention(lpair, _prompts(), query="response", progress=False)


@pytest.mark.parametrize("query", ["response", "last"])
def test_instruction_attention_equals_direct_computation(lpair, query, ia_response, full_cache):
    prompts = _prompts()
    if query == "response":
        res = ia_response
    else:
        with pytest.warns(ShiftlensWarning, match="no instruction tokens"):
            res = instruction_attention(lpair, prompts, query=query, progress=False)
    kept = prompts[:-1]
    assert res.excluded == ["no-ins"]
    assert res.n_prompts == len(kept)
    assert res.prompt_ids == [p.id for p in kept]
    if query == "response":
        assert res.fallback_last == ["no-ref"]
    else:
        assert res.fallback_last == [] and all(res.used_last)
    direct = direct_mass(lpair, kept, list(range(lpair.cfg.n_layers)), query, full_cache)
    torch.testing.assert_close(res.mass, direct, atol=1e-5, rtol=1e-4)
    # masses are distributions over key segments
    torch.testing.assert_close(res.mass.sum(-1), torch.ones(res.mass.shape[:-1]), atol=1e-4, rtol=0)
    # the frame is the mean over prompts
    f = res.to_frame()
    assert list(f.columns) == ["layer", "head", "segment", "base", "tuned", "delta"]
    row = f[(f.layer == 1) & (f["head"] == 3) & (f.segment == "instruction")].iloc[0]
    assert row.base == pytest.approx(float(direct[0, :, 1, 3, 1].mean()), abs=1e-5)
    assert row.tuned == pytest.approx(float(direct[1, :, 1, 3, 1].mean()), abs=1e-5)


def test_per_head_paired_tests_and_adjustment(lpair, ia_response):
    res = ia_response
    ins = res.mass[..., 1].double().numpy()  # equal to the direct computation (test above)
    t = res.ranking()
    assert len(t) == lpair.cfg.n_layers * lpair.cfg.n_heads
    assert (np.diff(t.delta.to_numpy()) <= 0).all()  # sorted by change, largest increase first
    for r in t.itertuples():
        tuned, base = ins[1, :, r.layer, r.head], ins[0, :, r.layer, r.head]
        ref = st.ttest_rel(tuned, base)
        assert r.delta == pytest.approx((tuned - base).mean(), abs=1e-6)
        assert r.p == pytest.approx(ref.pvalue, rel=1e-3, abs=1e-9)
    # adjusted p-values: Holm by an explicit step-down loop, BH against scipy
    p = t.p.to_numpy()
    order = np.argsort(p)
    holm = np.empty_like(p)
    running = 0.0
    for rank, idx in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[idx]))
        holm[idx] = running
    np.testing.assert_allclose(t.p_holm.to_numpy(), holm)
    np.testing.assert_allclose(t.p_bh.to_numpy(), st.false_discovery_control(p, method="bh"))


def test_p_adjust_hand_values():
    p = [0.01, 0.02, 0.03, 0.5, float("nan")]
    # Holm: sorted p * (m, m-1, ...) = .04, .06, .06, .5 (running max); NaN untouched
    np.testing.assert_allclose(p_adjust(p, "holm"), [0.04, 0.06, 0.06, 0.5, np.nan])
    # BH: p * m / rank = .04, .04, .04, .5 (running min from the top)
    np.testing.assert_allclose(p_adjust(p, "bh"), [0.04, 0.04, 0.04, 0.5, np.nan])
    with pytest.raises(ShiftlensError):
        p_adjust(p, "bonferroni")  # type: ignore[arg-type]


def test_instruction_attention_result_roundtrip_and_figure(ia_response, tmp_path):
    res = ia_response
    res.save(tmp_path / "r")
    back = InstructionAttentionResult.load(tmp_path / "r")
    assert torch.equal(back.mass, res.mass)
    pd.testing.assert_frame_equal(back.tests, res.tests)
    assert back.prompt_ids == res.prompt_ids and back.excluded == ["no-ins"]
    assert back.query == "response" and back.seed == 0 and back.n_layers == 2
    assert back.summary()["sentence"] == res.summary()["sentence"]
    s = res.summary()
    assert s["n_prompts"] == 6 and s["n_excluded"] == 1 and s["n_fallback_last"] == 1
    assert s["n_heads"] == 8 and set(s["by_layer_group"]) == {"lower", "middle"}
    fig = res.show(tmp_path / "heat.png")
    assert (tmp_path / "heat.png").stat().st_size > 0
    img = fig.axes[0].get_images()[0].get_array()
    np.testing.assert_allclose(np.asarray(img), res.delta().numpy(), atol=1e-7)


def test_instruction_attention_bad_input(lpair):
    no_ins = [InstructionPrompt("Just a sentence about cats.", id="a"),
              InstructionPrompt("Another one about dogs.", id="b")]
    with pytest.raises(ShiftlensError, match="none of the 2 prompts has instruction tokens"):
        instruction_attention(lpair, no_ins, progress=False)
    with pytest.raises(ShiftlensError, match="layer 5 out of range"):
        instruction_attention(lpair, _prompts()[:2], layers=[5], progress=False)
    with pytest.raises(ShiftlensError, match="query"):
        instruction_attention(lpair, _prompts()[:2], query="first", progress=False)  # type: ignore[arg-type]
    with pytest.raises(ShiftlensError, match="no prompts"):
        instruction_attention(lpair, [], progress=False)


# ----------------------------------------------------------------------------- weight view


def _hf_state(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir)


def _brute_force_pairs(hf, vocab, layer, head, top_dims, top_k, z=1.96):
    """One head's pairs straight from the HF checkpoint, with plain numpy loops."""
    cfg = hf.config
    dh = cfg.hidden_size // cfg.num_attention_heads
    g = cfg.num_attention_heads // cfg.num_key_value_heads
    att = hf.model.layers[layer].self_attn
    gamma = hf.model.layers[layer].input_layernorm.weight.detach().double().numpy()
    Wq = att.q_proj.weight.detach().double().numpy()[head * dh:(head + 1) * dh].T
    kv = head // g
    Wk = att.k_proj.weight.detach().double().numpy()[kv * dh:(kv + 1) * dh].T
    emb = hf.model.embed_tokens.weight.detach().double().numpy()
    E = np.stack([emb[ids].mean(0) for ids in vocab.token_ids])
    Q = E @ (gamma[:, None] * Wq)
    K = E @ (gamma[:, None] * Wk)
    energy = (Q**2).sum(0) + (K**2).sum(0)
    dims = np.argsort(-energy)[:top_dims]
    U = E / np.linalg.norm(E, axis=1, keepdims=True)
    base = list(range(min(3000, len(E))))
    thr = []
    for w in range(len(E)):
        sims = [U[w] @ U[b] for b in base if b != w]
        thr.append(np.mean(sims) + z * np.std(sims))
    out = set()
    for d in dims:
        qs = np.argsort(-np.abs(Q[:, d]))[:top_k]
        ks = np.argsort(-np.abs(K[:, d]))[:top_k]
        for a, b in itertools.product(qs, ks):
            if a == b or Q[a, d] * K[b, d] <= 0:
                continue
            s = U[a] @ U[b]
            if s > thr[a] and s > thr[b]:
                out.add((int(d), vocab.words[a], vocab.words[b]))
    return out


def test_word_pairs_equal_brute_force_from_checkpoint(lpair, tiny_dirs):
    small = default_vocab(lpair.tokenizer, 600)
    hf = _hf_state(tiny_dirs("llama")[0])
    for layer, head in ((0, 1), (1, 2)):
        df = word_pairs(lpair.base, layer, head, small, top_dims=4, top_k=25)
        got = set(zip(df.dim.tolist(), df.q_word.tolist(), df.k_word.tolist()))
        assert got == _brute_force_pairs(hf, small, layer, head, 4, 25)
        assert len(got) > 0
        assert (df.q_act * df.k_act > 0).all()
        assert (np.diff(df.score.to_numpy()) <= 0).all() and df["rank"].tolist() == list(range(len(df)))


def test_layer_batched_equals_per_head(lpair):
    vocab = default_vocab(lpair.tokenizer, 1200)
    kw = dict(top_dims=6, top_k=30)
    layers = []
    for layer in range(lpair.cfg.n_layers):
        batched = word_pairs_layer(lpair.tuned, layer, vocab, **kw)
        single = pd.concat(
            [word_pairs(lpair.tuned, layer, h, vocab, **kw) for h in range(lpair.cfg.n_heads)],
            ignore_index=True,
        )
        pd.testing.assert_frame_equal(batched, single)
        layers.append(batched)
    sub = word_pairs_layer(lpair.tuned, 1, vocab, heads=[3, 1], **kw)
    pd.testing.assert_frame_equal(
        sub.sort_values(["head", "rank"]).reset_index(drop=True),
        layers[1][layers[1]["head"].isin([1, 3])].reset_index(drop=True),
    )
    whole = model_word_pairs(lpair.tuned, vocab, progress=False, **kw)
    pd.testing.assert_frame_equal(whole, pd.concat(layers, ignore_index=True))


def test_layer_word_pairs_gqa_grouped_equals_expanded():
    g = torch.Generator().manual_seed(0)
    E = torch.randn(300, 16, generator=g)
    W_Q = torch.randn(4, 16, 4, generator=g)
    W_K = torch.randn(2, 16, 4, generator=g)
    grouped = layer_word_pairs(E, W_Q, W_K, top_dims=3, top_k=12)
    expanded = layer_word_pairs(E, W_Q, W_K.repeat_interleave(2, 0), top_dims=3, top_k=12)
    for f in ("head", "dim", "q_word", "k_word"):
        assert torch.equal(getattr(grouped, f), getattr(expanded, f))
    torch.testing.assert_close(grouped.score, expanded.score)


@pytest.mark.parametrize("arch", ["gpt2", "qwen2", "gemma2"])
def test_word_pairs_other_architectures(tiny_dirs, arch):
    model = load_bridge(tiny_dirs(arch)[0])
    v = default_vocab(model.tokenizer, 800)
    E = word_embeddings(model, v)
    if arch == "gpt2":  # LayerNorm centres its input: word vectors are centred
        torch.testing.assert_close(E.mean(-1), torch.zeros(len(v)), atol=1e-6, rtol=0)
    df = word_pairs_layer(model, 1, v, top_dims=4, top_k=20)
    assert set(df["head"]) <= set(range(model.cfg.n_heads)) and len(df) > 0
    assert np.isfinite(df.score).all() and (df.score > 0).all()


def test_filters_are_pluggable(lpair, vocab):
    words = vocab.words[:400]
    small = vocab.subset(words)
    # external "vectors" in 20 clusters (word i in cluster i % 20), a few words without vectors
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(20, 64, generator=g)
    vecs = {w: (centers[i % 20] + 0.05 * torch.randn(64, generator=g)).tolist()
            for i, w in enumerate(words) if i % 50 != 7}
    df = word_pairs(lpair.base, 1, 0, small, filter=VectorFilter(vecs, n_baseline=400), top_k=60)
    pos = {w: i for i, w in enumerate(words)}
    assert len(df) > 0
    assert all(pos[q] % 20 == pos[k] % 20 for q, k in zip(df.q_word, df.k_word))
    assert not any(pos[w] % 50 == 7 for w in set(df.q_word) | set(df.k_word))
    assert (df.similarity > 0.9).all()
    nofilter = word_pairs(lpair.base, 1, 0, small, filter=None, top_k=40)
    assert len(nofilter) > len(df) and nofilter.similarity.isna().all()

    class OnlyWord:  # a user-defined PairFilter: keep pairs whose key word is "the"
        def bind(self, model, vocab):
            target = vocab.words.index("the")
            return lambda q, k: k == target

    only = word_pairs(lpair.base, 1, 0, small, filter=OnlyWord(), top_k=400)
    assert len(only) > 0 and set(only.k_word) == {"the"}
    with pytest.raises(ShiftlensError, match="bind"):
        word_pairs(lpair.base, 1, 0, small, filter=42)
    with pytest.raises(ShiftlensError, match="unknown filter"):
        word_pairs(lpair.base, 1, 0, small, filter="glove")


def test_word_pairs_bad_input(lpair, vocab):
    with pytest.raises(ShiftlensError, match="layer 2 out of range"):
        word_pairs(lpair.base, 2, 0, vocab)
    with pytest.raises(ShiftlensError, match="head 4 of layer 1 out of range"):
        word_pairs(lpair.base, 1, 4, vocab)
    with pytest.raises(ShiftlensError, match="head -1"):
        word_pairs_layer(lpair.base, 1, vocab, heads=[-1])
    empty = WordVocab([], [], ["qqqq"])
    with pytest.raises(ShiftlensError, match="empty vocabulary"):
        word_pairs(lpair.base, 0, 0, empty)
    with pytest.raises(ShiftlensError, match="empty vocabulary"):
        model_word_pairs(lpair.base, empty, progress=False)
    with pytest.raises(ShiftlensError, match="empty vocabulary"):
        WordVocab.build(lpair.tokenizer, [])
    with pytest.raises(ShiftlensError, match="top_k"):
        word_pairs(lpair.base, 0, 0, vocab, top_k=0)


def test_unencodable_words_are_skipped_and_counted(lpair):
    # the sentencepiece-style tiny tokenizer has no bytes fallback: CJK maps to <unk>
    v = WordVocab.build(lpair.tokenizer, ["the", "write", "日本語", "and", "ünïcödé", "of", "in"])
    assert "日本語" in v.skipped and "日本語" not in v.words
    df = word_pairs(lpair.base, 0, 0, v, filter=None, top_k=5)
    assert df.attrs["n_skipped_words"] == len(v.skipped) >= 1
    assert set(df.q_word) | set(df.k_word) <= set(v.words)


# ----------------------------------------------------------------------------- verb shift


def test_lexicons():
    ins, gen = instruction_verbs(), general_verbs()
    assert 40 <= len(ins) <= 60 and 40 <= len(gen) <= 60
    assert not set(ins) & set(gen)
    assert {"write", "explain", "summarize", "translate", "classify"} <= set(ins)
    assert len(set(ins)) == len(ins) and all(w.isalpha() and w.islower() for w in ins + gen)


def _counts_by_hand(pairs: pd.DataFrame, role: str, verbs):
    out = {}
    sub = pairs[pairs.role == role]
    for (layer, head), grp in sub.groupby(["layer", "head"]):
        uniq = {frozenset((q, k)) for q, k in zip(grp.q_word, grp.k_word)}
        for v in verbs:
            out[(layer, head, v)] = sum(1 for p in uniq if v in p)
    return out


def test_verb_shift_equals_independent_computation(lpair, tmp_path):
    v = default_vocab(lpair.tokenizer, 1500)
    ins = ["write", "explain", "list", "answer", "describe", "日本語"]
    gen = ["go", "make", "take", "see", "come", "use", "find"]
    res = verb_shift(lpair, v, instruction=ins, general=gen, top_dims=6, top_k=40,
                     progress=False)
    assert "日本語" in res.meta["missing_verbs"]
    c = res.counts
    ok_ins = res.meta["instruction_verbs"]
    ok_gen = res.meta["general_verbs"]
    base = _counts_by_hand(res.pairs, "base", ok_ins + ok_gen)
    tuned = _counts_by_hand(res.pairs, "tuned", ok_ins + ok_gen)
    for r in c.itertuples():
        assert r.base == base.get((r.layer, r.head, r.verb), 0)
        assert r.tuned == tuned.get((r.layer, r.head, r.verb), 0)
    groups = {0: "lower", 1: "middle"}
    for g in ("lower", "middle", "all"):
        fr = {}
        for verb in ok_ins + ok_gen:
            rose = fell = 0
            for (layer, head, vv), b in base.items():
                if vv != verb or (g != "all" and groups[layer] != g):
                    continue
                t = tuned[(layer, head, vv)]
                rose += t > b
                fell += t < b
            fr[verb] = rose / (rose + fell) if rose + fell else np.nan
        row = res.verbs[(res.verbs.group == g)].set_index("verb").fraction_rose
        for verb, f in fr.items():
            assert (np.isnan(f) and np.isnan(row[verb])) or row[verb] == pytest.approx(f)
        a = np.array([fr[w] for w in ok_ins])
        b = np.array([fr[w] for w in ok_gen])
        a, b = a[np.isfinite(a)], b[np.isfinite(b)]
        test = res.tests.set_index("group").loc[g]
        assert test.mean_instruction == pytest.approx(a.mean()) if a.size else True
        if a.size >= 2 and b.size >= 2:
            assert test.p == pytest.approx(st.ttest_ind(a, b, equal_var=False).pvalue)
    res.save(tmp_path / "vs")
    back = VerbShiftResult.load(tmp_path / "vs")
    pd.testing.assert_frame_equal(back.tests, res.tests)
    pd.testing.assert_frame_equal(back.counts, res.counts)
    assert back.meta["missing_verbs"] == res.meta["missing_verbs"]
    assert "Welch" in back.summary()["sentence"]
    fig = res.show(tmp_path / "vs.png")
    assert len(fig.axes) == 1


def test_verb_shift_bad_input(lpair, vocab):
    with pytest.raises(ShiftlensError, match="both sets"):
        verb_shift(lpair, vocab, instruction=["write", "go"], general=["go"], progress=False)
    with pytest.raises(ShiftlensError, match="none of the instruction verbs"):
        verb_shift(lpair, vocab, instruction=["日本語"], general=["go"], progress=False)
    with pytest.raises(ShiftlensError, match="empty vocabulary"):
        verb_shift(lpair, WordVocab([], [], []), progress=False)
    with pytest.raises(ShiftlensError, match="layer 9 out of range"):
        verb_shift(lpair, vocab, layers=[9], progress=False)


def test_pair_word_counts_min_dims():
    pairs = pd.DataFrame({
        "layer": [0] * 5, "head": [0] * 5, "dim": [1, 2, 1, 3, 3],
        "q_word": ["a", "b", "a", "c", "a"], "k_word": ["b", "a", "c", "a", "b"],
    })
    c1 = pair_word_counts(pairs).set_index("word")["count"].to_dict()
    assert c1 == {"a": 2, "b": 1, "c": 1}  # {a,b} and {a,c}
    c2 = pair_word_counts(pairs, min_dims=2).set_index("word")["count"].to_dict()
    assert c2 == {"a": 2, "b": 1, "c": 1}  # {a,b} in dims 1,2,3; {a,c} in dims 1,3
    c3 = pair_word_counts(pairs, min_dims=3).set_index("word")["count"].to_dict()
    assert c3 == {"a": 1, "b": 1}
    assert pair_word_counts(pairs, ["c"]).word.tolist() == ["c"]
