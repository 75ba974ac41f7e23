"""Issue 14, nothing silent, for lens 1 (attribution): non-finite values and bad inputs.

Known truths: a NaN planted in one weight of one layer (the tuned model's layer-1 MLP
down-projection) must be named - prompt, model, layer and the weight - by every public pair
function, never turned into a score; an infinity in one embedding row must be traced to the
input embedding; prompts without a score are left out of both models' samples, counted and named,
and the statistic equals scipy's on the kept prompts; every bad argument is a ShiftlensError naming
the argument and its value; and no combination of parameters raises anything else (Hypothesis).
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs
from scipy import stats as st

from shiftlens import ShiftlensError, ShiftlensWarning
from shiftlens import attribution as A
from shiftlens.generate import Generation
from shiftlens.pair import load_bridge
from shiftlens.prompts import InstructionPrompt
from shiftlens.result import make_meta

PROMPT = InstructionPrompt("Sort the words: red cat dog\nResponse:", instruction=["Sort the words:"],
                           context=["red cat dog"], id="sort-1", category="sort",
                           reference=" cat dog red")
ITEMS = [("List the animals.", ["A cat sat.", "A dog ran.", "Rain fell."])]


def _plant(pair, value=float("nan")):
    """One non-finite entry in the tuned model's layer-1 MLP down-projection (in memory)."""
    w = pair.tuned.original_model.model.layers[1].mlp.down_proj.weight
    with torch.no_grad():
        old = float(w[0, 0])
        w[0, 0] = value
    return w, old


NAN_NAMED = (r"tuned model.*prompt '(sort-1|item-000@start)'.*non-finite at blocks\.1\.hook_mlp_out "
             r"\(layer 1\).*'model\.layers\.1\.mlp\.down_proj\.weight'.*1 NaN")


def test_nan_weight_is_named_by_every_pair_function(llama_pair):
    pair = llama_pair
    _plant(pair)
    calls = {
        "instruction_sensitivity (own)": lambda: A.instruction_sensitivity(
            pair, [PROMPT], max_new_tokens=3, progress=False),
        "instruction_sensitivity (reference)": lambda: A.instruction_sensitivity(
            pair, [PROMPT], response="reference", progress=False),
        "response_settings": lambda: A.response_settings(
            pair, [PROMPT, dataclasses.replace(PROMPT, id="sort-2")], max_new_tokens=3,
            progress=False),
        "position_sensitivity": lambda: A.position_sensitivity(pair, ITEMS, responses=[" cat"],
                                                               progress=False),
        "accumulate_sensitivity": lambda: A.accumulate_sensitivity(
            pair.tuned, A.validate_sensitivity(pair, [PROMPT], max_new_tokens=3), 0, "tuned"),
    }
    for what, call in calls.items():
        with pytest.raises(ShiftlensError, match=NAN_NAMED) as e:
            call()
        assert "No attribution is returned over non-finite values" in str(e.value), what
    # one model: the same diagnosis, for a generated and for a given response
    for resp in (None, " cat", [5, 6]):
        with pytest.raises(ShiftlensError, match=r"prompt 'sort-1'.*layer 1.*down_proj"):
            A.attribute(pair.tuned, PROMPT, resp, max_new_tokens=3)
    toks = pair.tokenize(PROMPT, response=" cat").tokens
    with pytest.raises(ShiftlensError, match=r"layer 1.*down_proj"):
        A.attribution_matrix(pair.tuned, toks, len(toks) - 1)
    # the base model is untouched and still attributes
    assert math.isfinite(A.attribute(pair.base, PROMPT, " cat").score())


def test_infinite_embedding_row_is_traced_to_the_input_embedding(llama_pair):
    pair = llama_pair
    tid = int(pair.tokenize(PROMPT).tokens[2])
    emb = pair.base.original_model.get_input_embeddings().weight
    with torch.no_grad():
        emb[tid, 0] = float("inf")
    with pytest.raises(ShiftlensError, match=r"base model.*hook_embed \(the input embedding\).*"
                                             r"embed_tokens\.weight.*1 inf"):
        A.instruction_sensitivity(pair, [PROMPT], response="reference", progress=False)


