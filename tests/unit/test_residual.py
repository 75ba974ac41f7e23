"""Tests for the residual lens (shiftlens.residual = shiftlens.lenses.residual): similarity, logit lens / KL, cross-model patching.

Truths used: the models' own forward logits (logit lens at the last layer), numpy
re-implementations (cosine, HSIC-form CKA, KL) and Hugging Face modules called directly, on tiny
random pairs (unit tier). The planted pairs (a tuned model differing from the base only in known
parameters) are in tests/planted/test_residual_planted.py, the embedded pair in
tests/toy/test_residual_toy.py.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from shiftlens import ModelPair, ShiftlensError, ShiftlensWarning, default_prompts
from shiftlens.prompts import InstructionPrompt
from shiftlens.residual import (
    OutputShiftResult,
    PatchingResult,
    SimilarityResult,
    check_pair,
    check_pair_compatible,
    cosine_per_position,
    greedy_response,
    kl_divergence,
    lens_logits,
    linear_cka,
    logit_lens,
    output_shift,
    patched_logits,
    patching,
    response_logprob,
    similarity,
)
from shiftlens.testing import tiny_model_dir

PROMPTS = default_prompts()


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models run fastest single-threaded; on a shared 2-core machine two intra-op threads
    contend and make each small matmul ~10x slower. Restored after this module."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------------------- helpers
def np_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA through HSIC with an explicit centring matrix (Kornblith et al. 2019)."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = x @ x.T, y @ y.T
    hsic = np.trace(k @ h @ l_ @ h)
    return float(hsic / np.sqrt(np.trace(k @ h @ k @ h) * np.trace(l_ @ h @ l_ @ h)))


def np_logprob(logits: torch.Tensor) -> np.ndarray:
    x = logits.detach().double().numpy()
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.fixture(scope="module")
def llama(tiny_dirs) -> ModelPair:
    """A module-wide tiny Llama pair (tuned = base + 5% noise); tests must not mutate it."""
    return ModelPair.from_pretrained(*tiny_dirs("llama"))


def ref_prompts(n: int) -> list[InstructionPrompt]:
    return [p for p in PROMPTS if p.reference][:n]


# ---------------------------------------------------------------------------- tensors
def test_cosine_and_cka_against_numpy():
    g = torch.Generator().manual_seed(0)
    for n, d in [(7, 16), (40, 12)]:  # Gram branch (n <= d) and feature branch (n > d)
        x = torch.randn(n, d, generator=g)
        y = x @ torch.randn(d, d, generator=g) + 0.5 * torch.randn(n, d, generator=g)
        assert linear_cka(x, y) == pytest.approx(np_cka(x.double().numpy(), y.double().numpy()),
                                                 abs=1e-10)
        q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
        assert linear_cka(x, 2.5 * x.double() @ q + 3.0) == pytest.approx(1.0, abs=1e-10)
        cos = cosine_per_position(x, y).numpy()
        xn, yn = x.double().numpy(), y.double().numpy()
        ref = (xn * yn).sum(1) / np.linalg.norm(xn, axis=1) / np.linalg.norm(yn, axis=1)
        np.testing.assert_allclose(cos, ref, atol=1e-12)
    # widths may differ for CKA; fewer than 3 items or a constant side is undefined
    x, y = torch.randn(6, 3, generator=g), torch.randn(6, 9, generator=g)
    assert linear_cka(x, y) == pytest.approx(np_cka(x.double().numpy(), y.double().numpy()),
                                             abs=1e-10)
    assert np.isnan(linear_cka(torch.randn(2, 4), torch.randn(2, 4)))
    assert np.isnan(linear_cka(torch.ones(5, 4), torch.randn(5, 4)))
    assert torch.isnan(cosine_per_position(torch.zeros(1, 3), torch.ones(1, 3))).all()


def test_kl_divergence_against_numpy():
    g = torch.Generator().manual_seed(1)
    lp = torch.log_softmax(torch.randn(6, 11, generator=g, dtype=torch.float64), -1)
    lq = torch.log_softmax(torch.randn(6, 11, generator=g, dtype=torch.float64), -1)
    p = lp.exp().numpy()
    ref = (p * (lp.numpy() - lq.numpy())).sum(-1)
    np.testing.assert_allclose(kl_divergence(lp, lq).numpy(), ref, atol=1e-12)
    assert (kl_divergence(lp, lq) > 0).all()
    assert kl_divergence(lp, lp).abs().max() == 0


# ---------------------------------------------------------------------------- logit lens
def test_logit_lens_of_final_residual_is_the_logits(pair):
    """Every architecture: own final norm + unembedding (+ Gemma 2's soft-cap) = real logits."""
    tp = pair.tokenize(PROMPTS[0], response=PROMPTS[0].reference)
    for _, model in pair:
        L = model.cfg.n_layers
        with torch.no_grad():
            logits = model(tp.tokens[None], return_type="logits")[0]
            hf = model.original_model(tp.tokens[None]).logits[0]
        ll = lens_logits(model, tp.tokens, layers=[L - 1])[0]
        torch.testing.assert_close(ll, logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ll, hf, atol=1e-5, rtol=1e-5)
        # the lens of an earlier layer differs from the output (it is a different readout)
        assert (lens_logits(model, tp.tokens, layers=[0])[0] - logits).abs().max() > 1e-3


@pytest.mark.parametrize("arch", ["gpt2", "gemma2"])
def test_logit_lens_compat_weights(arch, tiny_dirs):
    b, t = tiny_dirs(arch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = ModelPair.from_pretrained(b, t, processing="compat")
    tp = p.tokenize(PROMPTS[1])
    with torch.no_grad():
        logits = p.tuned(tp.tokens[None], return_type="logits")[0]
    torch.testing.assert_close(lens_logits(p.tuned, tp.tokens, layers=[1])[0], logits,
                               atol=1e-4, rtol=1e-4)


def test_logit_lens_layer0_against_hf_modules(llama):
    """Lens at layer 0 = HF final RMSNorm + lm_head applied to the HF hidden state after layer 0."""
    tp = llama.tokenize(PROMPTS[2])
    m = llama.base
    with torch.no_grad():
        out = m.original_model(tp.tokens[None], output_hidden_states=True)
        h1 = out.hidden_states[1][0]  # after block 0
        ref = m.original_model.lm_head(m.original_model.model.norm(h1))
    torch.testing.assert_close(lens_logits(m, tp.tokens, layers=[0])[0], ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ShiftlensError, match="d_model"):
        logit_lens(m, torch.zeros(3, m.cfg.d_model + 1))
    with pytest.raises(ShiftlensError, match="resid_pre"):
        lens_logits(m, tp.tokens, hook="attn_out")


# ---------------------------------------------------------------------------- identical models
def test_identical_models_cosine_one_kl_zero_recovery_undefined(tiny_dirs):
    base, _ = tiny_dirs("llama")
    with pytest.warns(ShiftlensWarning, match="identical weights"):
        p = ModelPair.from_pretrained(base, base)
    prompts = ref_prompts(3)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        sim = similarity(p, prompts, batch_size=2, progress=False)
        kl = output_shift(p, prompts, batch_size=2, progress=False)
        pr = patching(p, prompts, components=["resid_pre", "mlp_out"], response="reference",
                      batch_size=2, progress=False)
        s_sum, k_sum, p_sum = sim.summary(), kl.summary(), pr.summary()
        pr.to_frame(aggregate=True)
    f = sim.to_frame()
    np.testing.assert_allclose(f.cosine, 1.0, atol=1e-12)
    cka = f.cka.dropna()
    assert len(cka) > 0
    np.testing.assert_allclose(cka, 1.0, atol=1e-9)
    assert (kl.to_frame().kl == 0).all() and kl.to_frame().top1_agree.all()
    assert k_sum["output_kl"]["all"]["kl"] == 0
    assert pr.to_frame().recovery.isna().all()
    assert pr.to_frame(aggregate=True).recovery.isna().all()
    assert (pr.prompts.gap == 0).all() and not pr.prompts.defined.any()
    assert "undefined" in pr.note and "undefined" in p_sum["sentence"].lower()
    assert s_sum["final"]["all"]["cosine"] == pytest.approx(1.0, abs=1e-12)
    # no numpy/torch division warnings; exactly one explanatory ShiftlensWarning
    assert not [w for w in rec if issubclass(w.category, RuntimeWarning)], [str(w.message) for w in rec]
    assert len([w for w in rec if issubclass(w.category, ShiftlensWarning)]) == 1
    pr.show()


# ---------------------------------------------------------------------------- similarity
def test_similarity_against_bruteforce(llama):
    prompts = ref_prompts(3)
    res = similarity(llama, prompts, batch_size=2, per_token=True, progress=False)
    f = res.to_frame()
    for pr in prompts:
        tp = llama.tokenize(pr, response=pr.reference)
        _, cb = llama.base.run_with_cache(tp.tokens[None])
        _, ct = llama.tuned.run_with_cache(tp.tokens[None])
        for layer, hook in [(0, "resid_pre"), (1, "resid_mid"), (1, "resid_post")]:
            name = f"blocks.{layer}.hook_{hook}"
            xb, xt = cb[name][0].double().numpy(), ct[name][0].double().numpy()
            for seg in ["instruction", "context", "template", "response", "all"]:
                m = np.ones(len(tp.tokens), bool) if seg == "all" else tp.mask(seg).numpy()
                row = f[(f.prompt_id == pr.id) & (f.layer == layer) & (f.hook == hook)
                        & (f.segment == seg)]
                if m.sum() == 0:
                    assert row.empty
                    continue
                cos = (xb[m] * xt[m]).sum(1) / np.linalg.norm(xb[m], axis=1) / np.linalg.norm(xt[m], axis=1)
                assert row.cosine.item() == pytest.approx(cos.mean(), abs=1e-9)
                assert row.n_positions.item() == m.sum()
                if m.sum() >= 3:
                    assert row.cka.item() == pytest.approx(np_cka(xb[m], xt[m]), abs=1e-8)
                else:
                    assert np.isnan(row.cka.item())
    # tuned = base + noise everywhere: the streams differ, but stay close
    assert (f.cosine < 1 - 1e-9).all() and (f.cosine > 0).all()
    tok = res.tokens
    assert len(tok) == sum(len(llama.tokenize(p, response=p.reference).tokens) for p in prompts) * 6
    t = res.to_frame(aggregate=True)
    assert {"cosine_low", "cosine_high", "cka"} <= set(t.columns)
    ok = t.n_cosine >= 2
    assert (t.cosine_low[ok] <= t.cosine[ok] + 1e-12).all() and (t.cosine[ok] <= t.cosine_high[ok] + 1e-12).all()


def test_similarity_layers_and_errors(llama):
    res = similarity(llama, ref_prompts(1), hooks=["resid_post"], layers=[1], progress=False,
                     with_reference=False)
    f = res.to_frame()
    assert set(f.layer) == {1} and set(f.hook) == {"resid_post"}
    assert "response" not in set(f.segment)
    with pytest.raises(ShiftlensError, match="unknown residual hook"):
        similarity(llama, ref_prompts(1), hooks=["attn_out"], progress=False)
    with pytest.raises(ShiftlensError, match="layer 5 out of range"):
        similarity(llama, ref_prompts(1), layers=[5], progress=False)
    with pytest.raises(ShiftlensError, match="no prompts"):
        similarity(llama, [], progress=False)
    with pytest.raises(ShiftlensError, match="batch_size"):
        similarity(llama, ref_prompts(1), batch_size=0, progress=False)


# ---------------------------------------------------------------------------- output shift
def test_output_shift_against_hf_logits(llama):
    prompts = ref_prompts(3)
    res = output_shift(llama, prompts, batch_size=2, top_k=5, segments=["response"],
                       progress=False)
    f = res.to_frame()
    L = llama.cfg.n_layers
    assert res.lens_check_max_abs_diff < 1e-4
    assert set(f.site) == {"logits"} | {f"blocks.{l}.hook_resid_post" for l in range(L)}
    n_resp = 0
    for pr in prompts:
        tp = llama.tokenize(pr, response=pr.reference)
        n_resp += tp.n_response
        with torch.no_grad():
            ob = llama.base.original_model(tp.tokens[None], output_hidden_states=True)
            ot = llama.tuned.original_model(tp.tokens[None], output_hidden_states=True)
        lb, lt = np_logprob(ob.logits[0]), np_logprob(ot.logits[0])
        ref = (np.exp(lt) * (lt - lb)).sum(-1)
        got = f[(f.prompt_id == pr.id) & (f.site == "logits")].sort_values("position")
        np.testing.assert_allclose(got.kl, ref, atol=1e-6)
        assert (got.layer == L).all()
        np.testing.assert_array_equal(got.top1_agree, lt.argmax(-1) == lb.argmax(-1))
        # lens at layer 0: HF final norm + lm_head of each model on its hidden state after block 0
        with torch.no_grad():
            hb = llama.base.original_model.lm_head(llama.base.original_model.model.norm(ob.hidden_states[1][0]))
            ht = llama.tuned.original_model.lm_head(llama.tuned.original_model.model.norm(ot.hidden_states[1][0]))
        lb0, lt0 = np_logprob(hb), np_logprob(ht)
        got0 = f[(f.prompt_id == pr.id) & (f.layer == 0)].sort_values("position")
        np.testing.assert_allclose(got0.kl, (np.exp(lt0) * (lt0 - lb0)).sum(-1), atol=1e-6)
    # the lens at the last layer is the output
    last = f[f.layer == L - 1].sort_values(["prompt_id", "position"]).kl.to_numpy()
    out = f[f.layer == L].sort_values(["prompt_id", "position"]).kl.to_numpy()
    np.testing.assert_allclose(last, out, atol=1e-6)
    # top tokens: top_k counted at each response position; KL shares add up to the mean KL there
    top = res.top_tokens
    assert res.n_counted_positions == n_resp
    assert top["count"].sum() == 5 * n_resp
    assert (top["count"].diff().dropna() <= 0).all()


def test_output_shift_top_token_bruteforce(llama):
    """One prompt, top_k=1, every position: counts = how often each token has the top KL share."""
    pr = ref_prompts(1)[0]
    res = output_shift(llama, [pr], top_k=1, progress=False)
    tp = llama.tokenize(pr, response=pr.reference)
    with torch.no_grad():
        lb = np_logprob(llama.base(tp.tokens[None])[0])
        lt = np_logprob(llama.tuned(tp.tokens[None])[0])
    contrib = np.exp(lt) * (lt - lb)
    winners, counts = np.unique(contrib.argmax(-1), return_counts=True)
    got = dict(zip(res.top_tokens.token_id, res.top_tokens["count"]))
    assert got == dict(zip(winners.tolist(), counts.tolist()))
    tid = int(res.top_tokens.token_id[0])
    rows = contrib.argmax(-1) == tid
    assert res.top_tokens.mean_logprob_rise[0] == pytest.approx((lt - lb)[rows, tid].mean(), abs=1e-6)
    assert res.top_tokens.kl_share[0] == pytest.approx(contrib[:, tid].mean(), abs=1e-9)
    assert res.top_tokens.token[0] == llama.tokenizer.decode([tid])


def test_output_shift_errors(llama):
    with pytest.raises(ShiftlensError, match="top_k"):
        output_shift(llama, ref_prompts(1), top_k=0, progress=False)
    with pytest.raises(ShiftlensError, match="unknown segment"):
        output_shift(llama, ref_prompts(1), segments=["answer"], progress=False)
    with pytest.raises(ShiftlensError, match="chunk_rows"):
        output_shift(llama, ref_prompts(1), chunk_rows=0, progress=False)


# ---------------------------------------------------------------------------- patching: identities
def test_resid_post_l_equals_resid_pre_next_and_batching(llama):
    prompts = ref_prompts(3)
    kw = dict(components=["resid_pre", "resid_post"], response="reference", progress=False,
              positions=["instruction", "context"])
    a = patching(llama, prompts, batch_size=3, **kw).to_frame()
    b = patching(llama, prompts, batch_size=1, **kw).to_frame()
    key = ["prompt_id", "direction", "component", "layer"]
    a, b = a.sort_values(key).reset_index(drop=True), b.sort_values(key).reset_index(drop=True)
    np.testing.assert_allclose(a.lp_patched, b.lp_patched, atol=1e-4)  # padding changes nothing
    post0 = a[(a.component == "resid_post") & (a.layer == 0)].sort_values(["prompt_id", "direction"])
    pre1 = a[(a.component == "resid_pre") & (a.layer == 1)].sort_values(["prompt_id", "direction"])
    np.testing.assert_allclose(post0.lp_patched.to_numpy(), pre1.lp_patched.to_numpy(), atol=1e-9)
    # the gap is tuned - base and recovery follows its definition
    for _, r in a.iterrows():
        if r.direction == "tuned->base":
            assert r.recovery == pytest.approx((r.lp_patched - r.lp_target) / (r.lp_source - r.lp_target))


def test_final_resid_patch_equals_base_head_on_tuned_stream(llama):
    """General pair: patching the last resid_post everywhere = the base head reading the tuned
    residual stream (HF modules, computed independently)."""
    pr = ref_prompts(1)[0]
    L = llama.cfg.n_layers
    res = patching(llama, [pr], components=["resid_post"], layers=[L - 1], response="reference",
                   directions=["tuned->base"], progress=False)
    tp = llama.tokenize(pr, response=pr.reference)
    with torch.no_grad():
        ht = llama.tuned.original_model(tp.tokens[None], output_hidden_states=True).hidden_states
        # HF's last hidden state is already normed; recompute the pre-norm stream via TL cache
        _, c = llama.tuned.run_with_cache(tp.tokens[None])
        resid = c[f"blocks.{L - 1}.hook_resid_post"][0]
        hb = llama.base.original_model
        logits = hb.lm_head(hb.model.norm(resid))
    assert len(ht) == L + 1
    lp = np_logprob(logits)
    ref = lp[np.arange(tp.n_prompt - 1, len(tp.tokens) - 1), tp.tokens[tp.n_prompt:].numpy()].sum()
    assert res.to_frame().lp_patched.item() == pytest.approx(ref, abs=1e-4)


def test_greedy_response_is_the_tuned_argmax(llama):
    pr = PROMPTS[5]
    res = patching(llama, [pr], components=["mlp_out"], layers=[0], response="greedy",
                   max_new_tokens=4, progress=False)
    tp = llama.tokenize(pr)
    ids = greedy_response(llama.tuned, tp.tokens, max_new_tokens=4)
    full = torch.cat([tp.tokens, ids])
    with torch.no_grad():
        logits = llama.tuned(full[None])[0]
    lp = np_logprob(logits)
    for k, t in enumerate(ids.tolist()):
        pos = tp.n_prompt - 1 + k
        assert lp[pos].argmax() == t
    assert res.prompts.n_response.item() == len(ids)
    assert res.prompts.lp_tuned.item() == pytest.approx(
        lp[np.arange(tp.n_prompt - 1, len(full) - 1), ids.numpy()].sum(), abs=1e-4)
    assert res.prompts.lp_tuned.item() == pytest.approx(
        response_logprob(logits, full, tp.n_prompt), abs=1e-9)
    assert res.prompts.response.item() == llama.tokenizer.decode(ids.tolist())


# ---------------------------------------------------------------------------- errors
@pytest.fixture(scope="module")
def mismatched(tiny_dirs, tmp_path_factory):
    root = tmp_path_factory.mktemp("mismatch")
    base, _ = tiny_dirs("llama")
    wide = tiny_model_dir("llama", root / "wide", d_model=48)
    bytetok = tiny_model_dir("llama", root / "bytetok", tokenizer="bytelevel")
    return base, wide, bytetok


def test_incompatible_pairs_are_refused(mismatched):
    base, wide, bytetok = mismatched
    with pytest.raises(ShiftlensError, match="d_model"):
        ModelPair.from_pretrained(base, wide)
    p = ModelPair.from_pretrained(base, wide, check=False)  # built unchecked
    for fn in (similarity, output_shift, patching):
        with pytest.raises(ShiftlensError, match="incompatible pair.*d_model 32 != 48"):
            fn(p, ref_prompts(1), progress=False)
    q = ModelPair.from_pretrained(base, bytetok, check=False)
    with pytest.raises(ShiftlensError, match="vocabularies differ"):
        check_pair(q)
    with pytest.warns(DeprecationWarning, match="check_pair_compatible"), \
            pytest.raises(ShiftlensError, match="vocabularies differ"):
        check_pair_compatible(q)
    with pytest.raises(ShiftlensError, match="vocabularies differ"):
        patching(q, ref_prompts(1), progress=False)
    # the patch hook itself refuses a source of the wrong shape
    tp = p.tokenize(ref_prompts(1)[0])
    toks = tp.tokens[None]
    with pytest.raises(ShiftlensError, match="activation shape"):
        patched_logits(p.base, toks, "blocks.0.hook_resid_pre", torch.zeros(1, toks.shape[1], 48),
                       torch.ones(toks.shape, dtype=torch.bool))
    with pytest.raises(ShiftlensError, match="has no hook"):
        patched_logits(p.base, toks, "blocks.9.hook_resid_pre", torch.zeros(1, toks.shape[1], 32),
                       torch.ones(toks.shape, dtype=torch.bool))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(components=["resid"]), "unknown component"),
        (dict(components=[]), "no components"),
        (dict(directions=["base->base"]), "unknown direction"),
        (dict(layers=[2]), "layer 2 out of range"),
        (dict(positions=[0, 999]), r"prompt 'writing-01': position 999 out of range"),
        (dict(positions=["answer"]), "unknown position spec"),
        (dict(positions=[0, "all"]), "all strings or all integers"),
        (dict(positions=[]), "positions is empty"),
        (dict(response="nonsense"), "response must be"),
        (dict(response=["a", "b"]), "2 responses for 1 prompts"),
        (dict(response=["   "]), "response is empty"),
        (dict(response="greedy", max_new_tokens=0), "max_new_tokens"),
        (dict(min_gap=-1.0), "min_gap"),
        (dict(batch_size=0), "batch_size"),
    ],
)
def test_patching_bad_arguments(llama, kwargs, match):
    kwargs = {"response": "reference", **kwargs}
    with pytest.raises(ShiftlensError, match=match):
        patching(llama, ref_prompts(1), progress=False, **kwargs)


