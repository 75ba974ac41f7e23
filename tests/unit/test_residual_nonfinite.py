"""Issue 14 for the residual lens: nothing silent.

A NaN or infinity reaching the lens (weights edited in memory, activations that overflow) gives a
ShiftlensError naming the model, the prompt, the hook (layer) and the position, never a statistic
over silently dropped values; every bad argument of the lens's public functions is a
ShiftlensError naming the argument and its value; and a Hypothesis fuzz of the parameters finds
only ShiftlensErrors or valid results.

Truths used: the planted NaN/infinity itself (its model, layer and parameter are known), and the
argument each bad call got.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shiftlens import ModelPair, ShiftlensError, ShiftlensWarning, default_prompts
from shiftlens.lenses.residual import compare
from shiftlens.lenses.residual import patching as patching_mod
from shiftlens.residual import (
    OutputShiftResult,
    PatchingResult,
    SimilarityResult,
    lens_logits,
    output_shift,
    patching,
    response_logprob,
    similarity,
)

PROMPTS = [p for p in default_prompts() if p.reference][:2]
FUNCTIONS = {
    "similarity": (similarity, {}),
    "output_shift": (output_shift, {}),
    "patching (greedy)": (patching, dict(max_new_tokens=3)),
    "patching (reference)": (patching, dict(response="reference")),
    "patching (resid_pre of layer 0 only)": (patching, dict(response="reference",
                                                            components=["resid_pre"],
                                                            layers=[0])),
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def llama(tiny_dirs) -> ModelPair:
    """A module-wide tiny Llama pair; tests must not mutate it."""
    return ModelPair.from_pretrained(*tiny_dirs("llama"))


def _poison(pair: ModelPair, role: str, value: float, layer: int = 1) -> str:
    """One entry of ``role``'s layer-``layer`` MLP down-projection set to ``value`` (in memory,
    after loading: what load_bridge's weight check cannot see). Returns the parameter name."""
    hf = pair.models[role].original_model
    with torch.no_grad():
        hf.model.layers[layer].mlp.down_proj.weight[3, 5] = value
    return f"model.layers.{layer}.mlp.down_proj.weight"


# ---------------------------------------------------------------------------- non-finite values
@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_one_nan_in_a_tuned_weight_is_an_error_naming_model_prompt_layer(llama_pair, name):
    """The issue's probe: one NaN in layer 1's down_proj of the tuned model. similarity used to
    report the least similar site among the finite ones (layers 1+ silently dropped), and
    output_shift / patching NaN statistics; now each names the model, the first prompt, where
    the forward pass turns non-finite and the bad weight."""
    fn, kw = FUNCTIONS[name]
    param = _poison(llama_pair, "tuned", float("nan"))
    with pytest.raises(ShiftlensError) as e:
        fn(llama_pair, PROMPTS, progress=False, **kw)
    msg = str(e.value)
    assert msg.startswith(f"tuned model {llama_pair.names['tuned']!r}: ")
    assert f"for prompt {PROMPTS[0].id!r}" in msg
    assert "first becomes non-finite at blocks.1.hook_mlp_out (layer 1), position 0" in msg
    assert f"{param!r} [32, 64]: 1 non-finite (1 NaN, 0 inf), first at index [3, 5]" in msg
    assert "No statistic was computed over non-finite values" in msg


def test_nan_in_the_base_model_names_the_base(llama_pair):
    _poison(llama_pair, "base", float("inf"), layer=0)
    with pytest.raises(ShiftlensError, match=r"^base model .*blocks\.0\.hook_resid_post.*"
                                             r"first becomes non-finite at blocks\.0\.hook_mlp_out"):
        similarity(llama_pair, PROMPTS, progress=False)


def test_sites_before_the_nan_still_give_a_result(llama_pair):
    """Only the sites a statistic is computed from are checked: layer 0 is finite, so comparing
    it alone is a valid result (nothing is dropped from it)."""
    _poison(llama_pair, "tuned", float("nan"))
    res = similarity(llama_pair, PROMPTS, layers=[0], hooks=["resid_pre", "resid_mid"],
                     progress=False)
    assert np.isfinite(res.to_frame().cosine).all()
    assert "1 of 2 layers compared (resid_pre, resid_mid only)" in res.summary()["sentence"]


