"""Lens 1: attribution matrix, importance density, instruction score and the pair analyses.

Known truths used here: hand-computed sparsification/density values, an independent brute-force
attribution (the Hugging Face model called directly with ``inputs_embeds``, full-vocabulary
softmax at every position, one backward per response token), an independent argmax generation
loop and scipy's Welch test, on tiny random models. The planted edit (a zero embedding row) is
in tests/planted/test_attribution_planted.py, the toy pair's known shift in
tests/toy/test_attribution_toy.py.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as st

from shiftlens import ModelPair, ShiftlensError, ShiftlensWarning
from shiftlens import attribution as A
from shiftlens.pair import load_bridge
from shiftlens.prompts import InstructionPrompt
from shiftlens.result import make_meta
from shiftlens.testing import ARCHITECTURES
from shiftlens.tokens import token_strings

PROMPT = InstructionPrompt(
    "Sort the words: red cat dog\nResponse:",
    instruction=["Sort the words:"],
    context=["red cat dog"],
    id="sort-1",
    category="sort",
    reference=" cat dog red",
)


@pytest.fixture(scope="module")
def bridges(tiny_dirs):
    """One tiny base bridge per architecture, shared by the read-only tests of this module."""
    cache: dict = {}

    def get(arch: str, dtype: torch.dtype = torch.float32):
        key = (arch, dtype)
        if key not in cache:
            cache[key] = load_bridge(tiny_dirs(arch)[0], dtype=dtype)
        return cache[key]

    return get


def brute_force(model, att: A.Attribution) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper code's method, independent of shiftlens' hooks: HF model with inputs_embeds,
    full-vocabulary probabilities at every position, one backward per response token."""
    hf = model.original_model
    toks = att.tokens[None]
    emb = hf.get_input_embeddings()(toks).detach().double().to(hf.dtype).requires_grad_(True)
    probs = torch.softmax(hf(inputs_embeds=emb).logits[0].double(), dim=-1)
    pos = att.input_positions
    cols, ps = [], []
    for m in range(att.n_output):
        t = att.n_prompt + m
        (g,) = torch.autograd.grad(probs[t - 1, att.tokens[t]], emb, retain_graph=True)
        cols.append((g[0, pos].double() * emb[0, pos].double()).sum(-1))
        ps.append(probs[t - 1, att.tokens[t]].detach())
    return torch.stack(cols, 1).detach(), torch.stack(ps)


def argmax_loop(model, tokens: torch.Tensor, n: int) -> list[int]:
    """Independent greedy decoding: full recompute with the HF model, no cache, no stop token."""
    hf = model.original_model
    t = tokens[None].clone()
    with torch.no_grad():
        for _ in range(n):
            nxt = hf(t).logits[0, -1].argmax()
            t = torch.cat([t, nxt.view(1, 1)], 1)
    return t[0, tokens.shape[0]:].tolist()


# ====================================================================== density: hand-computed
def test_sparsify_hand_computed_and_boundaries():
    a = torch.tensor([[1.0, -1.0], [0.75, 2.0], [0.5, 1.5], [0.7, 1.42]])
    # col 0 /1: 10, 7.5->8, 5->0, 7 exactly -> 7 -> dropped (the +1e-9 keeps ceil(7.0)=7)
    # col 1 /2: neg->0, 10, 7.5->8, 7.1->8
    assert A.sparsify(a).tolist() == [[10, 0], [8, 10], [0, 8], [0, 8]]
    assert A.sparsify(a, levels=4, threshold=0).tolist() == [[4, 0], [3, 4], [2, 3], [3, 3]]


def test_density_hand_computed():
    a = torch.tensor([[1.0, 0.2], [0.9, 1.0], [0.0, 0.1]])
    # s = [[10, 0], [9, 10], [0, 0]]; I = [10/10, 19/(9^4+10^4)^(1/4), 0]
    i0 = 10 / (10 + 1e-9)
    i1 = 19 / ((9**4 + 10**4) ** 0.25 + 1e-9)
    expect = torch.tensor([i0, i1, 0.0], dtype=torch.float64) / (max(i0, i1) + 1e-9)
    got = A.importance_density(a)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expect, rtol=0, atol=1e-15)
    # p changes the denominator: p=2
    i1_2 = 19 / (math.sqrt(81 + 100) + 1e-9)
    e2 = torch.tensor([i0, i1_2, 0.0], dtype=torch.float64) / (max(i0, i1_2) + 1e-9)
    torch.testing.assert_close(A.importance_density(a, p=2), e2, rtol=0, atol=1e-15)


