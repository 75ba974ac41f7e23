"""The one greedy decoding (shiftlens.generate) and the instrument self-check.

Every test here is marked ``generation``: ``.ci/run`` runs them a second time with another
transformers release laid over the locked venv (ALT_TRANSFORMERS), so decoding is proven equal to
the no-cache argmax loop under both releases.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings

import pytest
import torch

from shiftlens import ShiftlensError, ShiftlensWarning
from shiftlens import generate as G
from shiftlens.cli import main
from shiftlens.instrument import Check, SelfCheck, installed_versions, selfcheck
from shiftlens.pair import load_bridge
from shiftlens.prompts import InstructionPrompt, tokenize_prompt
from shiftlens.testing import ARCHITECTURES

pytestmark = pytest.mark.generation

PROMPT = InstructionPrompt("Sort the words: cat dog red", instruction="Sort the words:",
                           context="cat dog red", id="g")


def hf_loop(model, tokens: torch.Tensor, n: int) -> list[int]:
    """Independent greedy decoding: the Hugging Face model, full recompute, no cache."""
    hf = model.original_model
    t = tokens[None].clone()
    with torch.no_grad():
        for _ in range(n):
            nxt = hf(t).logits[0, -1].argmax()
            t = torch.cat([t, nxt.view(1, 1)], 1)
    return t[0, tokens.shape[0]:].tolist()


@pytest.fixture(scope="module")
def bridges(tiny_dirs):
    cache: dict = {}

    def get(arch: str):
        if arch not in cache:
            cache[arch] = load_bridge(tiny_dirs(arch)[0])
        return cache[arch]

    return get


def _tokens(model, prompt=PROMPT):
    return tokenize_prompt(model.tokenizer, prompt,
                           prepend_bos=model.cfg.default_prepend_bos).tokens


@contextlib.contextmanager
def broken_cache(model):
    """A wrapper whose cached path is wrong under every release: each attention layer is handed
    no cache, so incremental decoding attends to the new token alone."""

    def drop(module, args, kwargs):
        return args, {k: (None if k in ("past_key_values", "cache", "layer_past") else v)
                      for k, v in kwargs.items()}

    hs = [m.register_forward_pre_hook(drop, with_kwargs=True)
          for m in model.original_model.modules() if hasattr(type(m), "_update_kv_cache")]
    try:
        yield
    finally:
        for h in hs:
            h.remove()
        G._CACHE_BROKEN.pop(model, None)


def test_the_alternative_release_is_in_effect():
    """When .ci/run overlays another transformers release, the tests really run under it."""
    want = os.environ.get("SHIFTLENS_EXPECT_TRANSFORMERS")
    import transformers

    if want:
        assert transformers.__version__ == want
    assert installed_versions()["transformers"] == transformers.__version__ or want


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_greedy_equals_the_no_cache_loop(bridges, arch):
    model = bridges(arch)
    toks = _tokens(model)
    ref = hf_loop(model, toks, 10)
    g = G.greedy(model, toks, 10, stop_ids=[])
    assert g.tokens.tolist() == ref and g.stop_token is None
    assert G.argmax_loop(model, toks, 10, stop_ids=[]).tokens.tolist() == ref
    # the fast path itself works under this release (cache alias), not only the fallback
    assert g.cached and G.cache_status(model) == "verified"
    assert G._cached_rows(model, [toks], 10, frozenset())[0] == ref
    # a planted stop token: the third generated token ends the response before it
    stop = ref[2]
    g2 = G.greedy(model, toks, 10, stop_ids=[stop])
    first = ref.index(stop)
    assert g2.tokens.tolist() == ref[:first] and g2.stop_token == stop
    assert g2.with_stop().tolist() == ref[: first + 1]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_batch_equals_single_and_respects_lengths(bridges, arch):
    model = bridges(arch)
    prompts = [
        _tokens(model),
        _tokens(model, InstructionPrompt("Reverse: a b c d e", id="r")),
        _tokens(model, InstructionPrompt("Sort the words: red cat dog", id="s")),
    ]
    batch = G.greedy_batch(model, prompts, 7, stop_ids=[], batch_size=2)
    for p, g in zip(prompts, batch):
        assert g.tokens.tolist() == hf_loop(model, p, 7)
    assert [len(g.tokens) for g in batch] == [7, 7, 7]


def test_fallback_when_the_cached_path_is_wrong(bridges):
    """Verification catches a broken cache: same tokens as the loop, one warning, no cache after."""
    model = bridges("llama")
    toks = _tokens(model)
    ref = hf_loop(model, toks, 8)
    with broken_cache(model):
        raw = G._cached_rows(model, [toks], 8, frozenset())[0]
        assert raw != ref  # the simulation really breaks the cached path
        with pytest.warns(ShiftlensWarning, match="without the key/value cache"):
            g = G.greedy(model, toks, 8, stop_ids=[])
        assert g.tokens.tolist() == ref and not g.cached
        assert G.cache_status(model).startswith("broken: cached decoding gave token")
        assert "transformers" in G.cache_status(model)
        with warnings.catch_warnings():
            warnings.simplefilter("error", ShiftlensWarning)  # no second warning
            assert G.greedy(model, toks, 8, stop_ids=[]).tokens.tolist() == ref


def test_embedded_pair_decodes_like_the_loop_and_its_manifest(toy):
    from shiftlens.zoo import manifest, toy_prompts

    prompts = toy_prompts(7)  # reverse-000 ... translate-000: the manifest's examples
    examples = manifest()["evaluation"]["examples"]
    toks = [toy.tokenize(p).tokens for p in prompts]
    for role, model in toy:
        gens = G.greedy_batch(model, toks, 12)
        for p, t, g in zip(prompts, toks, gens):
            assert g.with_stop().tolist() == hf_loop(model, t, len(g.with_stop()))
            assert toy.tokenizer.decode(g.tokens.tolist()) == examples[role][p.id]
        if role == "tuned":  # the tuned model answers and stops at <eos>
            assert all(g.stop_token == toy.tokenizer.eos_token_id for g in gens)


@pytest.mark.parametrize("bad, match", [
    (dict(max_new_tokens=0), "max_new_tokens must be an integer >= 1"),
    (dict(max_new_tokens=True), "max_new_tokens must be an integer >= 1"),
    (dict(tokens=torch.tensor([1.0, 2.0])), "must be integers"),
    (dict(tokens=torch.tensor([], dtype=torch.long)), "non-empty 1-D"),
    (dict(tokens=torch.tensor([[1, 2]])), "non-empty 1-D"),
    (dict(tokens=torch.tensor([1, 10**6])), r"must lie in \[0, "),
    (dict(tokens=[1, 2]), "must be a torch tensor"),
    (dict(stop_ids=["x"]), "stop_ids must be token ids"),
])
def test_bad_inputs_are_clear_errors(bridges, bad, match, unchecked):
    model = bridges("llama")
    kw = dict(tokens=_tokens(model), max_new_tokens=4)
    kw.update(bad)
    with pytest.raises(ShiftlensError, match=match):
        G.greedy(model, kw.pop("tokens"), **kw)


def test_prompt_filling_the_context_is_refused(bridges):
    model = bridges("gpt2")
    toks = torch.ones(model.cfg.n_ctx, dtype=torch.long)
    with pytest.raises(ShiftlensError, match="leave no room"):
        G.greedy(model, toks, 2)


# ============================================================================ self-check
def test_selfcheck_passes_on_the_embedded_pair(toy):
    sc = selfcheck(toy)
    assert sc.passed, sc.message()
    names = [c.name for c in sc.checks]
    assert names == ["decoding/base", "kv_cache/base", "decoding/tuned", "kv_cache/tuned",
                     "embedded_manifest"]
    d = sc.to_dict()
    assert d["passed"] and set(d["versions"]) >= {"torch", "transformers", "transformer-lens"}
    json.dumps(d)


def test_selfcheck_on_a_random_pair_has_no_manifest_check(llama_pair):
    sc = selfcheck(llama_pair)
    assert sc.passed and [c.name for c in sc.checks][-1] == "kv_cache/tuned"


def test_selfcheck_fails_when_generation_is_broken(llama_pair):
    with broken_cache(llama_pair.tuned):
        sc = selfcheck(llama_pair)
    assert not sc.passed
    assert [c.name for c in sc.failed] == ["kv_cache/tuned"]
    with pytest.raises(ShiftlensError, match=r"self-check failed: kv_cache/tuned: .* transformers "):
        sc.raise_if_failed()


def test_selfcheck_catches_a_decoding_the_verification_misses(llama_pair, monkeypatch):
    """If greedy itself were wrong (here: a verification that passes everything over a broken
    cache), the self-check's own loop still catches it."""
    monkeypatch.setattr(G, "_first_disagreement", lambda m, p, rows: [None] * len(rows))
    with broken_cache(llama_pair.base):
        sc = selfcheck(llama_pair)
    assert {c.name for c in sc.failed} == {"decoding/base", "kv_cache/base"}