def test_overflow_with_finite_weights_is_named_an_overflow(llama_pair):
    """Finite but huge weights (what an fp16 overflow looks like): layer 0's MLP output
    overflows float32 (1e10 * 1e10 * 1e20 summed) wherever the normed input sums positive; the
    message says the weights are finite and an activation overflowed."""
    mlp = llama_pair.tuned.original_model.model.layers[0].mlp
    with torch.no_grad():
        mlp.gate_proj.weight.fill_(1e10)
        mlp.up_proj.weight.fill_(1e10)
        mlp.down_proj.weight.fill_(1e20)
    with pytest.raises(ShiftlensError, match=r"first becomes non-finite at blocks\.0\.hook_mlp_out"
                                             r".*its weights are all finite, so an activation "
                                             r"overflowed \(dtype torch.float32\)"):
        output_shift(llama_pair, PROMPTS, progress=False)


def test_nonfinite_patched_run_is_an_error(llama, monkeypatch):
    """A patched run whose log-probability is non-finite (its clean runs were finite) raises,
    naming the direction, the site and the prompt."""
    real = patching_mod.hooked_forward

    def broken(model, tokens, capture=(), patch=None, return_logits=True):
        logits, acts = real(model, tokens, capture, patch, return_logits)
        if patch:
            logits = torch.full_like(logits, float("nan"))
        return logits, acts

    monkeypatch.setattr(patching_mod, "hooked_forward", broken)
    with pytest.raises(ShiftlensError, match=r"^base model .*: patching blocks\.0\.hook_mlp_out "
                                             r"with the tuned model's activation \(tuned->base\) "
                                             rf"gave a non-finite log-probability .*{PROMPTS[0].id}"):
        patching(llama, PROMPTS, components=["mlp_out"], response="reference", progress=False)


def test_nonfinite_logit_lens_is_an_error(llama, monkeypatch):
    real = compare.logit_lens

    def overflow(model, resid):
        out = real(model, resid)
        return out if model is llama.base else out * float("inf")

    monkeypatch.setattr(compare, "logit_lens", overflow)
    with pytest.raises(ShiftlensError, match=r"^tuned model .*non-finite value\(s\) in the "
                                             r"log-probabilities at blocks\.0\.hook_resid_post for "
                                             rf"prompt {PROMPTS[0].id!r}"):
        output_shift(llama, PROMPTS, progress=False)