def test_density_all_zero_columns_and_matrix():
    a = torch.tensor([[3.0, 0.0, 1.0], [1.0, 0.0, 2.0], [0.5, 0.0, 0.0]])
    # an all-zero column sparsifies to zeros and changes nothing
    assert A.sparsify(a)[:, 1].tolist() == [0, 0, 0]
    torch.testing.assert_close(A.importance_density(a), A.importance_density(a[:, [0, 2]]))
    # an all-zero (or all-negative) matrix: density 0 everywhere, no NaN
    for z in (torch.zeros(4, 3), -torch.ones(4, 3)):
        d = A.importance_density(z)
        assert torch.equal(d, torch.zeros(4, dtype=torch.float64))


def test_density_one_response_token():
    a = torch.tensor([[2.0], [1.9], [1.0], [-3.0]])
    # s = [10, 10, 5->0, 0]: I_n = s/s = 1 - tiny for the kept tokens, then / max
    d = A.importance_density(a)
    assert d[2] == 0 and d[3] == 0
    assert d[0] == d[1] and abs(float(d[0]) - 1) < 1e-8


def test_density_ties():
    a = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    s = A.sparsify(a)
    assert s.tolist() == [[10, 10], [10, 0], [0, 10]]  # tied maxima both reach 10
    d = A.importance_density(a)
    # row 0: 20 / (2*10^4)^(1/4) = 2^(3/4); rows 1, 2: 1
    i0, i1 = 20 / ((2 * 10**4) ** 0.25 + 1e-9), 10 / (10 + 1e-9)
    expect = torch.tensor([i0, i1, i1], dtype=torch.float64) / (i0 + 1e-9)
    torch.testing.assert_close(d, expect, rtol=0, atol=1e-15)
    assert d[1] == d[2]


def test_density_integer_inputs_and_idempotence():
    """The paper's published matrices are integers on the 0..10 scale: re-normalising changes
    nothing (for every column that reaches 10), so density(x) uses x itself as s."""
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        n, m = int(torch.randint(1, 30, (1,), generator=g)), int(torch.randint(1, 40, (1,), generator=g))
        x = torch.randint(0, 11, (n, m), generator=g)
        x[torch.randint(0, n, (m,), generator=g), torch.arange(m)] = 10  # every column reaches 10
        s_expect = torch.where(x <= 7, 0, x).double()
        assert torch.equal(A.sparsify(x), s_expect)  # integer dtype accepted
        assert torch.equal(A.sparsify(x.double()), s_expect)
        assert torch.equal(A.sparsify(A.sparsify(x)), A.sparsify(x))  # idempotent
        # density from the formula applied directly to s_expect
        l1 = s_expect.sum(1)
        l4 = s_expect.pow(4).sum(1).pow(0.25)
        dens = l1 / (l4 + 1e-9)
        torch.testing.assert_close(A.importance_density(x), dens / (dens.max() + 1e-9),
                                   rtol=0, atol=1e-15)
    # a column whose max is below 10 is rescaled (not idempotent there): 9 -> 10
    assert A.sparsify(torch.tensor([[9], [8]])).tolist() == [[10], [9]]


def test_density_scale_invariance_and_range():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(17, 9, generator=g)
    d = A.importance_density(a)
    torch.testing.assert_close(A.importance_density(a * 123.0), d)
    assert float(d.min()) >= 0 and float(d.max()) <= 1 and float(d.max()) > 1 - 1e-6


def test_density_bad_input():
    with pytest.raises(ShiftlensError, match="NaN"):
        A.importance_density(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ShiftlensError, match="non-empty"):
        A.importance_density(torch.zeros(3, 0))
    with pytest.raises(ShiftlensError, match="threshold"):
        A.importance_density(torch.ones(2, 2), levels=5, threshold=7)
    with pytest.raises(ShiftlensError, match="p must"):
        A.importance_density(torch.ones(2, 2), p=1)