def test_empty_greedy_response_from_nan_logits_is_an_error_not_an_exclusion(llama_pair,
                                                                             monkeypatch):
    """A NaN model's argmax may be EOS: the response is empty because the logits are NaN, and
    that must not become an excluded prompt (a statistic over the rest)."""
    pair = llama_pair
    _plant(pair)
    from shiftlens.lenses.attribution import core

    monkeypatch.setattr(core, "greedy", lambda *a, **k: Generation(torch.zeros(0, dtype=torch.long),
                                                                   stop_token=2))
    with pytest.raises(ShiftlensError, match=r"tuned model.*logits are not finite.*layer 1"):
        A.instruction_sensitivity(pair, [PROMPT], max_new_tokens=3, progress=False)


def test_overflow_with_finite_weights_says_so(llama_pair):
    """Finite weights whose activations overflow (simulated: layer 1's MLP output multiplied by
    infinity, as a float16 overflow would leave it): the message says the weights are finite."""
    mlp = llama_pair.tuned.original_model.model.layers[1].mlp
    handle = mlp.register_forward_hook(lambda mod, args, out: out * float("inf"))
    try:
        with pytest.raises(ShiftlensError, match=r"sort-1.*layer 1.*weights are all finite, so a "
                                                 r"value overflowed \(torch.float32\)"):
            A.attribute(llama_pair.tuned, PROMPT, " cat")
    finally:
        handle.remove()


# ====================================================================== exclusions, counted
def _frame(base, tuned, notes, n_resp=(1, 1)):
    n = len(base)
    return pd.DataFrame({
        "id": [f"p{i}" for i in range(n)], "category": ["c"] * n, "n_input": 3,
        "n_instruction": 1, "base_score": base, "tuned_score": tuned,
        "base_n_response": n_resp[0], "tuned_n_response": n_resp[1],
        "base_response": " a", "tuned_response": " a", "base_mean_prob": 0.5,
        "tuned_mean_prob": 0.5, "base_mode": "reverse", "tuned_mode": "reverse",
        "reference": " a", "note": notes,
    })


def _result(frame, **params):
    n = len(frame)
    meta = make_meta(models={"base": "b", "tuned": "t"}, seed=0,
                     params={"levels": 10, "threshold": 7, "p": 4, "response": "reference",
                             **params})
    return A.SensitivityResult(frame, {"base": [None] * n, "tuned": [None] * n},
                               [torch.tensor([True, False, False])] * n, meta)


def test_prompts_without_a_score_are_left_out_of_both_samples_and_named():
    rng = np.random.default_rng(0)
    b, t = rng.normal(0.3, 0.1, 8), rng.normal(0.6, 0.1, 8)
    b[2] = np.nan  # base's greedy response was empty: the prompt leaves both samples
    b[5] = t[5] = np.nan  # no instruction span
    notes = [""] * 8
    notes[2], notes[5] = "base: empty greedy response", "no instruction span"
    s = _result(_frame(b, t, notes)).summary()
    keep = np.isfinite(b) & np.isfinite(t)
    ref = st.ttest_ind(t[keep], b[keep], equal_var=False)
    assert s["overall"]["pvalue"] == pytest.approx(ref.pvalue)
    assert s["overall"]["mean_a"] == pytest.approx(t[keep].mean())  # t[2] is not in it
    assert s["overall"]["n_a"] == s["overall"]["n_b"] == s["n_scored"] == 6
    assert s["excluded"] == [{"id": "p2", "reason": "base: empty greedy response"},
                             {"id": "p5", "reason": "no instruction span"}]
    assert ("2 of 8 prompts left out of the statistics (base: empty greedy response: p2; no "
            "instruction span: p5).") in s["sentence"]
    assert "n = 6" in s["sentence"]