# ---------------------------------------------------------------------------- bad arguments
BAD = [
    # (function, kwargs, the message must contain)
    ("similarity", dict(n_boot=0), "n_boot must be >= 1, got 0"),
    ("similarity", dict(n_boot=True), "n_boot must be an integer, got True"),
    ("similarity", dict(n_boot=2.5), "n_boot must be an integer, got 2.5"),
    ("similarity", dict(batch_size=0), "batch_size must be >= 1, got 0"),
    ("similarity", dict(batch_size="2"), "batch_size must be an integer, got '2'"),
    ("similarity", dict(seed=-1), "seed must be >= 0, got -1"),
    ("similarity", dict(seed=None), "seed must be an integer, got None"),
    ("similarity", dict(layers=[5]), "layer 5 out of range (n_layers=2)"),
    ("similarity", dict(layers=[True]), "layer True out of range"),
    ("similarity", dict(layers="0"), "layers must be a list of layer indices or None, got '0'"),
    ("similarity", dict(layers=[]), "empty list of layers"),
    ("similarity", dict(hooks=["attn_out"]), "unknown residual hook 'attn_out'"),
    ("similarity", dict(hooks=3), "residual hooks must be a name or a list of names"),
    ("similarity", dict(hooks=[None]), "unknown residual hook None"),
    ("similarity", dict(hooks=[]), "no residual hooks given"),
    ("similarity", dict(with_reference="yes"), "with_reference must be True or False, got 'yes'"),
    ("similarity", dict(per_token=1), "per_token must be True or False, got 1"),
    ("similarity", dict(progress=None), "progress must be True or False, got None"),
    ("output_shift", dict(top_k=0), "top_k must be >= 1, got 0"),
    ("output_shift", dict(top_k=10**6), "top_k must be <= 512, got 1000000"),
    ("output_shift", dict(chunk_rows=0), "chunk_rows must be >= 1, got 0"),
    ("output_shift", dict(chunk_rows=False), "chunk_rows must be an integer, got False"),
    ("output_shift", dict(segments=["answer"]), "unknown segment 'answer'"),
    ("output_shift", dict(segments=5), "segments must be a name or a list of names"),
    ("output_shift", dict(layers=[-1]), "layer -1 out of range"),
    ("output_shift", dict(with_reference=0), "with_reference must be True or False, got 0"),
    ("patching", dict(components=["resid"]), "unknown component 'resid'"),
    ("patching", dict(components=None), "components must be a name or a list of names"),
    ("patching", dict(directions=["base->base"]), "unknown direction 'base->base'"),
    ("patching", dict(positions=[0, 999]), "position 999 out of range"),
    ("patching", dict(positions=None), "positions must be 'all', a segment name, a position "
                                       "index or a list of them, got None"),
    ("patching", dict(positions=True), "positions must be 'all', a segment name"),
    ("patching", dict(positions=[True]), "positions must be all strings or all integers, got "
                                         "True"),
    ("patching", dict(response=5), "response must be 'greedy', 'reference' or one string per "
                                   "prompt, got 5"),
    ("patching", dict(response=["a", 3]), "the response must be a non-empty string, got 3"),
    ("patching", dict(max_new_tokens=0), "max_new_tokens must be >= 1, got 0"),
    ("patching", dict(max_new_tokens=True), "max_new_tokens must be an integer, got True"),
    ("patching", dict(min_gap=0), "min_gap must be > 0.0, got 0.0"),
    ("patching", dict(min_gap=float("nan")), "min_gap must be finite, got nan"),
    ("patching", dict(min_gap="1"), "min_gap must be a number, got '1'"),
    ("patching", dict(alternative="bigger"), "alternative must be one of ('two-sided', "
                                             "'greater', 'less'), got 'bigger'"),
    ("patching", dict(n_boot=-3), "n_boot must be >= 1, got -3"),
]


@pytest.mark.parametrize("fn, kwargs, match", BAD, ids=[f"{f}-{k}" for f, k, _ in BAD])
def test_bad_arguments_name_the_argument_and_value(llama, unchecked, fn, kwargs, match):
    f = {"similarity": similarity, "output_shift": output_shift, "patching": patching}[fn]
    kw = {"response": "reference"} if fn == "patching" else {}
    with pytest.raises(ShiftlensError, match=re.escape(match)):
        f(llama, PROMPTS, progress=kwargs.pop("progress", False), **{**kw, **kwargs})


@pytest.mark.parametrize("prompts, match", [
    ("Sort these words", "prompts must be a list of InstructionPrompt, got str"),
    ([], "no prompts given"),
    ([1], "prompt 0 is a int, not an InstructionPrompt"),
])
def test_bad_prompts_and_pair(llama, unchecked, prompts, match):
    for fn in (similarity, output_shift, patching):
        with pytest.raises(ShiftlensError, match=re.escape(match)):
            fn(llama, prompts, progress=False)
        with pytest.raises(ShiftlensError, match="expected a shiftlens.ModelPair, got object"):
            fn(object(), PROMPTS, progress=False)


def test_bad_arguments_of_the_single_model_pieces_and_figures(llama, unchecked):
    tp = llama.tokenize(PROMPTS[0], response=PROMPTS[0].reference)
    logits = torch.zeros(len(tp.tokens), llama.cfg.d_vocab)
    with pytest.raises(ShiftlensError, match="n_prompt must be an integer, got True"):
        response_logprob(logits, tp.tokens, True)
    with pytest.raises(ShiftlensError, match=r"need 1 <= n_prompt < \d+, got 0"):
        response_logprob(logits, tp.tokens, 0)
    with pytest.raises(ShiftlensError, match="layer 7 out of range"):
        lens_logits(llama.base, tp.tokens, layers=[7])
    kl = output_shift(llama, PROMPTS[:1], top_k=2, n_boot=20, progress=False)
    with pytest.raises(ShiftlensError, match="n_tokens must be >= 1, got 0"):
        kl.plot(n_tokens=0)


