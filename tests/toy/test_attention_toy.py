"""Lens 2 on the embedded pair (shiftlens.zoo), where the shift is known: the activation view
equals a direct computation from the full patterns, the verb shift's counts equal the kept pairs.
(Moved from tests/test_attention.py; the tiny-model tests are in tests/unit/test_attention.py.)"""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from attention_reference import direct_mass  # tests/attention_reference.py

from shiftlens.attention import instruction_attention, verb_shift
from shiftlens.weights import WordVocab


def _counts_by_hand(pairs: pd.DataFrame, role: str, verbs):
    out = {}
    sub = pairs[pairs.role == role]
    for (layer, head), grp in sub.groupby(["layer", "head"]):
        uniq = {frozenset((q, k)) for q, k in zip(grp.q_word, grp.k_word)}
        for v in verbs:
            out[(layer, head, v)] = sum(1 for p in uniq if v in p)
    return out


def _toy():
    from shiftlens.zoo import PAIR_DIR

    if not (PAIR_DIR / "base" / "model.safetensors").exists():
        pytest.skip("the embedded toy pair (shiftlens/zoo/pair) is not built yet")
    from shiftlens.zoo import toy_pair, toy_prompts

    return toy_pair(), toy_prompts


def test_toy_pair_activation_view_equals_direct():
    pair, toy_prompts = _toy()
    prompts = toy_prompts(14)
    res = instruction_attention(pair, prompts, progress=False)
    assert res.n_prompts == 14 and res.excluded == []
    direct = direct_mass(pair, prompts, list(range(pair.cfg.n_layers)), "response")
    torch.testing.assert_close(res.mass, direct, atol=1e-5, rtol=1e-4)


def test_toy_pair_verb_shift_runs():
    pair, toy_prompts = _toy()
    from shiftlens.zoo import grammar

    words = sorted({w for p in toy_prompts(28) for w in p.text.lower().split()
                    if w.isalpha()} | set(grammar.INPUT_WORDS)
                   | {f for v in grammar.INSTRUCTION_VERBS + grammar.TRANSITIVE_VERBS for f in v})
    vocab = WordVocab.build(pair.tokenizer, words, max_tokens=2)
    ins = [v[0] for v in grammar.INSTRUCTION_VERBS]
    gen = [v[0] for v in grammar.TRANSITIVE_VERBS]
    res = verb_shift(pair, vocab, instruction=ins, general=gen, progress=False)
    assert res.meta["missing_verbs"] == []
    assert res.counts.shape[0] == pair.cfg.n_layers * pair.cfg.n_heads * (len(ins) + len(gen))
    # every count is reproducible from the kept pairs
    base = _counts_by_hand(res.pairs, "base", ins + gen)
    for r in res.counts.itertuples():
        assert r.base == base.get((r.layer, r.head, r.verb), 0)


def test_nan_in_the_tuned_layer1_down_proj_is_named_not_averaged():
    """Issue 14's probe on the embedded pair: one NaN in the tuned layer-1 MLP down-projection
    makes every prompt's layer-2 and layer-3 attention NaN in tuned. The summary used to say
    'nan in base and nan in tuned' (a paired test over no pairs) while counting significant
    heads over the finite half; now the call names the model, the first prompt and layer."""
    from shiftlens import ShiftlensError
    from shiftlens.attention import segment_attention

    pair, toy_prompts = _toy()  # a fresh copy: the session's `toy` is never modified
    with torch.no_grad():
        pair.tuned.original_model.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    ps = toy_prompts(8)
    with pytest.raises(ShiftlensError) as e:
        instruction_attention(pair, ps, progress=False)
    msg = str(e.value)
    assert "non-finite attention mass for 8 of 8 prompts" in msg
    assert (f"First: tuned model {pair.names['tuned']!r}, prompt {ps[0].id!r}, layer 2."
            in msg)
    sa = segment_attention(pair.tuned, ps, progress=False, nonfinite="keep")
    assert set(sa.nonfinite()["layer"]) == {2, 3}  # layers 0 and 1 read no NaN
    assert torch.isfinite(sa.mass[:, :2]).all()