def test_followed_and_position_exclusions_are_counted():
    frame = pd.DataFrame({"id": ["a", "b", "c", "d", "e"], "category": "c",
                          "role": ["base", "base", "tuned", "tuned", "tuned"],
                          "score": [0.1, np.nan, 0.5, 0.6, 0.2],
                          "followed": [False, True, True, True, False]})
    fr = A.FollowedResult(frame, 1, make_meta(models={"base": "b", "tuned": "t"}, seed=0))
    s = fr.summary()
    assert s["pooled"]["n_a"] == 2 and s["pooled"]["n_b"] == 2
    assert s["excluded"] == [{"role": "base", "id": "b", "reason": "no score"}]
    assert "1 of 5 responses left out of the statistics (no score: b (base))" in s["sentence"]
    assert "1 responses had no followed/unfollowed label" in s["sentence"]
    rows = []
    for item, bad in (("i0", False), ("i1", True), ("i2", False), ("i3", False)):
        for k, pos in enumerate(A.POSITIONS):
            for role in A.ROLES:
                score = np.nan if bad and pos == "middle" and role == "tuned" else 0.1 * k + (
                    0.2 if role == "tuned" else 0.0) + 0.01 * int(item[1])
                rows.append({"item": item, "id": f"{item}@{pos}", "position": pos, "role": role,
                             "score": score, "n_input": 5, "n_instruction": 2, "n_response": 1,
                             "response": " x", "note": "no instruction span" if bad else ""})
    pr = A.PositionResult(pd.DataFrame(rows), make_meta(models={"base": "b", "tuned": "t"},
                                                        seed=0))
    s = pr.summary()
    assert s["n_items"] == 3 and s["excluded"] == [
        {"item": "i1", "reason": "tuned at middle: no instruction span"}]
    assert s["tuned_vs_base"]["start"]["n_a"] == 3  # i1 left out of every test, not just one
    assert "1 of 4 items left out of the statistics" in s["sentence"]


def test_external_matrices_with_nan_are_refused():
    m = torch.tensor([[1.0, float("nan")], [0.5, 0.2]])
    with pytest.raises(ShiftlensError, match=r"prompt '#0', base: matrix has 1 NaN or infinite"):
        A.SensitivityResult.from_matrices({"base": [m], "tuned": [m.nan_to_num()]},
                                          [torch.tensor([True, False])])


# ====================================================================== bad input, named
@pytest.fixture(scope="module")
def gpt2(tiny_dirs):
    return load_bridge(tiny_dirs("gpt2")[0])


BAD_ATTRIBUTE = [
    (dict(response=[10**6]), r"token id 1000000, outside the model's vocabulary \[0, \d+\)"),
    (dict(response=[-1]), r"token id -1, outside"),
    (dict(response=torch.tensor([3.5, 4.0])), r"response must be a 1-D integer tensor.*float32"),
    (dict(response=np.array([1.5])), r"response must be a 1-D integer tensor.*float64"),
    (dict(response=torch.tensor([[3, 4], [5, 6]])), r"1-D integer tensor.*shape \(2, 2\)"),
    (dict(response=[True, False]), r"response token ids must be integers, got True"),
    (dict(response=[1.0, 2.0]), r"response token ids must be integers, got 1.0"),
    (dict(response=5), r"response must be a text, token ids or None"),
    (dict(response=[]), r"the response is empty"),
    (dict(max_new_tokens=0), r"max_new_tokens must be >= 1, got 0"),
    (dict(max_new_tokens=-3), r"max_new_tokens must be >= 1, got -3"),
    (dict(max_new_tokens=True), r"max_new_tokens must be an integer, got True"),
    (dict(max_new_tokens=2.5), r"max_new_tokens must be an integer, got 2.5"),
    (dict(chunk_size=0), r"chunk_size must be >= 1, got 0"),
    (dict(chunk_size=False), r"chunk_size must be an integer, got False"),
    (dict(mode="sideways"), r"mode must be one of \('auto', 'forward', 'reverse'\), got 'sideways'"),
    (dict(model_name=3), r"model_name must be a text, got 3"),
]


@pytest.mark.parametrize("kw,msg", BAD_ATTRIBUTE, ids=[m[:30] for _, m in BAD_ATTRIBUTE])
def test_attribute_refuses_bad_arguments_by_name(gpt2, unchecked, kw, msg):
    with pytest.raises(ShiftlensError, match=msg) as e:
        A.attribute(gpt2, PROMPT, **kw)
    if "model_name" not in kw:
        assert "prompt 'sort-1'" in str(e.value)  # and names the prompt