# ---------------------------------------------------------------------------- fuzz
def _mostly(valid: list, invalid: list) -> st.SearchStrategy:
    """Valid values about 4 times in 5: enough calls get through every check to a result."""
    return st.sampled_from(valid * (4 * max(1, len(invalid)) // max(1, len(valid)) or 1)
                           + invalid)


_count = _mostly([1, 2, 3], [0, -2, True, 1.5, "2", None])
_layers = _mostly([None, [0], [1], [1, 0], [0, 0], 1], [[2], [-1], [], "0", [True]])
_flags = _mostly([True, False], [0, 1, "yes", None])
_FUZZ = settings(max_examples=25, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])
OUTCOMES: dict[str, list[str]] = {}


def _outcome(call, cls):
    """A valid Result of ``cls`` (its invariants hold, its summary has a sentence) or a
    ShiftlensError; anything else fails the test."""
    seen = OUTCOMES.setdefault(cls.__name__, [])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ShiftlensWarning)  # undefined / unreliable gaps
            res = call()
    except ShiftlensError:
        seen.append("error")
        return
    seen.append("result")
    assert isinstance(res, cls)
    res.validate()
    assert isinstance(res.summary()["sentence"], str)


@_FUZZ
@given(layers=_layers, hooks=_mostly([("resid_pre",), ["resid_post", "resid_mid"], "resid_mid"],
                                     [[], ["attn_out"], 7]),
       batch_size=_count, n_boot=_count, seed=_mostly([0, 1, 7], [-1, None]),
       with_reference=_flags, per_token=_flags)
def test_fuzz_similarity(llama, unchecked, layers, hooks, batch_size, n_boot, seed,
                         with_reference, per_token):
    _outcome(lambda: similarity(llama, PROMPTS, layers=layers, hooks=hooks,
                                batch_size=batch_size, n_boot=n_boot, seed=seed,
                                with_reference=with_reference, per_token=per_token,
                                progress=False), SimilarityResult)


@_FUZZ
@given(layers=_layers, segments=_mostly([None, [], ["response"], "context"], [["x"], 3]),
       top_k=st.one_of(st.integers(1, 512), st.integers(-1, 600), st.booleans()),
       chunk_rows=_count, batch_size=_count, n_boot=_count)
def test_fuzz_output_shift(llama, unchecked, layers, segments, top_k, chunk_rows, batch_size,
                           n_boot):
    _outcome(lambda: output_shift(llama, PROMPTS, layers=layers, segments=segments,
                                  top_k=top_k, chunk_rows=chunk_rows, batch_size=batch_size,
                                  n_boot=n_boot, progress=False), OutputShiftResult)


@_FUZZ
@given(layers=_layers,
       components=_mostly([["mlp_out"], "attn_out", ["resid_pre", "resid_post"]],
                          [[], ["x"], None]),
       positions=_mostly(["all", "instruction", ["response", "bos"], [0, -1], 0],
                         [-1000, [], None, True, ["all", 1], "nowhere"]),
       response=_mostly(["reference", "greedy", ["a b", "c"]], [["a"], 3, "other"]),
       directions=_mostly([("tuned->base",), "base->tuned", list(("tuned->base", "base->tuned"))],
                          [[], ["up"]]),
       max_new_tokens=_count,
       min_gap=_mostly([1e-4, 1e-2, 1e9], [0.0, -1.0, float("inf"), "x"]),
       alternative=_mostly(["two-sided", "greater", "less"], ["up", None]),
       batch_size=_count)
def test_fuzz_patching(llama, unchecked, layers, components, positions, response, directions,
                       max_new_tokens, min_gap, alternative, batch_size):
    _outcome(lambda: patching(llama, PROMPTS, layers=layers, components=components,
                              positions=positions, response=response, directions=directions,
                              max_new_tokens=max_new_tokens, min_gap=min_gap,
                              alternative=alternative, batch_size=batch_size, n_boot=20,
                              progress=False), PatchingResult)


def test_fuzz_reached_results_and_errors():
    """The fuzz above exercised both outcomes of every function (not only early refusals)."""
    if len(OUTCOMES) < 3:
        pytest.skip("run with the fuzz tests")
    for name, seen in OUTCOMES.items():
        assert "result" in seen and "error" in seen, (name, seen)