def test_selfcheck_message_and_records():
    sc = SelfCheck([Check("decoding/base", False, "differs")], {"transformers": "9.9"})
    assert sc.message() == "self-check failed: decoding/base: differs (installed: transformers 9.9)"
    sk = SelfCheck.skipped_on_request()
    assert not sk.passed and sk.to_dict()["skipped"]
    sk.raise_if_failed()  # skipping is not a failure


@pytest.mark.slow
def test_demo_refuses_when_the_instrument_is_broken(tmp_path, monkeypatch, capsys):
    """`shiftlens demo` exits 3 with one line naming the check and the versions, writes nothing;
    --skip-checks measures anyway and records it in metrics.json."""
    from shiftlens import instrument

    real = instrument._decoding_checks

    def broken(pair, toks, n):
        with broken_cache(pair.tuned):
            return real(pair, toks, n)

    monkeypatch.setattr(instrument, "_decoding_checks", broken)
    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out), "--lenses", "ffn", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 3
    assert "self-check failed: kv_cache/tuned" in err and "transformers " in err
    assert "torch " in err and "transformer-lens " in err
    assert not (out / "metrics.json").exists()
    rc = main(["demo", "--out", str(out), "--lenses", "ffn", "--no-progress", "--skip-checks"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["selfcheck"]["skipped"] is True and m["selfcheck"]["passed"] is False
    assert "self-check was skipped" in (out / "report.html").read_text()
