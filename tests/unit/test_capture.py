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


# ============================================================================ indexing + I/O safety
def test_indexing_forms_and_clear_errors(llama_pair):
    names = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    cache = llama_pair.run_with_cache(PROMPTS[:2], names, progress=False)
    both = cache["blocks.1.hook_resid_post"]
    assert set(both) == {"base", "tuned"} and both["tuned"] is cache["tuned", names[1]]
    assert torch.equal(cache["tuned", names[1], 1], cache["tuned", names[1]][1])
    assert set(cache["base"]) == set(names)
    with pytest.raises(ShiftlensError, match=r"use cache\[role, hook\]"):
        cache["blocks.7.hook_resid_post"]
    with pytest.raises(ShiftlensError, match="did you mean"):
        cache["tuned", "blocks.1.hook_resid_pots"]
    with pytest.raises(ShiftlensError, match="unknown model role"):
        cache["instruct", names[0]]
    with pytest.raises(ShiftlensError, match="out of range"):
        cache["base", names[0], 5]
    assert "2 prompts" in repr(cache) and len(repr(cache)) < 200


def test_interrupted_or_tampered_cache_never_loads_as_whole(llama_pair, tmp_path):
    """Issue 14: an overwrite that dies half-way leaves the old cache; tampering is detected."""
    import shiftlens.io as sio

    name = ["blocks.0.hook_resid_post"]
    six = llama_pair.run_with_cache(PROMPTS[:5], name, progress=False)
    three = llama_pair.run_with_cache(PROMPTS[:2], name, progress=False)
    d = six.save(tmp_path / "c")
    real = sio.write_json

    def die(path, obj):  # activations of the new cache written, then the process "dies"
        raise KeyboardInterrupt

    sio_capture = __import__("shiftlens.capture", fromlist=["write_json"])
    sio_capture.write_json = die
    try:
        with pytest.raises(KeyboardInterrupt):
            three.save(d)
    finally:
        sio_capture.write_json = real
    back = PairCache.load(d)  # the old, whole cache
    assert len(back) == 5 and torch.equal(back["base", name[0], 4], six["base", name[0], 4])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".c.tmp")]
    # tampering: a changed cache.json, a truncated tensor file, a deleted file
    import re

    text = (d / "cache.json").read_text()
    m = re.search(r'"n_prompt": (\d)', text)
    flipped = str((int(m.group(1)) + 1) % 10)
    (d / "cache.json").write_text(text[: m.start(1)] + flipped + text[m.end(1):])  # same size
    with pytest.raises(ShiftlensError, match="cache.json does not match its SHA-256"):
        PairCache.load(d)
    d = six.save(tmp_path / "c2")
    f = d / "activations.safetensors"
    f.write_bytes(f.read_bytes()[:-7])
    with pytest.raises(ShiftlensError, match="activations.safetensors has .* bytes"):
        PairCache.load(d)
    d = six.save(tmp_path / "c3")
    (d / "cache.json").unlink()
    with pytest.raises(ShiftlensError, match="cache.json is missing"):
        PairCache.load(d)


# ============================================================================ TransformerLens interop
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_to_activation_cache_equals_the_models_own(arch, tiny_dirs, tmp_path):
    """Issue 16: TL's analysis methods on our cache equal the model's own run_with_cache."""
    from shiftlens import ModelPair

    pair = ModelPair.from_pretrained(*tiny_dirs(arch))
    p = PROMPTS[1]
    cache = pair.run_with_cache([PROMPTS[0], p], lambda n: True, progress=False)
    ac = cache.to_activation_cache("tuned", 1)
    toks = pair.tokenize(p, response=p.reference or None).tokens
    _, ref = pair.tuned.run_with_cache(toks[None])
    for name in ("blocks.1.hook_resid_post", "blocks.0.attn.hook_pattern"):
        torch.testing.assert_close(ac[name], ref[name])
    torch.testing.assert_close(ac["resid_post", 1], ref["resid_post", 1])
    a, la = ac.accumulated_resid(layer=-1, incl_mid=True, return_labels=True)
    b, lb = ref.accumulated_resid(layer=-1, incl_mid=True, return_labels=True)
    assert la == lb
    torch.testing.assert_close(a, b)
    a, la = ac.decompose_resid(layer=-1, return_labels=True)
    b, lb = ref.decompose_resid(layer=-1, return_labels=True)
    assert la == lb
    torch.testing.assert_close(a, b)
    stack = ac.accumulated_resid(layer=-1, pos_slice=-1)
    tokens = toks[-1:]
    torch.testing.assert_close(ac.logit_attrs(stack, tokens=tokens, pos_slice=-1),
                               ref.logit_attrs(ref.accumulated_resid(layer=-1, pos_slice=-1),
                                               tokens=tokens, pos_slice=-1))
    torch.testing.assert_close(ac.apply_ln_to_stack(stack, layer=-1, pos_slice=-1),
                               ref.apply_ln_to_stack(ref.accumulated_resid(layer=-1, pos_slice=-1),
                                                     layer=-1, pos_slice=-1))
    # after a save/load round trip the model must be passed
    back = PairCache.load(cache.save(tmp_path / "c"))
    with pytest.raises(ShiftlensError, match="pass model="):
        back.to_activation_cache("tuned", 1)
    torch.testing.assert_close(back.to_activation_cache("tuned", 1, pair.tuned)["resid_post", 0],
                               ref["resid_post", 0])
    red = pair.run_with_cache([p], ["blocks.0.hook_resid_post"], reduce="last", progress=False)
    with pytest.raises(ShiftlensError, match="reduce=None"):
        red.to_activation_cache("base", 0)