def test_patching_missing_reference(llama):
    p = InstructionPrompt("Sort these: b a c", instruction=["Sort these:"], id="noref")
    with pytest.raises(ShiftlensError, match="'noref': response='reference' but it has none"):
        patching(llama, [p], response="reference", progress=False)


# ---------------------------------------------------------------------------- results
def test_results_round_trip(llama, tmp_path):
    prompts = ref_prompts(2)
    sim = similarity(llama, prompts, progress=False)
    kl = output_shift(llama, prompts, progress=False)
    pr = patching(llama, prompts, components=["resid_pre"], response="reference", progress=False)
    for res, cls in ((sim, SimilarityResult), (kl, OutputShiftResult), (pr, PatchingResult)):
        d = res.save(tmp_path / cls.__name__)
        back = cls.load(d)
        assert back.to_frame().equals(res.to_frame())
        assert back.meta["models"] == dict(llama.names)
        assert back.meta["seed"] == 0
        s1, s2 = res.summary(), back.summary()
        assert s1["sentence"] == s2["sentence"] and isinstance(s1["sentence"], str)
        fig = res.show()
        assert len(fig.axes) >= 2
    assert PatchingResult.load(tmp_path / "PatchingResult").prompts.equals(pr.prompts)
    assert OutputShiftResult.load(tmp_path / "OutputShiftResult").top_tokens.equals(kl.top_tokens)
    with pytest.raises(ShiftlensError, match="not a 'PatchingResult'"):
        PatchingResult.load(tmp_path / "SimilarityResult")
