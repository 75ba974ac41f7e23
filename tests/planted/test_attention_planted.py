"""Lens 2 on a planted QK edit: a copy of the tiny Llama base with a rank-1 query-key term in one
head (query word A -> key word B), saved and booted like any checkpoint. The lens must find
exactly that edit: the per-dimension word pairs (Wu et al. 2024, §4), the verb shift, and the full
bilinear score (the pair's score by hand from the raw weights; the largest full-score change of
the edited head; no change anywhere else). (Moved from tests/test_attention.py, plus the full
score.)"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from shiftlens import ModelPair
from shiftlens.attention import (
    EmbeddingFilter,
    model_word_pairs,
    pair_diff,
    qk_score,
    qk_scores,
    top_pairs,
    verb_shift,
    word_pairs,
)
from shiftlens.pair import load_bridge
from shiftlens.vocab import default_vocab
from shiftlens.weights import WordVocab

EDIT_LAYER, EDIT_HEAD, EDIT_DIM = 1, 2, 3  # tiny llama: 4 query heads, 2 KV heads (groups {0,1},{2,3})


@pytest.fixture(scope="module")
def lpair(tiny_dirs) -> ModelPair:
    base, tuned = tiny_dirs("llama")
    return ModelPair.from_pretrained(base, tuned)


@pytest.fixture(scope="module")
def vocab(lpair) -> WordVocab:
    return default_vocab(lpair.tokenizer, 5000)


def _hf_state(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def planted(tiny_dirs, lpair, vocab, tmp_path_factory):
    """The tiny llama base + a rank-1 QK term in (layer 1, head 2, dim 3): query A -> key B."""
    from transformers import AutoTokenizer

    base_dir = tiny_dirs("llama")[0]
    hf = _hf_state(base_dir)
    cfg = hf.config
    dh = cfg.hidden_size // cfg.num_attention_heads
    kv = EDIT_HEAD // (cfg.num_attention_heads // cfg.num_key_value_heads)
    gamma = hf.model.layers[EDIT_LAYER].input_layernorm.weight.detach()
    emb = hf.model.embed_tokens.weight.detach()
    single = [i for i, t in enumerate(vocab.token_ids) if len(t) == 1]
    X = torch.stack([emb[vocab.token_ids[i][0]] for i in single]) * gamma  # norm-folded vectors
    allX = torch.stack([emb[t].mean(0) for t in vocab.token_ids]) * gamma
    # relatedness as the default filter sees it: raw embedding cosine, mean + 1.96 sd rule
    bound = EmbeddingFilter().bind(lpair.base, vocab)
    U = torch.nn.functional.normalize(X, dim=-1)
    cos = U @ U.T
    cos.fill_diagonal_(-1)
    choice = None
    for flat in torch.argsort(cos.flatten(), descending=True)[:200].tolist():
        a, b = single[flat // len(single)], single[flat % len(single)]
        ok = bool(bound(torch.tensor([a]), torch.tensor([b]))[0])
        ua = torch.nn.functional.normalize(allX[a], dim=0)
        ub = torch.nn.functional.normalize(allX[b], dim=0)
        # A must be the word most aligned with its own direction (and B likewise)
        if ok and int((allX @ ua).argmax()) == a and int((allX @ ub).argmax()) == b:
            choice = (a, b, ua, ub)
            break
    assert choice is not None
    a, b, ua, ub = choice
    att = hf.model.layers[EDIT_LAYER].self_attn
    # a moderate edit: 1.5x the largest row norm of the layer's q_proj / k_proj
    alpha = 1.5 * float(torch.cat([att.q_proj.weight, att.k_proj.weight]).detach().norm(dim=1).max())
    with torch.no_grad():
        att.q_proj.weight[EDIT_HEAD * dh + EDIT_DIM] += alpha * ua
        att.k_proj.weight[kv * dh + EDIT_DIM] += alpha * ub
    out = tmp_path_factory.mktemp("planted") / "edited"
    hf.save_pretrained(out)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out)
    return {"dir": out, "model": load_bridge(out), "A": vocab.words[a], "B": vocab.words[b]}


def test_planted_qk_pair_is_found(lpair, vocab, planted):
    A, B = planted["A"], planted["B"]
    orig, edited = lpair.base, planted["model"]
    got = word_pairs(edited, EDIT_LAYER, EDIT_HEAD, vocab)
    top = got.iloc[0]
    assert (top.q_word, top.k_word, int(top.dim)) == (A, B, EDIT_DIM)
    assert int(top.dim_rank) == 0  # the planted dimension carries the most energy
    before = word_pairs(orig, EDIT_LAYER, EDIT_HEAD, vocab)
    assert not ((before.q_word == A) & (before.k_word == B)).any()
    # heads of the other KV group and every head of the other layer are unchanged
    b_all = model_word_pairs(orig, vocab, progress=False)
    e_all = model_word_pairs(edited, vocab, progress=False)
    same = lambda df: df[(df.layer != EDIT_LAYER) | df["head"].isin([0, 1])].reset_index(drop=True)  # noqa: E731
    assert len(same(b_all)) > 0
    pd.testing.assert_frame_equal(same(b_all), same(e_all))
    # ...while the edited head's pairs are exactly what word_pairs reported
    mine = e_all[(e_all.layer == EDIT_LAYER) & (e_all["head"] == EDIT_HEAD)].reset_index(drop=True)
    pd.testing.assert_frame_equal(mine, got)



def test_verb_shift_planted(lpair, vocab, planted):
    """Tuned = base + a QK term whose query word is an instruction verb: only the edited KV
    group changes, and the verb's pair count rises there."""
    A = planted["A"]
    pair = ModelPair(lpair.base, planted["model"], names=("base", "edited"))
    res = verb_shift(pair, vocab, instruction=[A], general=["go", "make", "see", "take"],
                     progress=False)
    c = res.counts
    edited_group = (c.layer == EDIT_LAYER) & c["head"].isin([2, 3])
    assert (c.loc[~edited_group, "base"] == c.loc[~edited_group, "tuned"]).all()
    row = c[(c.layer == EDIT_LAYER) & (c["head"] == EDIT_HEAD) & (c.verb == A)].iloc[0]
    assert row.tuned > row.base
    v = res.verbs[(res.verbs.group == "all") & (res.verbs.verb == A)].iloc[0]
    assert v.rose >= 1 and v.ties >= 6