def test_attribute_and_matrix_refuse_wrong_types(gpt2, unchecked):
    with pytest.raises(ShiftlensError, match=r"model must be a TransformerBridge.*got NoneType"):
        A.attribute(None, PROMPT, " cat")
    with pytest.raises(ShiftlensError, match=r"model must be a TransformerBridge.*got str"):
        A.attribute("gpt2", PROMPT, " cat")
    with pytest.raises(ShiftlensError, match=r"prompt must be an InstructionPrompt or a text, got 3"):
        A.attribute(gpt2, 3, " cat")
    toks = torch.tensor([5, 6, 7, 8])
    for kw, msg in ((dict(tokens=toks.float(), n_prompt=2), r"tokens must be a 1-D integer tensor"),
                    (dict(tokens=toks[None], n_prompt=2), r"tokens must be a 1-D.*shape \(1, 4\)"),
                    (dict(tokens=toks + 10**6, n_prompt=2), r"tokens holds token id \d+, outside"),
                    (dict(tokens=toks, n_prompt=True), r"n_prompt must be an integer, got True"),
                    (dict(tokens=toks, n_prompt=2.0), r"n_prompt must be an integer, got 2.0"),
                    (dict(tokens=toks, n_prompt=2, input_positions=torch.tensor([0.0])),
                     r"input_positions must be a 1-D integer tensor, got a torch.float32"),
                    (dict(tokens=toks, n_prompt=2, input_positions=[0, 1]),
                     r"input_positions must be a 1-D integer tensor, got list")):
        with pytest.raises(ShiftlensError, match=msg):
            A.attribution_matrix(gpt2, **kw)


@pytest.fixture(scope="module")
def gpt2_pair(tiny_dirs):
    from shiftlens import ModelPair

    return ModelPair.from_pretrained(*tiny_dirs("gpt2"))


BAD_PAIR = [
    (A.instruction_sensitivity, dict(seed=True), r"seed must be an integer, got True"),
    (A.instruction_sensitivity, dict(seed=1.5), r"seed must be an integer, got 1.5"),
    (A.instruction_sensitivity, dict(alternative="bigger"), r"alternative must be one of"),
    (A.instruction_sensitivity, dict(levels=True), r"levels must be an integer, got True"),
    (A.instruction_sensitivity, dict(threshold=-1), r"threshold must be >= 0, got -1"),
    (A.instruction_sensitivity, dict(p=float("nan")), r"p must be finite"),
    (A.instruction_sensitivity, dict(p="4"), r"p must be a number, got '4'"),
    (A.instruction_sensitivity, dict(max_new_tokens=0), r"max_new_tokens must be >= 1, got 0"),
    (A.instruction_sensitivity, dict(response=[3]), r"responses of prompts \['sort-1'\] are "
                                                    "neither texts nor None"),
    (A.instruction_sensitivity, dict(response="mine"), r"response must be 'generate'"),
    (A.response_settings, dict(headline="best"), r"headline must be one of"),
    (A.response_settings, dict(alternative="up"), r"alternative must be one of"),
]


@pytest.mark.parametrize("fn,kw,msg", BAD_PAIR, ids=[f"{f.__name__}-{m[:20]}" for f, _, m in BAD_PAIR])
def test_pair_functions_refuse_bad_arguments_by_name(gpt2_pair, unchecked, fn, kw, msg):
    with pytest.raises(ShiftlensError, match=msg):
        fn(gpt2_pair, [PROMPT], progress=False, **kw)


def test_pair_functions_refuse_wrong_types(gpt2_pair, unchecked):
    cases = [
        (lambda: A.instruction_sensitivity(None, [PROMPT]), r"pair must be a shiftlens.ModelPair"),
        (lambda: A.instruction_sensitivity(gpt2_pair, "Sort: a b"),
         r"prompts must be a list of InstructionPrompt.*wrap text"),
        (lambda: A.instruction_sensitivity(gpt2_pair, [PROMPT, "x"]), r"prompt 1 is a str"),
        (lambda: A.response_settings(gpt2_pair, [InstructionPrompt("Do: x", instruction=["Do:"])]),
         r"no prompt has a reference response"),
        (lambda: A.accumulate_sensitivity(gpt2_pair.base, {"plan": 1}, 0, "base"),
         r"plan must be a SensitivityPlan"),
        (lambda: A.position_sensitivity(gpt2_pair, "List the animals."),
         r"items must be a list of \(instruction, context pieces\) pairs, got str"),
        (lambda: A.position_sensitivity(gpt2_pair, [("List.",)]), r"item 0 must be an"),
        (lambda: A.position_sensitivity(gpt2_pair, ITEMS, positions="start"),
         r"positions must be a non-empty list.*'start'"),
        (lambda: A.position_sensitivity(gpt2_pair, ITEMS, positions=["start", "start"]),
         r"positions repeat a placement"),
        (lambda: A.position_sensitivity(gpt2_pair, ITEMS, ids=["a@b"]), r"without '@'"),
        (lambda: A.position_sensitivity(gpt2_pair, ITEMS, responses=" cat"),
         r"responses must be one text per item, got str"),
        (lambda: A.place_instruction("Do.", "one sentence. two.", "middle"),
         r"context must be a list of pieces.*got str \(wrap a single text in a list\)"),
        (lambda: A.place_instruction(7, ["a", "b"], "start"), r"instruction must be a text, got 7"),
        (lambda: A.place_instruction("Do.", ["a", 3], "start"), r"every context piece must be"),
        (lambda: A.place_instruction("Do.", ["a"], ["start"]), r"position must be one of"),
    ]
    for call, msg in cases:
        with pytest.raises(ShiftlensError, match=msg):
            call()


