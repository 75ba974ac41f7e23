"""The activation difference lens and diff mining: definitions against independent computations on
tiny models (the organism scores are in tests/toy/test_diffing_organisms.py)."""

from __future__ import annotations

import pytest
import torch

from shiftlens import InstructionPrompt, ModelPair, ShiftlensError
from shiftlens.generate import greedy_batch
from shiftlens.lenses.activation_difference import (
    activation_difference,
    diff_mining,
    logit_lens,
    patchscope,
    poisson_weights,
    relevance,
    steered_generations,
    topk_counts,
)

TEXTS = ["the cat sat on the mat and looked at the bird",
         "a dog ran in the park with a red ball today",
         "we read the letter twice and then wrote a reply to it",
         "three birds sang in the tall tree by the river bank"]


@pytest.fixture(scope="module")
def pair(tiny_dirs):
    return ModelPair.from_pretrained(*tiny_dirs("llama"))


def _tokens(pair, text):
    return pair.tokenize(InstructionPrompt(text)).tokens


def test_mean_difference_equals_a_hand_computation(pair):
    """Unbatched TransformerLens caches, one text at a time, averaged by hand."""
    res = activation_difference(pair, TEXTS, layers=[0, 1], n_positions=3, n_boot=0,
                                steer_prompts=[], progress=False, batch_size=3)
    start = 1 if pair.prepend_bos else 0
    want = torch.zeros(2, 3, pair.cfg.d_model, dtype=torch.float64)
    norms = torch.zeros(2, 2, 3, dtype=torch.float64)
    for t in TEXTS:
        toks = _tokens(pair, t)[None]
        caches = {role: m.run_with_cache(toks)[1] for role, m in pair}
        for j in range(2):
            name = f"blocks.{j}.hook_resid_post"
            hb = caches["base"][name][0, start:start + 3].double()
            ht = caches["tuned"][name][0, start:start + 3].double()
            want[j] += (ht - hb) / len(TEXTS)
            norms[0, j] += hb.norm(dim=-1) / len(TEXTS)
            norms[1, j] += ht.norm(dim=-1) / len(TEXTS)
    torch.testing.assert_close(res.mean_diff.double(), want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(res.resid_norm.double(), norms, rtol=1e-4, atol=1e-5)
    assert res.meta["params"]["start_position"] == start and res.n_texts == 4


def test_rankings_are_the_logit_lens_of_the_mean_difference(pair):
    res = activation_difference(pair, TEXTS, n_positions=2, n_boot=0, steer_prompts=[],
                                progress=False)
    j = res.meta["params"]["layers"].index(res.lens_layer)
    d = res.mean_diff[j]
    probs = torch.softmax(pair.tuned.unembed(pair.tuned.ln_final(d)).double(), -1).mean(0)
    assert res.top_tokens(10).tolist() == probs.topk(10).indices.tolist()
    got = res.ranking("logit_lens").probability.to_numpy()[:10]
    torch.testing.assert_close(torch.tensor(got), probs.topk(10).values, rtol=1e-5, atol=1e-7)


def test_logit_lens_of_the_last_residual_is_the_output(pair):
    toks = _tokens(pair, TEXTS[0])[None]
    last = f"blocks.{pair.cfg.n_layers - 1}.hook_resid_post"
    for _, m in pair:
        logits, cache = m.run_with_cache(toks)
        torch.testing.assert_close(logit_lens(m, cache[last][0]), logits[0].float(), rtol=1e-4,
                                   atol=1e-4)


def test_patchscope_with_the_models_own_residual_changes_nothing(pair):
    """Patching in the activation the model already has at that position leaves the output."""
    prompt = _tokens(pair, "cat -> cat\nred -> red\n?")
    logits, cache = pair.base.run_with_cache(prompt[None])
    own = cache["blocks.1.hook_resid_post"][0, -1]
    got = patchscope(pair.base, own[None].repeat(2, 1), 1, prompt)
    want = torch.softmax(logits[0, -1].double(), -1)
    torch.testing.assert_close(got, want[None].repeat(2, 1), rtol=1e-4, atol=1e-6)
    other = patchscope(pair.base, 5 * torch.randn(1, pair.cfg.d_model), 1, prompt)
    assert 0.5 * float((other[0] - want).abs().sum()) > 0.01  # another vector changes it (TV)


def test_steering_strength_zero_is_greedy_and_the_hook_adds_the_vector(pair):
    prompts = [_tokens(pair, t)[:5] for t in TEXTS[:2]]
    v = torch.randn(pair.cfg.d_model)
    gens = steered_generations(pair.tuned, prompts, v, 0, [0.0, 8.0], max_new_tokens=5)
    plain = greedy_batch(pair.tuned, prompts, 5)
    assert [g.tokens.tolist() for g in gens[0.0]] == [g.tokens.tolist() for g in plain]
    # the first steered token is the argmax of a forward pass with 8 v added after layer 0
    seen = {}

    def add(act, hook=None):
        return act + 8.0 * v.to(act.dtype)

    def grab(act, hook=None):
        seen["x"] = act
        return act

    with pair.tuned.hooks(fwd_hooks=[("blocks.0.hook_resid_post", add)]):
        logits = pair.tuned(prompts[0][None], return_type="logits")
    assert int(gens[8.0][0].tokens[0]) == int(logits[0, -1].argmax())
    with pair.tuned.hooks(fwd_hooks=[("blocks.0.hook_resid_post", add),
                                     ("blocks.1.hook_resid_pre", grab)]):
        pair.tuned(prompts[0][None], return_type=None)
    _, cache = pair.tuned.run_with_cache(prompts[0][None])
    torch.testing.assert_close(seen["x"], cache["blocks.0.hook_resid_post"] + 8.0 * v,
                               rtol=1e-5, atol=1e-5)


def test_topk_counts_against_a_loop():
    g = torch.Generator().manual_seed(0)
    diff = torch.randn(50, 30, generator=g)
    want = torch.zeros(30, dtype=torch.float64)
    for row in diff:
        for t in sorted(range(30), key=lambda i: -float(row[i]))[:4]:
            want[t] += 1
    assert torch.equal(topk_counts(diff, 4), want)
    w = torch.rand(50, generator=g, dtype=torch.float64)
    want_w = sum(w[i] * torch.nn.functional.one_hot(diff[i].topk(4).indices, 30).sum(0)
                 for i in range(50))
    torch.testing.assert_close(topk_counts(diff, 4, w), want_w.double())
    # a shift common to a row does not change its count (logits and log-probs count alike)
    assert torch.equal(topk_counts(diff + torch.randn(50, 1, generator=g), 4), want)


def test_diff_mining_counts_against_a_direct_loop(pair):
    res = diff_mining(pair, TEXTS, k=5, n_boot=50, n_tokens=40, progress=False, batch_size=3)
    hb, ht = pair.base.original_model, pair.tuned.original_model
    counts = torch.zeros(pair.cfg.d_vocab, dtype=torch.float64)
    lp = torch.zeros(pair.cfg.d_vocab, dtype=torch.float64)
    n = 0
    with torch.no_grad():
        for t in TEXTS:
            ids = _tokens(pair, t)[None]
            lt, lb = ht(input_ids=ids).logits[0].double(), hb(input_ids=ids).logits[0].double()
            for p in range(ids.shape[1]):
                counts[(lt[p] - lb[p]).topk(5).indices] += 1
            lp += (torch.log_softmax(lt, -1) - torch.log_softmax(lb, -1)).sum(0)
            n += ids.shape[1]
    assert res.n_positions == n
    f = res.tokens
    assert f["count"].tolist() == [int(counts[i]) for i in f.token_id]
    torch.testing.assert_close(torch.tensor(f.mean_logprob_diff.to_numpy()),
                               (lp / n)[torch.tensor(f.token_id.to_numpy())], rtol=1e-6,
                               atol=1e-9)
    assert (f.rate_low <= f.rate + 1e-12).all() and (f.rate <= f.rate_high + 1e-12).all()
    assert f.stability.between(0, 1).all()
    # ranked by count, then mean log-prob difference
    assert list(f["count"]) == sorted(f["count"], reverse=True)


def test_stability_and_bootstrap(pair):
    res = activation_difference(pair, TEXTS * 3, n_positions=2, n_boot=40, steer_prompts=[],
                                progress=False)
    st = res.ranking("logit_lens").stability
    assert st.between(0, 1).all() and st.notna().all()
    assert res.ranking("logit_lens", layer=0).stability.isna().all()  # only at the lens layer
    w = poisson_weights(20000, 3, torch.Generator().manual_seed(1))
    assert abs(float(w.mean()) - 1) < 0.02 and abs(float(w.var()) - 1) < 0.05


def test_relevance_and_vocabulary(pair):
    assert relevance([1, 2, 2, 3], [2, 3, 9], k=3) == (1, 0.5)  # top 3 = {1, 2}: one relevant
    res = activation_difference(pair, TEXTS, n_positions=2, n_boot=0, steer_prompts=[],
                                vocabulary=[int(t) for t in range(20)], progress=False, top_k=5)
    r = res.relevance.set_index(["source", "model"])
    top = res.top_tokens(5)
    assert r.loc[("logit_lens", "tuned"), "n_relevant"] == int((top < 20).sum())


def test_bad_input_is_refused(pair, unchecked):
    with pytest.raises(ShiftlensError, match="no text has"):
        activation_difference(pair, ["a"], n_positions=40, progress=False)
    with pytest.raises(ShiftlensError, match="n_positions"):
        activation_difference(pair, TEXTS, n_positions=0, progress=False)
    with pytest.raises(ShiftlensError, match="patch_scales"):
        activation_difference(pair, TEXTS, patch_scales=[], progress=False)
    with pytest.raises(ShiftlensError, match="InstructionPrompt"):
        diff_mining(pair, [3], progress=False)
    with pytest.raises(ShiftlensError, match="k must be"):
        diff_mining(pair, TEXTS, k=10**6, progress=False)
    res = diff_mining(pair, TEXTS, n_boot=0, n_tokens=5, progress=False)
    with pytest.raises(ShiftlensError, match="k must be"):
        res.top_tokens(6)
    assert res.tokens.stability.isna().all()
