"""Planted pairs for the residual lens's patching: the tuned model differs from the base only in
known parameters (embeddings only, one layer's attention only, everything but the final norm and
unembedding), for which the patching recovery is exactly 0 or 1 by construction.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from shiftlens import ModelPair, default_prompts
from shiftlens.prompts import InstructionPrompt
from shiftlens.residual import patching

PROMPTS = default_prompts()


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models run fastest single-threaded (restored after this module)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def planted_copy(src: Path, dst: Path, select, scale: float = 0.3, seed: int = 3) -> Path:
    """Copy a HF model dir adding noise only to parameters whose name satisfies ``select``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src)
    g = torch.Generator().manual_seed(seed)
    touched = []
    with torch.no_grad():
        for name, p in model.named_parameters():
            if select(name):
                p.add_(scale * p.std().clamp(min=1e-2) * torch.randn(p.shape, generator=g))
                touched.append(name)
    assert touched, "the planted edit selected no parameter"
    model.save_pretrained(dst)
    AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    return dst


@pytest.fixture(scope="module")
def planted(tiny_dirs, tmp_path_factory):
    """``planted(kind) -> ModelPair`` with a tuned model differing from the base only in:
    ``embed`` the token embeddings; ``attn1`` layer 1's attention; ``blocks`` everything but
    the final norm and the unembedding."""
    base, _ = tiny_dirs("llama")
    root = tmp_path_factory.mktemp("planted")
    selects = {
        "embed": lambda n: n.startswith("model.embed_tokens"),
        "attn1": lambda n: n.startswith("model.layers.1.self_attn."),
        "blocks": lambda n: not (n.startswith("model.norm") or n.startswith("lm_head")),
    }
    built: dict[str, ModelPair] = {}

    def get(kind: str) -> ModelPair:
        if kind not in built:
            tuned = planted_copy(base, root / kind, selects[kind])
            built[kind] = ModelPair.from_pretrained(base, tuned)
        return built[kind]

    return get


def ref_prompts(n: int) -> list[InstructionPrompt]:
    return [p for p in PROMPTS if p.reference][:n]


def test_final_residual_patch_recovers_everything_when_heads_match(planted):
    """Tuned differs everywhere but the final norm + unembedding: patching the last
    resid_post at every position reproduces the source model's logits: 100%, both ways."""
    p = planted("blocks")
    L = p.cfg.n_layers
    prompts = ref_prompts(3)
    res = patching(p, prompts, components=["resid_post"], layers=[L - 1], response="reference",
                   batch_size=2, progress=False)
    f = res.to_frame()
    assert res.prompts.gap.abs().min() > 0.05
    np.testing.assert_allclose(f.recovery, 1.0, atol=1e-5)
    np.testing.assert_allclose(res.to_frame(aggregate=True).recovery, 1.0, atol=1e-5)
    # only the positions that predict the response matter at the last layer
    pr = prompts[0]
    tp = p.tokenize(pr, response=pr.reference)
    idx = list(range(tp.n_prompt - 1, len(tp.tokens) - 1))
    r2 = patching(p, [pr], components=["resid_post"], layers=[L - 1], positions=idx,
                  response="reference", progress=False)
    np.testing.assert_allclose(r2.to_frame().recovery, 1.0, atol=1e-5)
    early = list(range(tp.n_prompt - 1))  # positions that predict no response token
    r3 = patching(p, [pr], components=["resid_post"], layers=[L - 1], positions=early,
                  response="reference", progress=False)
    assert (r3.to_frame().recovery == 0).all()
    assert (r3.to_frame().n_patched == tp.n_prompt - 1).all()


def test_embedding_only_difference_is_recovered_by_resid_pre_0(planted):
    p = planted("embed")
    res = patching(p, ref_prompts(2), components=["resid_pre", "resid_post"],
                   response="reference", progress=False)
    f = res.to_frame()
    assert res.prompts.gap.abs().min() > 0.05
    # every full residual patch carries the whole difference (nothing else differs)
    np.testing.assert_allclose(f.recovery, 1.0, atol=1e-5)


def test_planted_attention_edit_is_located(planted):
    p = planted("attn1")
    res = patching(p, ref_prompts(2), components=["resid_pre", "attn_out", "mlp_out", "resid_post"],
                   response="reference", progress=False)
    t = res.to_frame(aggregate=True).set_index(["direction", "component", "layer"])
    assert res.prompts.gap.abs().min() > 1e-3
    for d in ("tuned->base", "base->tuned"):
        assert t.loc[(d, "attn_out", 1), "recovery"] == pytest.approx(1.0, abs=1e-5)
        assert t.loc[(d, "resid_post", 1), "recovery"] == pytest.approx(1.0, abs=1e-5)
        for comp, layer in [("resid_pre", 0), ("resid_pre", 1), ("attn_out", 0), ("mlp_out", 0),
                            ("resid_post", 0)]:
            assert t.loc[(d, comp, layer), "recovery"] == 0.0  # identical activations
    s = res.summary()
    assert s["best"]["tuned->base"]["attn_out"]["layer"] == 1
    assert "attn_out of layer 1" in s["sentence"]