def test_result_functions_refuse_bad_arguments(unchecked):
    frame = _frame([0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [""] * 3)
    res = _result(frame)
    for call, msg in (
            (lambda: A.followed_comparison(frame, {"p0": True}), r"takes a SensitivityResult, got "
                                                                  "DataFrame"),
            (lambda: A.followed_comparison(res, [("p0", True)]), r"followed must map"),
            (lambda: A.followed_comparison(res, {"p0": "yes"}), r"labels must be True or False, "
                                                                 "got 'yes' for 'p0'"),
            (lambda: A.followed_comparison(res, {"p0": True}, roles=["chat"]), r"unknown roles"),
            (lambda: A.followed_comparison(res, {"p0": True}, alternative="more"),
             r"alternative must be one of"),
            (lambda: A.followed_comparison(res, {"p0": True}, seed=False), r"seed must be an "
                                                                           "integer, got False"),
            (lambda: A.followed_by_reference(frame), r"takes a SensitivityResult"),
            (lambda: res.rescore(threshold=10), r"threshold must be <= 9, got 10"),
            (lambda: res.rescore(levels=True), r"levels must be an integer, got True"),
            (lambda: A.PositionResult.from_sensitivity(res), r"prompt id 'p0' is not "
                                                             "'<item>@<position>'"),
            (lambda: A.importance_density(torch.ones(2, 2), levels=True),
             r"levels must be a positive int, got True"),
    ):
        with pytest.raises(ShiftlensError, match=msg):
            call()
    # a single role given as a text is that role, not its letters
    fr = A.followed_comparison(res, {"p0": True, "p1": False, "p2": True}, roles="tuned")
    assert set(fr.frame["role"]) == {"tuned"}


# ====================================================================== fuzz: never another error
_ints = hs.one_of(hs.integers(-3, 6), hs.booleans(), hs.floats(-2, 5), hs.just(float("nan")),
                  hs.none(), hs.text(max_size=3))
_responses = hs.one_of(
    hs.none(), hs.text(max_size=6), hs.lists(hs.integers(-2, 600), max_size=3),
    hs.lists(hs.booleans(), max_size=2), hs.lists(hs.floats(0, 5), max_size=2),
    hs.builds(lambda v: torch.tensor(v), hs.lists(hs.integers(0, 300), min_size=1, max_size=3)),
    hs.builds(lambda v: torch.tensor(v), hs.lists(hs.floats(0, 5), min_size=1, max_size=3)),
    hs.integers(), hs.just(np.array([1, 2])))


def _mostly(valid, invalid):
    """``valid`` 4 times in 5, so that most drawn calls get past validation and run."""
    return hs.integers(0, 4).flatmap(lambda k: invalid if k == 0 else valid)


_valid_responses = hs.one_of(hs.none(), hs.text(min_size=1, max_size=6).filter(str.strip),
                             hs.lists(hs.integers(0, 255), min_size=1, max_size=3))


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(response=_mostly(_valid_responses, _responses),
       max_new_tokens=_mostly(hs.integers(1, 4), _ints), chunk_size=_mostly(hs.integers(1, 4), _ints),
       mode=_mostly(hs.sampled_from(["auto", "forward", "reverse"]),
                    hs.sampled_from(["both", 1, None])))
def test_fuzz_attribute_gives_a_result_or_a_shiftlens_error(gpt2, unchecked, response,
                                                           max_new_tokens, chunk_size, mode):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ShiftlensWarning)
        try:
            att = A.attribute(gpt2, PROMPT, response, max_new_tokens=max_new_tokens,
                              chunk_size=chunk_size, mode=mode)
        except ShiftlensError:
            return
    assert att.matrix.shape == (att.n_input, att.n_output)
    assert bool(torch.isfinite(att.matrix).all())
    assert math.isfinite(att.score()) and att.summary()["sentence"]


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(levels=_ints, threshold=_ints, p=hs.one_of(_ints, hs.floats(allow_nan=True)),
       alternative=hs.sampled_from(["two-sided", "greater", "less", "more", None]),
       seed=_ints, layout=hs.sampled_from(["input_response", "response_input", "rows"]),
       transpose=hs.booleans(), drop=hs.booleans())
