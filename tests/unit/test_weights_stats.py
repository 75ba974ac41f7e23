"""weights.py (norm folding, GQA expansion, word vectors) and stats.py against references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats as st

from shiftlens import ShiftlensError
from shiftlens.bridge import load_bridge
from shiftlens.stats import bootstrap_ci, layer_groups, paired_test, welch_test
from shiftlens.vocab import default_vocab, english_words
from shiftlens.weights import (
    WordVocab,
    check_layer,
    embedding,
    mlp_out,
    norm_scale,
    qk_weights,
    word_matrix,
)


def test_norm_scale_per_architecture(tiny_dirs):
    for arch, expect in [("llama", lambda w: w), ("gemma2", lambda w: 1 + w), ("gpt2", lambda w: w)]:
        m = load_bridge(tiny_dirs(arch)[0])
        hf_norm = m.blocks[0].ln1.original_component
        torch.testing.assert_close(norm_scale(m.blocks[0].ln1, 32), expect(hf_norm.weight.detach()),
                                   atol=1e-5, rtol=1e-4)


def test_qk_weights_gqa_expansion_and_folding(tiny_dirs):
    m = load_bridge(tiny_dirs("llama")[0])
    attn = m.original_model.model.layers[1].self_attn
    g = m.original_model.model.layers[1].input_layernorm.weight.detach()
    W_Q, W_K = qk_weights(m, 1)
    assert W_Q.shape == W_K.shape == (4, 32, 8)
    kp = attn.k_proj.weight.detach()  # [n_kv*d_head, d_model]
    qp = attn.q_proj.weight.detach()
    for h in range(4):
        kv = h // 2  # 4 query heads share 2 kv heads
        torch.testing.assert_close(W_K[h], (kp[kv * 8:(kv + 1) * 8] * g).T)
        torch.testing.assert_close(W_Q[h], (qp[h * 8:(h + 1) * 8] * g).T)
    W_Q0, _ = qk_weights(m, 1, fold_norm=False)
    torch.testing.assert_close(W_Q0[0], qp[:8].T)
    assert mlp_out(m, 0).shape == (64, 32)


def test_layer_head_range(tiny_dirs):
    m = load_bridge(tiny_dirs("gpt2")[0])
    with pytest.raises(ShiftlensError, match="layer 2 out of range"):
        qk_weights(m, 2)
    with pytest.raises(ShiftlensError, match="head 4 of layer 0 out of range"):
        check_layer(m, 0, 4)


def test_word_vocab_and_matrix(tiny_dirs):
    m = load_bridge(tiny_dirs("llama")[0])  # sentencepiece-style with <unk>
    v = WordVocab.build(m.tokenizer, ["the", "library", "the", "\u0436\u0443\u043a", "  "], max_tokens=None)
    assert v.words == ["the", "library"] and v.skipped == ["\u0436\u0443\u043a"]
    E = embedding(m)
    got = word_matrix(E, v)
    for i, ids in enumerate(v.token_ids):
        torch.testing.assert_close(got[i], E[ids].mean(0))
        # fewest-token variant
        alts = [m.tokenizer(x, add_special_tokens=False)["input_ids"] for x in (" " + v.words[i], v.words[i])]
        assert len(ids) == min(len(a) for a in alts)
    with pytest.raises(ShiftlensError, match="empty vocabulary"):
        WordVocab.build(m.tokenizer, [])
    dv = default_vocab(m.tokenizer, 300)
    assert len(dv) + len(dv.skipped) == 300 and dv.words[0] == "the"
    assert english_words(3) == ["the", "to", "and"]


def test_welch_paired_against_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1, 1, 30), rng.normal(0.5, 2, 25)
    r = welch_test(a, b, alternative="greater")
    ref = st.ttest_ind(a, b, equal_var=False, alternative="greater")
    assert r.pvalue == pytest.approx(ref.pvalue) and r.statistic == pytest.approx(ref.statistic)
    assert r.diff == pytest.approx(a.mean() - b.mean()) and r.ci_low < r.diff < r.ci_high
    r2 = welch_test(np.r_[a, np.nan], b, alternative="greater")
    assert r2.n_a == 30 and r2.pvalue == pytest.approx(ref.pvalue)
    c = a[:25] + rng.normal(0.3, 0.1, 25)
    p = paired_test(c, a[:25], alternative="greater")
    assert p.pvalue == pytest.approx(st.ttest_rel(c, a[:25], alternative="greater").pvalue)
    const = paired_test([2.0, 3, 4], [1.0, 2, 3], alternative="greater")
    assert const.pvalue == 0.0 and const.statistic == np.inf
    same = paired_test([1.0, 2], [1.0, 2])
    assert same.pvalue == 1.0
    assert np.isnan(welch_test([1.0], [2.0, 3]).pvalue)


def test_bootstrap_covers_truth():
    rng = np.random.default_rng(1)
    hits = 0
    for s in range(40):
        x = rng.normal(2.0, 1.0, 40)
        lo, hi = bootstrap_ci(x, n_boot=2000, seed=s)
        hits += lo < 2.0 < hi
    assert hits >= 32  # ~95% nominal coverage


def test_layer_groups():
    assert layer_groups(3) == ["lower", "middle", "upper"]
    g = layer_groups(32)
    assert g.count("lower") == 11 and g.count("upper") == 10 and g == sorted(g, key=["lower", "middle", "upper"].index)
    with pytest.raises(ShiftlensError):
        layer_groups(0)