# ----------------------------------------------------------------------------- the full score
@pytest.fixture(scope="module")
def edited_pair(lpair, planted):
    return ModelPair(lpair.base, planted["model"], names=("base", "edited"))


def _hand_score(model_dir, vocab, layer, head, a, b):
    """x_a^T W_Q W_K^T x_b from the raw checkpoint: float64 numpy, the RMSNorm gamma folded into
    the rows of W_Q and W_K (x -> gamma * x, as the lens folds it), GQA by hand."""
    hf = _hf_state(model_dir)
    cfg = hf.config
    dh = cfg.hidden_size // cfg.num_attention_heads
    kv = head // (cfg.num_attention_heads // cfg.num_key_value_heads)
    att = hf.model.layers[layer].self_attn
    gamma = hf.model.layers[layer].input_layernorm.weight.detach().double().numpy()
    Wq = att.q_proj.weight.detach().double().numpy()[head * dh:(head + 1) * dh]  # [d_head, d]
    Wk = att.k_proj.weight.detach().double().numpy()[kv * dh:(kv + 1) * dh]
    emb = hf.model.embed_tokens.weight.detach().double().numpy()
    xa = emb[vocab.token_ids[vocab.words.index(a)]].mean(0)
    xb = emb[vocab.token_ids[vocab.words.index(b)]].mean(0)
    return float((Wq @ (gamma * xa)) @ (Wk @ (gamma * xb)))