def test_fuzz_from_matrices_gives_a_result_or_a_shiftlens_error(unchecked, levels, threshold, p,
                                                               alternative, seed, layout,
                                                               transpose, drop):
    g = torch.Generator().manual_seed(0)
    mats = {r: [torch.randn(4, 3, generator=g), torch.randn(5, 2, generator=g)] for r in A.ROLES}
    if transpose:
        mats["tuned"][1] = mats["tuned"][1].T
    masks = [torch.tensor([True, True, False, False]), torch.tensor([False, True, False, False,
                                                                      True])]
    if drop:
        mats["base"][0] = None
    try:
        res = A.SensitivityResult.from_matrices(mats, masks, levels=levels, threshold=threshold,
                                                p=p, alternative=alternative, seed=seed,
                                                layout=layout)
    except ShiftlensError:
        return
    s = res.summary()
    assert s["n_scored"] + len(s["excluded"]) == 2 and s["sentence"]


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(levels=_ints, threshold=_ints, p=hs.one_of(_ints, hs.floats(allow_nan=True)),
       alternative=hs.sampled_from(["two-sided", "greater", "less", "more", None]), seed=_ints,
       max_new_tokens=_ints, chunk_size=_ints, mode=hs.sampled_from(["auto", "forward", "x"]),
       response=hs.one_of(hs.sampled_from(["generate", "reference", "own"]),
                          hs.lists(hs.one_of(hs.none(), hs.text(max_size=4), hs.integers()),
                                   max_size=2)),
       position=hs.one_of(hs.sampled_from(list(A.POSITIONS) + ["top"]), hs.integers()),
       context=hs.one_of(hs.text(max_size=5), hs.lists(hs.text(max_size=4), max_size=3)))
def test_fuzz_pair_validation_gives_a_plan_or_a_shiftlens_error(gpt2_pair, unchecked, levels,
                                                                threshold, p, alternative, seed,
                                                                max_new_tokens, chunk_size, mode,
                                                                response, position, context):
    """Everything instruction_sensitivity checks before a model runs, and place_instruction."""
    try:
        plan = A.validate_sensitivity(gpt2_pair, [PROMPT], levels=levels, threshold=threshold,
                                      p=p, alternative=alternative, seed=seed,
                                      max_new_tokens=max_new_tokens, chunk_size=chunk_size,
                                      mode=mode, response=response)
        assert len(plan) == 1 and plan.params["alternative"] in A.ALTERNATIVES
    except ShiftlensError:
        pass
    try:
        pr = A.place_instruction("List the animals.", context, position)
        assert pr.text.count("List the animals.") == 1
    except ShiftlensError:
        pass


def test_no_warning_of_any_kind_in_an_attribution_run(gpt2_pair, tmp_path):
    """Warnings as errors: attribute (both modes), a pair run, the summary, the figures."""
    import matplotlib.pyplot as plt

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for mode in ("forward", "reverse"):
            att = A.attribute(gpt2_pair.tuned, PROMPT, max_new_tokens=3, mode=mode)
            plt.close(att.show(tmp_path / f"{mode}.png"))
        res = A.instruction_sensitivity(gpt2_pair, [PROMPT], max_new_tokens=3, progress=False)
        res.summary()
        plt.close(res.show(tmp_path / "sens.png"))


def test_forward_mode_is_quiet_under_w_error_in_a_fresh_process():
    """torch's jvp decompositions warn '`torch.jit.script` is deprecated' once per process, on
    the first forward-mode product; attribution keeps that one message out (and only it)."""
    import subprocess
    import sys

    code = ("import torch, warnings\n"
            "from shiftlens.lenses.attribution.core import _quiet_torch_jit\n"
            "warnings.simplefilter('error')\n"
            "with _quiet_torch_jit():\n"
            "    torch.func.jvp(lambda x: x.sin(), (torch.ones(3),), (torch.ones(3),))\n"
            "with _quiet_torch_jit():\n"
            "    try:\n"
            "        warnings.warn('other', DeprecationWarning)\n"
            "    except DeprecationWarning:\n"
            "        print('others still raise')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "others still raise"
    assert not re.search(r"jit\.script", out.stderr)
