"""PairCache: paired capture equals each model's own run_with_cache; batching; reductions; I/O."""

from __future__ import annotations

import pytest
import torch

from shiftlens import PairCache, ShiftlensError, default_prompts
from shiftlens.capture import default_hook_names, segment_mean
from shiftlens.prompts import SEGMENTS

PROMPTS = default_prompts()[:5]


def test_cache_equals_model_run_with_cache(pair):
    cache = pair.run_with_cache(PROMPTS, batch_size=3, progress=False)
    assert cache.names == default_hook_names(2) and len(cache) == 5
    for i, tp in enumerate(cache.prompts):
        assert tp.n_response > 0  # references appended
        for role, model in pair:
            _, ref = model.run_with_cache(tp.tokens[None])
            for name in cache.names:
                torch.testing.assert_close(cache.get(role, name, i), ref[name][0], atol=1e-5, rtol=1e-4)


def test_batched_equals_unbatched(pair):
    names = ["blocks.1.hook_resid_post", "blocks.0.attn.hook_pattern", "blocks.1.mlp.hook_post"]
    a = pair.run_with_cache(PROMPTS, names, batch_size=5, progress=False)
    b = pair.run_with_cache(PROMPTS, names, batch_size=1, progress=False)
    for role in ("base", "tuned"):
        for n in names:
            for x, y in zip(a[role, n], b[role, n]):
                assert x.shape == y.shape
                torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)
    # the two models really differ
    assert not torch.allclose(a["base", names[0]][0], a["tuned", names[0]][0])


def test_reductions_equal_direct_computation(llama_pair):
    names = ["blocks.1.hook_resid_post", "blocks.1.attn.hook_pattern"]
    full = llama_pair.run_with_cache(PROMPTS, names, progress=False)
    seg = llama_pair.run_with_cache(PROMPTS, names, reduce="segment_mean", progress=False)
    last = llama_pair.run_with_cache(PROMPTS, names, reduce="last", progress=False)
    for i, tp in enumerate(full.prompts):
        resid = full.get("tuned", names[0], i)
        pat = full.get("tuned", names[1], i)  # [head, q, k]
        for s, sname in enumerate(SEGMENTS):
            m = tp.mask(sname)
            got = seg.get("tuned", names[0], i)[s]
            if m.any():
                torch.testing.assert_close(got, resid[m].mean(0))
                for t, tname in enumerate(SEGMENTS):
                    km = tp.mask(tname)
                    want = pat[:, m][:, :, km].sum(-1).mean(-1)  # [head]
                    torch.testing.assert_close(seg.get("tuned", names[1], i)[s, :, t], want)
            else:
                assert torch.isnan(got).all()
        q = tp.n_prompt - 1
        torch.testing.assert_close(last.get("tuned", names[0], i), resid[q])
        for t, tname in enumerate(SEGMENTS):
            torch.testing.assert_close(last.get("tuned", names[1], i)[:, t],
                                       pat[:, q][:, tp.mask(tname)].sum(-1))
        torch.testing.assert_close(segment_mean(resid, tp), seg.get("tuned", names[0], i), equal_nan=True)
    assert seg.stack("base", names[1]).shape == (5, 5, 4, 5)


def test_save_load_bit_exact(llama_pair, tmp_path):
    cache = llama_pair.run_with_cache(PROMPTS[:3], ["blocks.0.hook_resid_mid", "blocks.0.attn.hook_pattern"],
                                      progress=False)
    back = PairCache.load(cache.save(tmp_path / "c"))
    assert back.names == cache.names and back.model_names == cache.model_names
    for role in ("base", "tuned"):
        for n in cache.names:
            for x, y in zip(cache[role, n], back[role, n]):
                assert torch.equal(x, y)
    for a, b in zip(cache.prompts, back.prompts):
        assert a.prompt == b.prompt and torch.equal(a.tokens, b.tokens)
        assert torch.equal(a.segments, b.segments) and a.n_prompt == b.n_prompt
    with pytest.raises(ShiftlensError, match="no PairCache"):
        PairCache.load(tmp_path)


def test_bad_inputs(llama_pair):
    with pytest.raises(ShiftlensError, match="unknown hook name 'blocks.0.hook_resid_psot'.*did you mean"):
        llama_pair.run_with_cache(PROMPTS, ["blocks.0.hook_resid_psot"], progress=False)
    with pytest.raises(ShiftlensError, match="unknown hook name 'blocks.9.hook_resid_post'"):
        llama_pair.run_with_cache(PROMPTS, "blocks.9.hook_resid_post", progress=False)
    with pytest.raises(ShiftlensError, match="no prompts"):
        llama_pair.run_with_cache([], progress=False)
    with pytest.raises(ShiftlensError, match="unknown reduce"):
        llama_pair.run_with_cache(PROMPTS, "blocks.0.hook_resid_post", reduce="max", progress=False)
    with pytest.raises(ShiftlensError, match="matched no hook"):
        llama_pair.run_with_cache(PROMPTS, lambda n: n.startswith("nothing"), progress=False)
    # ShiftlensError normally; the runtime type checker (on in tests) may speak first
    with pytest.raises((ShiftlensError, TypeError), match="InstructionPrompt"):
        llama_pair.run_with_cache(["just a string"], progress=False)
    cache = llama_pair.run_with_cache(PROMPTS[:2], "blocks.0.hook_resid_post", progress=False)
    with pytest.raises(ShiftlensError, match="was not cached"):
        cache["base", "blocks.1.hook_resid_post"]
    with pytest.raises(ShiftlensError, match="cannot stack"):
        cache.stack("base", "blocks.0.hook_resid_post")


def test_long_prompt_is_refused_not_truncated(llama_pair):
    from shiftlens import InstructionPrompt

    p = InstructionPrompt("Repeat: " + "cat " * 400, instruction=["Repeat:"], id="long-1")
    with pytest.raises(ShiftlensError, match="'long-1'.*exceed the context length 256"):
        llama_pair.run_with_cache([p], progress=False)