def test_full_score_equals_hand_computation_from_raw_weights(lpair, vocab, planted, tiny_dirs):
    A, B = planted["A"], planted["B"]
    for model, d in ((planted["model"], planted["dir"]), (lpair.base, tiny_dirs("llama")[0])):
        for layer, head in ((EDIT_LAYER, EDIT_HEAD), (EDIT_LAYER, 3), (0, 1)):
            got = qk_score(model, layer, head, A, B, vocab)
            want = _hand_score(d, vocab, layer, head, A, B)
            assert got == pytest.approx(want, rel=1e-5, abs=1e-9), (layer, head)
    # the matrix form, and the words encoded without a vocabulary (the same tokens here)
    S = qk_scores(planted["model"], EDIT_LAYER, EDIT_HEAD, [A, B], [B, A])
    assert S[0, 0].item() == pytest.approx(qk_score(planted["model"], EDIT_LAYER, EDIT_HEAD, A, B,
                                                    vocab), rel=1e-6)


def test_planted_pair_has_the_largest_full_score_change(edited_pair, vocab, planted):
    A, B = planted["A"], planted["B"]
    d = pair_diff(edited_pair, EDIT_LAYER, EDIT_HEAD, vocab, k=5, progress=False)
    gained = d[d.change == "gained"]
    top = gained.iloc[0]
    assert (top.q_word, top.k_word, int(top["rank"])) == (A, B, 0)
    # its delta is the difference of the two full scores, each by hand from the raw weights
    want = (_hand_score(planted["dir"], vocab, EDIT_LAYER, EDIT_HEAD, A, B)
            - qk_score(edited_pair.base, EDIT_LAYER, EDIT_HEAD, A, B, vocab))
    assert top.delta == pytest.approx(want, rel=1e-4)
    assert top.tuned - top.base == pytest.approx(top.delta, rel=1e-4)
    # ...and clearly the largest: the next gain is smaller, and nothing in the head was lost
    # as much
    assert gained.delta.iloc[1] < 0.9 * top.delta
    lost = d[d.change == "lost"]
    assert len(lost) == 0 or (-lost.delta).max() < top.delta
    # heads the edit does not touch (the other KV group, every head of layer 0): no change at all
    same = pair_diff(edited_pair, [0, 1], None, vocab, k=5, progress=False)
    assert set(zip(same.layer, same["head"])) <= {(EDIT_LAYER, 2), (EDIT_LAYER, 3)}
    # in the edited model the planted pair is the head's top pair by full score
    tp = top_pairs(planted["model"], EDIT_LAYER, EDIT_HEAD, vocab, k=3)
    assert (tp.q_word.iloc[0], tp.k_word.iloc[0]) == (A, B)
    assert tp.score.iloc[0] == pytest.approx(top.tuned, rel=1e-4)


def test_pair_diff_reports_what_the_filter_removed(edited_pair, vocab, planted):
    d = pair_diff(edited_pair, EDIT_LAYER, EDIT_HEAD, vocab, k=5, progress=False)
    raw = pair_diff(edited_pair, EDIT_LAYER, EDIT_HEAD, vocab, k=5, filter=None, progress=False)
    bound = EmbeddingFilter().bind(edited_pair.base, vocab)  # bound to base, as pair_diff does
    f = d.attrs["funnel"][0]
    for change, key in (("gained", "gained_removed"), ("lost", "lost_removed")):
        r = raw[raw.change == change]
        passes = bound(torch.tensor(r.q_index.to_numpy()), torch.tensor(r.k_index.to_numpy()))
        assert f[key] == int((~passes).sum()), change
        # the filtered rows are the unfiltered ones that pass, then further pairs
        kept = r[passes.numpy()]
        got = d[d.change == change]
        pd.testing.assert_frame_equal(
            got.head(len(kept))[["q_word", "k_word"]].reset_index(drop=True),
            kept[["q_word", "k_word"]].reset_index(drop=True))
    assert d.attrs["n_removed"] == f["gained_removed"] + f["lost_removed"]
    note = d.attrs["filter_note"]
    assert f"removed {d.attrs['n_removed']:,} of the 10 largest gained and lost pairs" in note
    assert "cosine similarity was not above mean + 1.96 sd" in note
    assert raw.attrs["filter_note"].startswith("No relatedness filter")
    assert np.isnan(raw.similarity).all() and np.isfinite(d.similarity).all()