def test_instruction_score_hand_computed_and_empty_mask():
    d = torch.tensor([1.0, 0.5, 0.25, 0.0], dtype=torch.float64)
    mask = torch.tensor([True, False, True, True])
    assert A.instruction_score(d, mask) == pytest.approx(1.25 / math.log2(5), abs=1e-15)
    with pytest.warns(ShiftlensWarning, match="no instruction"):
        assert math.isnan(A.instruction_score(d, torch.zeros(4, dtype=torch.bool)))


# ====================================================================== attribution matrix
@pytest.mark.parametrize("arch_", ARCHITECTURES)
def test_forward_reverse_and_brute_force_agree(bridges, arch_):
    model = bridges(arch_)
    fwd = A.attribute(model, PROMPT, max_new_tokens=5, mode="forward", chunk_size=4)
    rev = A.attribute(model, PROMPT, fwd.response_tokens, mode="reverse", chunk_size=2)
    ref, ref_p = brute_force(model, fwd)
    scale = float(ref.abs().max())
    assert scale > 0
    assert fwd.matrix.shape == ref.shape == (fwd.n_input, fwd.n_output)
    # float32 model: agreement to float32 rounding (HF norms compute in float32)
    assert float((fwd.matrix.double() - ref).abs().max()) / scale < 2e-5
    assert float((rev.matrix.double() - ref).abs().max()) / scale < 2e-5
    torch.testing.assert_close(fwd.probs.double(), ref_p, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(rev.probs, fwd.probs)
    assert (fwd.mode, rev.mode) == ("forward", "reverse")
    assert all(p.grad is None for p in model.parameters())  # nothing accumulated


def test_forward_reverse_agree_float64_exactly(bridges):
    """GPT-2 computes everything in float64 when asked: the two modes agree to ~1e-12."""
    model = bridges("gpt2", torch.float64)
    fwd = A.attribute(model, PROMPT, max_new_tokens=4, mode="forward", chunk_size=5)
    rev = A.attribute(model, PROMPT, fwd.response_tokens, mode="reverse", chunk_size=3)
    ref, _ = brute_force(model, fwd)
    assert fwd.matrix.dtype == torch.float64
    scale = float(ref.abs().max())
    assert float((fwd.matrix - rev.matrix).abs().max()) / scale < 1e-12
    assert float((fwd.matrix - ref).abs().max()) / scale < 1e-12


def test_full_logits_fallback_matches(bridges, monkeypatch):
    """Without HF's logits_to_keep the full logits are computed and rows selected: same result."""
    model = bridges("llama")
    a1 = A.attribute(model, PROMPT, " cat dog red", mode="reverse")
    from shiftlens.lenses.attribution import core

    monkeypatch.setattr(core, "_accepts_logits_to_keep", lambda m: False)
    a2 = A.attribute(model, PROMPT, " cat dog red", mode="reverse")
    a3 = A.attribute(model, PROMPT, " cat dog red", mode="forward")
    torch.testing.assert_close(a1.matrix, a2.matrix)
    torch.testing.assert_close(a1.matrix, a3.matrix, rtol=1e-4, atol=1e-6 * float(a1.matrix.abs().max()))


def test_fallback_paths_agree(bridges, monkeypatch):
    """Forward mode without torch.func.vmap (dual tensors, batch of copies) and reverse mode
    without is_grads_batched (a loop of VJPs) give the same matrix, and say so in meta."""
    model = bridges("gemma2")
    ref = A.attribute(model, PROMPT, " cat dog red", mode="reverse")

    def no_vmap(*a, **k):
        raise RuntimeError("vmap unavailable")

    monkeypatch.setattr(torch.func, "vmap", no_vmap)
    dual = A.attribute(model, PROMPT, " cat dog red", mode="forward", chunk_size=5)
    assert "dual" in dual.meta["forward_impl"]
    real_grad = torch.autograd.grad

    def no_batched(*a, **k):
        if k.get("is_grads_batched"):
            raise RuntimeError("no batching rule")
        return real_grad(*a, **k)

    monkeypatch.setattr(torch.autograd, "grad", no_batched)
    loop = A.attribute(model, PROMPT, " cat dog red", mode="reverse", chunk_size=2)
    assert "looped" in loop.meta["vjp_batching"]
    tol = 2e-5 * float(ref.matrix.abs().max())
    torch.testing.assert_close(loop.matrix, ref.matrix, rtol=0, atol=tol)
    torch.testing.assert_close(dual.matrix, ref.matrix, rtol=0, atol=tol)


def test_auto_mode_choice_and_chunk_independence(bridges):
    model = bridges("qwen2")
    short = A.attribute(model, "Sort: a b", " c d e f g h i j k l m n")  # N <= M
    assert short.mode == "forward" and short.n_input <= short.n_output
    long = A.attribute(model, PROMPT, " cat")  # N > M
    assert long.mode == "reverse" and "auto" in long.meta["mode_reason"]
    c1 = A.attribute(model, PROMPT, " cat dog red", mode="forward", chunk_size=1)
    c9 = A.attribute(model, PROMPT, " cat dog red", mode="forward", chunk_size=9)
    r1 = A.attribute(model, PROMPT, " cat dog red", mode="reverse", chunk_size=1)
    torch.testing.assert_close(c1.matrix, c9.matrix)
    torch.testing.assert_close(c1.matrix, r1.matrix, rtol=1e-4,
                               atol=1e-5 * float(c1.matrix.abs().max()))


# ====================================================================== generation
@pytest.mark.parametrize("arch_", ARCHITECTURES)
def test_greedy_generation_matches_argmax_loop(bridges, arch_):
    model = bridges(arch_)
    tp = A.tokenize_prompt(model.tokenizer, PROMPT, prepend_bos=model.cfg.default_prepend_bos)
    ids, eos = A.greedy_response(model, tp.tokens, 6, stop_ids=[])
    assert ids.tolist() == argmax_loop(model, tp.tokens, 6) and not eos
    # a planted stop token: the third generated token ends the response before it
    ids2, eos2 = A.greedy_response(model, tp.tokens, 6, stop_ids=[int(ids[2])])
    first = ids.tolist().index(int(ids[2]))
    assert ids2.tolist() == ids.tolist()[:first] and eos2
    att = A.attribute(model, PROMPT, max_new_tokens=6)
    assert att.generated and att.n_output >= 1
    assert att.response_tokens.tolist() == ids.tolist()[: att.n_output]
    assert att.response == model.tokenizer.decode(att.response_tokens.tolist())


# ====================================================================== Attribution object
def test_attribution_segments_bos_and_roundtrip(bridges, tmp_path):
    llama, qwen = bridges("llama"), bridges("qwen2")
    a = A.attribute(llama, PROMPT, " cat dog red")
    assert a.segments[0] == A.BOS and 0 not in a.input_positions.tolist()
    assert a.n_input == a.n_prompt - 1
    assert a.masks["instruction"].any() and a.masks["context"].any()
    ins = a.input_tokens[a.instruction_mask].tolist()
    assert llama.tokenizer.decode(ins).strip() == "Sort the words:"
    # display strings (the text each token adds), the vocabulary entries beside them
    assert a.token_strings == tuple(token_strings(llama.tokenizer, a.tokens))
    assert a.raw_token_strings == tuple(llama.tokenizer.convert_ids_to_tokens(a.tokens.tolist()))
    q = A.attribute(qwen, PROMPT, " cat dog red")  # qwen2: no BOS, every prompt token is input
    assert q.n_input == q.n_prompt and not bool((q.segments == A.BOS).any())
    # score consistent with the public pieces
    assert a.score() == A.instruction_score(A.importance_density(a.matrix), a.instruction_mask)
    a.save(tmp_path / "att")
    b = A.Attribution.load(tmp_path / "att")
    assert torch.equal(a.matrix, b.matrix) and torch.equal(a.tokens, b.tokens)
    assert b.prompt == a.prompt and b.mode == a.mode and b.meta == a.meta
    assert b.score(threshold=5) == a.score(threshold=5)
    df = a.to_frame()
    assert len(df) == a.n_input and set(df["segment"]) <= {"instruction", "context", "template"}
    fig = a.show(tmp_path / "att.png")
    assert (tmp_path / "att.png").stat().st_size > 0
    import matplotlib.pyplot as plt

    plt.close(fig)


# ====================================================================== bad input
def test_bad_input_empty_response_and_context(bridges):
    model = bridges("llama")
    for empty in ("", "   "):
        with pytest.raises(ShiftlensError, match="sort-1.*empty"):
            A.attribute(model, PROMPT, empty)
    with pytest.raises(ShiftlensError, match="empty"):
        A.attribute(model, PROMPT, [])
    n_ctx = model.cfg.n_ctx
    with pytest.raises(ShiftlensError, match="context length"):
        A.attribute(model, PROMPT, " red" * (n_ctx + 5))
    with pytest.raises(ShiftlensError, match="context length"):
        A.attribute(model, PROMPT, list(range(10, 10 + n_ctx)))
    with pytest.raises(ShiftlensError, match="mode"):
        A.attribute(model, PROMPT, " cat", mode="sideways")  # type: ignore[arg-type]


def test_bad_input_grad_disabled_and_inference_mode(bridges):
    model = bridges("llama")
    with torch.no_grad(), pytest.raises(ShiftlensError, match="no_grad"):
        A.attribute(model, PROMPT, " cat")
    with torch.inference_mode(), pytest.raises(ShiftlensError, match="inference_mode"):
        A.attribute(model, PROMPT, " cat")
    with torch.no_grad(), pytest.raises(ShiftlensError, match="no_grad"):
        A.attribution_matrix(model, torch.tensor([0, 5, 6, 7]), 2)


def test_bad_input_inference_tensor_weights(tiny_dirs):
    """Weights created under torch.inference_mode() cannot take part in autograd: clear error."""
    model = load_bridge(tiny_dirs("qwen2")[0])
    with torch.inference_mode():
        for p in model.original_model.parameters():
            p.data = p.data.clone()
    with pytest.raises(ShiftlensError, match="inference tensors"):
        A.attribute(model, PROMPT, " cat")


def test_attribution_matrix_validation(bridges):
    model = bridges("llama")
    toks = torch.tensor([0, 5, 6, 7, 8])
    for n_prompt in (0, 5):
        with pytest.raises(ShiftlensError, match="at least one prompt and one response"):
            A.attribution_matrix(model, toks, n_prompt)
    with pytest.raises(ShiftlensError, match="input positions"):
        A.attribution_matrix(model, toks, 3, torch.tensor([1, 3]))
    with pytest.raises(ShiftlensError, match="chunk_size"):
        A.attribution_matrix(model, toks, 3, chunk_size=0)
    a, p, info = A.attribution_matrix(model, toks, 3, torch.tensor([1, 2]))
    full, _, _ = A.attribution_matrix(model, toks, 3)
    assert a.shape == (2, 2) and p.shape == (2,)
    torch.testing.assert_close(a, full[1:], rtol=1e-5, atol=1e-6 * float(full.abs().max()))


def test_prompt_without_instruction_scores_nan(bridges):
    model = bridges("gpt2")
    att = A.attribute(model, "red cat dog", " cat")
    assert not att.instruction_mask.any()
    with pytest.warns(ShiftlensWarning, match="instruction"):
        assert math.isnan(att.score())


# ====================================================================== pair analyses
def _tiny_pair(tiny_dirs, arch="llama"):
    base, tuned = tiny_dirs(arch)
    return ModelPair.from_pretrained(base, tuned)


def test_instruction_sensitivity_tiny_pair(tiny_dirs, tmp_path):
    pair = _tiny_pair(tiny_dirs)
    prompts = [
        PROMPT,
        InstructionPrompt("Reverse: blue fish\nResponse:", instruction=["Reverse:"], id="rev-1",
                          category="reverse", reference=" fish blue"),
        InstructionPrompt("Count the words: a b c\nResponse:", instruction=["Count the words:"],
                          id="count-1", category="count", reference=" 3"),
        InstructionPrompt("just some words here\nResponse:", id="noins", category="count",
                          reference=" ok"),
    ]
    with pytest.warns(ShiftlensWarning, match="noins"):
        res = A.instruction_sensitivity(pair, prompts, max_new_tokens=4, progress=False)
    df = res.to_frame()
    assert list(df["id"]) == ["sort-1", "rev-1", "count-1", "noins"]
    assert df.loc[3, "note"] == "no instruction span" and np.isnan(df.loc[3, "base_score"])
    assert np.isfinite(df.loc[:2, ["base_score", "tuned_score"]].to_numpy()).all()
    # each score equals an independent single-model attribution of the same response
    for role, model in pair:
        att = A.attribute(model, PROMPT, max_new_tokens=4)
        assert att.response == df.loc[0, f"{role}_response"]
        assert att.score() == pytest.approx(df.loc[0, f"{role}_score"], rel=1e-6)
    # summary against scipy (two-sided by default)
    s = res.summary()
    t, b = df["tuned_score"].dropna(), df["base_score"].dropna()
    ref = st.ttest_ind(t, b, equal_var=False, alternative="two-sided")
    assert s["overall"]["pvalue"] == pytest.approx(ref.pvalue)
    assert s["overall"]["mean_a"] == pytest.approx(t.mean())
    assert set(s["by_category"]) == {"sort", "reverse", "count"}
    assert "two-sided Welch" in s["sentence"]
    # rescore with other parameters == recomputation from the stored matrices
    r5 = res.rescore(threshold=5, p=3)
    m = res.matrices["tuned"][1]
    expect = A.instruction_score(A.importance_density(m, threshold=5, p=3), res.instruction_masks[1])
    assert r5.frame.loc[1, "tuned_score"] == pytest.approx(expect)
    # save / load round trip
    res.save(tmp_path / "sens")
    back = A.SensitivityResult.load(tmp_path / "sens")
    pd.testing.assert_frame_equal(back.frame, res.frame)
    assert all(torch.equal(x, y) for x, y in zip(back.matrices["base"], res.matrices["base"]))
    assert back.params == res.params
    import matplotlib.pyplot as plt

    plt.close(res.show(tmp_path / "sens.png"))


def test_instruction_sensitivity_reference_and_bad_input(tiny_dirs):
    import shiftlens

    assert shiftlens.instruction_sensitivity is A.instruction_sensitivity  # lazy re-export
    pair = _tiny_pair(tiny_dirs, "qwen2")
    res = A.instruction_sensitivity(pair, [PROMPT], response="reference", progress=False)
    assert res.frame.loc[0, "base_response"] == res.frame.loc[0, "tuned_response"] == " cat dog red"
    with pytest.raises(ShiftlensError, match="reference"):
        A.instruction_sensitivity(pair, [InstructionPrompt("Do it: x", instruction=["Do it:"], id="z")],
                                  response="reference", progress=False)
    with pytest.raises(ShiftlensError, match="no prompts"):
        A.instruction_sensitivity(pair, [], progress=False)
    long = InstructionPrompt("Sort: " + "red " * 400, instruction=["Sort:"], id="long")
    t0 = time.perf_counter()
    with pytest.raises(ShiftlensError, match="long.*context length"):
        A.instruction_sensitivity(pair, [PROMPT, long], progress=False)
    assert time.perf_counter() - t0 < 5  # checked before any model runs
    with torch.no_grad(), pytest.raises(ShiftlensError, match="no_grad"):
        A.instruction_sensitivity(pair, [PROMPT], progress=False)


def _hand_result(scores_b, scores_t, resp_b, resp_t, refs):
    n = len(scores_b)
    frame = pd.DataFrame({
        "id": [f"p{i}" for i in range(n)], "category": ["c"] * n, "n_input": 3,
        "n_instruction": 1, "base_score": scores_b, "tuned_score": scores_t,
        "base_n_response": 1, "tuned_n_response": 1, "base_response": resp_b,
        "tuned_response": resp_t, "base_mean_prob": 0.5, "tuned_mean_prob": 0.5,
        "base_mode": "reverse", "tuned_mode": "reverse", "reference": refs, "note": "",
    })
    masks = [torch.tensor([True, False, False])] * n
    meta = make_meta(models={"base": "b", "tuned": "t"}, seed=0,
                     params={"levels": 10, "threshold": 7, "p": 4})
    return A.SensitivityResult(frame, {"base": [None] * n, "tuned": [None] * n}, masks, meta)


def test_followed_comparison_against_scipy(tmp_path):
    rng = np.random.default_rng(0)
    sb, stn = rng.normal(0.5, 0.1, 12), rng.normal(0.8, 0.1, 12)
    refs = [" a b"] * 12
    resp_b = [" a b" if i % 3 == 0 else " x" for i in range(12)]
    resp_t = [" a b c" if i % 4 else " y" for i in range(12)]
    res = _hand_result(sb, stn, resp_b, resp_t, refs)
    labels = A.followed_by_reference(res)
    assert labels[("base", "p0")] and not labels[("base", "p1")]
    assert labels[("tuned", "p1")] and not labels[("tuned", "p0")]  # prefix match
    assert not A.followed_by_reference(res, match="exact")[("tuned", "p1")]
    fr = A.followed_comparison(res, labels)
    df = fr.to_frame()
    assert len(df) == 24
    f = df.loc[df["followed"], "score"]
    u = df.loc[~df["followed"], "score"]
    ref = st.ttest_ind(f, u, equal_var=False, alternative="two-sided")
    s = fr.summary()
    assert s["pooled"]["pvalue"] == pytest.approx(ref.pvalue)
    assert s["counts"]["base"]["followed"] == 4
    fr2 = A.followed_comparison(res, {f"p{i}": i < 6 for i in range(12)}, roles=["tuned"])
    assert fr2.to_frame()["followed"].sum() == 6 and len(fr2.frame) == 12
    with pytest.raises(ShiftlensError, match="unknown prompt ids"):
        A.followed_comparison(res, {"nope": True})
    fr.save(tmp_path / "f")
    back = A.FollowedResult.load(tmp_path / "f")
    pd.testing.assert_frame_equal(back.frame, fr.frame)


def test_place_instruction():
    ctx = ["The sun rose.", "Birds sang loudly.", "A cat slept.", "Rain came later."]
    for pos in A.POSITIONS:
        p = A.place_instruction("List the animals.", ctx, pos, id=f"x@{pos}")
        spans = p.char_spans()
        (s, e), = spans["instruction"]
        assert p.text[s:e] == "List the animals."
        ctx_text = " ".join(p.text[a:b] for a, b in spans["context"])
        assert ctx_text == " ".join(ctx)
        assert p.text.endswith("\nResponse:") and p.meta["position"] == pos
    assert A.place_instruction("Do.", ctx, "start").text.startswith("Do.\n")
    assert A.place_instruction("Do.", ctx, "middle").text.startswith("The sun rose. Birds sang loudly.\nDo.\n")
    with pytest.raises(ShiftlensError, match="middle"):
        A.place_instruction("Do.", ["one"], "middle")
    with pytest.raises(ShiftlensError, match="position"):
        A.place_instruction("Do.", ctx, "top")  # type: ignore[arg-type]


def test_position_sensitivity_fixed_responses(tiny_dirs, tmp_path):
    pair = _tiny_pair(tiny_dirs, "gpt2")
    items = [("List the animals.", ["The sun rose.", "A cat slept.", "Rain came."]),
             ("Count the birds.", ["Two birds sang.", "One bird flew.", "Wind blew."])]
    pr = A.position_sensitivity(pair, items, responses=[" cat", " three"], progress=False)
    df = pr.to_frame()
    assert len(df) == 2 * 3 * 2
    # independent check of one cell: attribute the placed prompt directly
    p = A.place_instruction(*items[1], "middle", id="item-001@middle", category="middle")
    expect = A.attribute(pair.tuned, p, " three").score()
    got = df[(df["item"] == "item-001") & (df["position"] == "middle") & (df["role"] == "tuned")]
    assert float(got["score"].iloc[0]) == pytest.approx(expect, rel=1e-6)
    s = pr.summary()
    assert set(s["means"]["base"]) == set(A.POSITIONS)
    assert "start-middle" in s["edges_vs_middle"]["tuned"]
    pr.save(tmp_path / "pos")
    back = A.PositionResult.load(tmp_path / "pos")
    pd.testing.assert_frame_equal(back.frame, pr.frame)
    import matplotlib.pyplot as plt

    plt.close(pr.show())
