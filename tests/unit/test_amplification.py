"""Amplification: a = 0 decodes the base model, a = 1 the tuned model, exactly; other a decode
the combined logits, checked against an independent argmax loop over the two HF models."""

from __future__ import annotations

import pytest
import torch

from shiftlens import InstructionPrompt, ModelPair, ShiftlensError
from shiftlens.generate import argmax_loop, greedy_batch
from shiftlens.lenses.amplification import AmplifiedModel, amplification, amplified_logits

PROMPTS = ["the cat sat on the", "a dog ran in", "we read the letter and"]


@pytest.fixture(scope="module")
def pair(tiny_dirs):
    return ModelPair.from_pretrained(*tiny_dirs("llama"))


@pytest.fixture(scope="module")
def res(pair):
    return amplification(pair, PROMPTS, alphas=(0.0, 1.0, 2.5), max_new_tokens=6,
                         progress=False)


def _toks(pair):
    return [pair.tokenize(InstructionPrompt(p)).tokens for p in PROMPTS]


def test_alpha_one_is_the_tuned_model_and_zero_the_base(pair, res):
    for role, a in (("base", 0.0), ("tuned", 1.0)):
        want = greedy_batch(getattr(pair, role), _toks(pair), 6)
        f = res.to_frame()
        got = f[f.alpha == a].sort_values("prompt_index")
        assert got.token_ids.tolist() == [" ".join(map(str, g.tokens.tolist())) for g in want]
        assert got.response.tolist() == [pair.tokenizer.decode(g.tokens) for g in want]


def test_other_alphas_are_an_argmax_loop_over_the_combined_logits(pair, res):
    """Independent: both HF models, one uncached forward pass per token, by hand."""
    hb, ht = pair.base.original_model, pair.tuned.original_model
    stops = {pair.tokenizer.eos_token_id}
    for i, toks in enumerate(_toks(pair)):
        seq = toks.tolist()
        new = []
        with torch.no_grad():
            for _ in range(6):
                ids = torch.tensor([seq])
                lb, lt = hb(input_ids=ids).logits[0, -1].double(), ht(input_ids=ids).logits[
                    0, -1].double()
                t = int((lb + 2.5 * (lt - lb)).argmax())
                if t in stops:
                    break
                seq.append(t)
                new.append(t)
        f = res.to_frame()
        got = f[(f.alpha == 2.5) & (f.prompt_index == i)].token_ids.iloc[0]
        assert got == " ".join(map(str, new))


def test_amplified_model_follows_the_decoding_contract(pair):
    amp = AmplifiedModel(pair.base, pair.tuned, 3.0)
    toks = _toks(pair)
    batched = greedy_batch(amp, toks, 5, use_cache=False, batch_size=2)
    loop = [argmax_loop(amp, t, 5) for t in toks]
    assert [g.tokens.tolist() for g in batched] == [g.tokens.tolist() for g in loop]
    with pytest.raises(ShiftlensError, match="without a key/value cache"):
        amp(input_ids=toks[0][None], use_cache=True)


def test_amplified_logits_formula_and_exact_endpoints():
    g = torch.Generator().manual_seed(0)
    b, t = torch.randn(4, 9, generator=g), torch.randn(4, 9, generator=g)
    for a in (-1.0, 0.25, 2.0, 4.0):
        torch.testing.assert_close(amplified_logits(b, t, a), (b + a * (t - b)).double(),
                                   rtol=1e-6, atol=1e-6)
    assert torch.equal(amplified_logits(b, t, 0.0), b.double())
    assert torch.equal(amplified_logits(b, t, 1.0), t.double())


def test_counts_and_top_tokens(pair, res):
    for j, a in enumerate(res.alphas):
        f = res.to_frame()
        ids = [int(x) for s in f[f.alpha == a].token_ids for x in s.split()]
        want = torch.bincount(torch.tensor(ids, dtype=torch.long),
                              minlength=pair.cfg.d_vocab).double()
        assert torch.equal(res.counts[j], want)
    top = res.top_tokens(5)
    s = res.token_scores()
    assert torch.equal(s[top], s.sort(descending=True).values[:5])
    with pytest.raises(ShiftlensError):
        res.responses(7.0)
    with pytest.raises(ShiftlensError, match="alphas"):
        amplification(pair, PROMPTS, alphas=[float("nan")], progress=False)
