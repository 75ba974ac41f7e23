"""Issue 14 for lens 2 (attention), nothing silent: a NaN in a model built or edited in memory
reaches no statistic silently (a ShiftlensError naming model, layer, head, prompt or word, or a
recorded exclusion shown in the summary), every bad argument of a public function is a
ShiftlensError naming it, and a fuzz test of the parameters finds no other exception."""

from __future__ import annotations

import dataclasses
import re
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shiftlens
from shiftlens import ModelPair, ShiftlensError, ShiftlensWarning
from shiftlens.lenses.attention import (
    EmbeddingFilter,
    InstructionAttentionResult,
    VectorFilter,
    cosine_threshold,
    drop_nonfinite,
    head_tests,
    instruction_attention,
    model_word_pairs,
    pair_diff,
    pair_word_counts,
    qk_score,
    qk_scores,
    qk_word_pairs,
    segment_attention,
    top_pairs,
    verb_shift,
    word_pairs,
    word_pairs_layer,
)
from shiftlens.lenses.attention.units import INSTRUCTION_ATTENTION_UNITS as UNITS
from shiftlens.prompts import SEGMENTS, InstructionPrompt, default_prompts
from shiftlens.vocab import default_vocab

VERBS = {"instruction": ["write", "explain", "list"], "general": ["go", "make", "take", "see"]}
SMALL = {"top_dims": 4, "top_k": 20}


def _prompts(n: int = 4) -> list[InstructionPrompt]:
    return [p for p in default_prompts() if p.reference][:n]


def _fresh(tiny_dirs) -> ModelPair:
    return ModelPair.from_pretrained(*tiny_dirs("llama"))


@pytest.fixture(scope="module")
def clean(tiny_dirs) -> ModelPair:
    """An untouched tiny Llama pair (read-only): the truth the edited pairs are compared with."""
    return _fresh(tiny_dirs)


@pytest.fixture(scope="module")
def vocab(clean):
    return default_vocab(clean.tokenizer, 300)


def _hf(model):
    return model.original_model.model


def _nan(param: torch.nn.Parameter, index) -> None:
    with torch.no_grad():
        param[index] = float("nan")


def _units(pair, prompts):
    plan = UNITS.plan(pair, prompts)
    recs = {(i, r): UNITS.compute(plan, r, getattr(pair, r), p, i)
            for i, p in enumerate(prompts) for r in UNITS.roles}
    return UNITS.assemble(plan, prompts, recs)


# ----------------------------------------------------------------------------- activations
def test_nan_in_a_tuned_down_proj_is_named_never_averaged(tiny_dirs, clean, vocab):
    """The issue's probe: one NaN in a tuned MLP down-projection. In the 2-layer tiny Llama the
    layer-0 MLP feeds layer 1's attention, so every prompt's layer-1 mass is NaN in tuned."""
    pair = _fresh(tiny_dirs)
    _nan(_hf(pair.tuned).layers[0].mlp.down_proj.weight, (0, 0))
    ps = _prompts()
    tuned = pair.names["tuned"]
    with pytest.raises(ShiftlensError) as e:
        instruction_attention(pair, ps, progress=False)
    msg = str(e.value)
    assert msg.startswith("instruction_attention: non-finite attention mass for 4 of 4 prompts")
    assert f"First: tuned model {tuned!r}, prompt {ps[0].id!r}, layer 1." in msg
    assert "No prompt is left to compare" in msg and "base model" not in msg
    with pytest.raises(ShiftlensError, match=re.escape(f"First: model {tuned!r}, prompt "
                                                       f"{ps[0].id!r}, layer 1")):
        segment_attention(pair.tuned, ps, progress=False)
    with pytest.raises(ShiftlensError, match="non-finite attention mass for 4 of 4 prompts"):
        _units(pair, ps)
    # what is non-finite, exactly: layer 1 of every prompt, every head; layer 0 untouched
    sa = segment_attention(pair.tuned, ps, progress=False, nonfinite="keep")
    assert torch.isnan(sa.mass[:, 1]).all() and torch.isfinite(sa.mass[:, 0]).all()
    cells = sa.nonfinite("tuned")
    assert cells[["id", "layer", "heads"]].values.tolist() == [[p.id, 1, 4] for p in ps]
    assert segment_attention(pair.base, ps, progress=False).nonfinite().empty
    # the weight view reads W_E, W_Q, W_K and the attention norm only: its results are those
    # of the untouched pair, exactly
    pd.testing.assert_frame_equal(word_pairs(pair.tuned, None, None, vocab, progress=False, **SMALL),
                                  word_pairs(clean.tuned, None, None, vocab, progress=False, **SMALL))
    pd.testing.assert_frame_equal(top_pairs(pair.tuned, 1, None, vocab, k=5),
                                  top_pairs(clean.tuned, 1, None, vocab, k=5))
    pd.testing.assert_frame_equal(pair_diff(pair, 1, [0, 2], vocab, k=5, progress=False),
                                  pair_diff(clean, 1, [0, 2], vocab, k=5, progress=False))
    a = verb_shift(pair, vocab, progress=False, **VERBS, **SMALL)
    b = verb_shift(clean, vocab, progress=False, **VERBS, **SMALL)
    assert a.differences(b) == []


def _unique_token(pair, prompts, j):
    """A token of prompt j's instruction that no other prompt (nor its response) contains."""
    toks = [pair.tokenize(p, response=p.reference).tokens.tolist() for p in prompts]
    others = {t for i, ts in enumerate(toks) if i != j for t in ts}
    tp = pair.tokenize(prompts[j], response=prompts[j].reference)
    ins = tp.tokens[tp.mask("instruction")].tolist()
    return next(t for t in ins if t not in others)


def test_one_prompt_with_nonfinite_attention_is_excluded_and_recorded(tiny_dirs, clean, tmp_path):
    """A NaN embedding row for a token only prompt 2 contains: that prompt's attention is NaN in
    tuned (layers 0 and 1), every other prompt's is exactly that of the untouched pair. The
    prompt is excluded, recorded, counted in the summary; every statistic equals the untouched
    pair's on the other prompts (never a statistic over silently dropped values)."""
    ps = _prompts(5)
    pair = _fresh(tiny_dirs)
    tok = _unique_token(pair, ps, 2)
    _nan(_hf(pair.tuned).embed_tokens.weight, tok)
    with pytest.warns(ShiftlensWarning, match=r"1 of 5 prompts excluded from every average and "
                                               rf"test: .*prompt {re.escape(repr(ps[2].id))} "
                                               r"\(layers 0, 1\)"):
        res = instruction_attention(pair, ps, progress=False)
    rest = ps[:2] + ps[3:]
    want = instruction_attention(clean, rest, progress=False)
    assert res.prompt_ids == [p.id for p in rest] and res.n_prompts == 4
    torch.testing.assert_close(res.mass, want.mass, atol=1e-6, rtol=1e-5)
    pd.testing.assert_frame_equal(res.tests, want.tests, atol=1e-6, rtol=1e-5)
    assert res.nonfinite.to_dict("records") == [
        {"id": ps[2].id, "role": "tuned", "model": pair.names["tuned"], "layer": layer,
         "heads": 4} for layer in (0, 1)]
    s = res.summary()
    assert s["n_nonfinite"] == 1 and s["n_prompts"] == 4
    assert (f"Excluded from every average and test: 1 prompt whose attention mass was "
            f"non-finite (tuned model {pair.names['tuned']!r}: prompt {ps[2].id!r} (layers 0, "
            f"1)); 4 prompts used.") in s["sentence"]
    got, ref = s["instruction_mass"], want.summary()["instruction_mass"]
    assert got["n_a"] == ref["n_a"] == 4
    assert [got[k] for k in ("mean_b", "mean_a", "pvalue")] == pytest.approx(
        [ref[k] for k in ("mean_b", "mean_a", "pvalue")], rel=1e-5, abs=1e-7)
    # saved and loaded with its record; the runner's units exclude the same prompt
    back = shiftlens.load(res.save(tmp_path / "r"))
    assert back.differences(res) == [] and back.summary()["sentence"] == s["sentence"]
    with pytest.warns(ShiftlensWarning, match="1 of 5 prompts excluded"):
        assert _units(pair, ps).differences(res) == []


def test_weight_view_refuses_nonfinite_weights(tiny_dirs, clean, vocab):
    pair = _fresh(tiny_dirs)
    tuned = re.escape(repr(pair.names["tuned"]))
    d_head = pair.cfg.d_model // pair.cfg.n_heads
    _nan(_hf(pair.tuned).layers[1].self_attn.q_proj.weight, (2 * d_head + 1, 3))  # head 2's W_Q
    w1, w2 = [w for w in vocab.words if w != "the"][:2]
    where = f"{tuned}: layer 1: the folded W_Q of head 2 holds non-finite values"
    for call in (lambda: word_pairs(pair.tuned, 1, 2, vocab),
                 lambda: word_pairs(pair.tuned, 1, None, vocab),
                 lambda: model_word_pairs(pair.tuned, vocab, progress=False),
                 lambda: top_pairs(pair.tuned, 1, [0, 2], vocab),
                 lambda: qk_score(pair.tuned, 1, 2, w1, w2, vocab),
                 lambda: pair_diff(pair, 1, 2, vocab, progress=False),
                 lambda: verb_shift(pair, vocab, progress=False, **VERBS, **SMALL)):
        with pytest.raises(ShiftlensError, match=where):
            call()
    # heads that do not read the NaN give the untouched pair's rows
    pd.testing.assert_frame_equal(word_pairs(pair.tuned, 1, [0, 3], vocab),
                                  word_pairs(clean.tuned, 1, [0, 3], vocab))
    # a key head: both query heads of its group are named
    pair = _fresh(tiny_dirs)
    _nan(_hf(pair.tuned).layers[0].self_attn.k_proj.weight, (d_head, 0))  # KV head 1
    with pytest.raises(ShiftlensError, match="layer 0: the folded W_K of heads 2, 3 holds non-finite"):
        word_pairs(pair.tuned, 0, None, vocab)
    # the attention-input norm is folded into every head of its layer
    pair = _fresh(tiny_dirs)
    _nan(_hf(pair.tuned).layers[1].input_layernorm.weight, 0)
    with pytest.raises(ShiftlensError, match="layer 1: the folded W_Q of heads 0, 1, 2, 3"):
        word_pairs(pair.tuned, 1, None, vocab)
    # a NaN token embedding: the words built from it are named, in every weight-view function
    pair = _fresh(tiny_dirs)
    the = vocab.words.index("the")
    _nan(_hf(pair.tuned).embed_tokens.weight, vocab.token_ids[the][0])
    tid = vocab.token_ids[the][0]
    n = sum(tid in ids for ids in vocab.token_ids)  # "the" and the words that start with it
    assert n > 1
    emb = (f"{tuned}: the input embedding is non-finite for \\d+ of \\d+ vocabulary words: "
           f"'the' \\(token ids \\[{tid}\\]\\)")
    for call in (lambda: word_pairs(pair.tuned, 0, 0, vocab),
                 lambda: top_pairs(pair.tuned, 0, 0, vocab),
                 lambda: pair_diff(pair, 0, 0, vocab, progress=False),
                 lambda: verb_shift(pair, vocab, progress=False, **VERBS, **SMALL)):
        with pytest.raises(ShiftlensError, match=emb):
            call()
    with pytest.raises(ShiftlensError, match=f"non-finite for {n} of {len(vocab)} vocabulary "
                                             "words: 'the'"):
        word_pairs(pair.tuned, 0, 0, vocab)
    with pytest.raises(ShiftlensError, match="non-finite for 1 of 2 vocabulary words: 'the'"):
        qk_score(pair.tuned, 0, 0, "the", w1, vocab)
    assert np.isfinite(qk_score(pair.tuned, 0, 0, w1, w2, vocab))


def test_tests_and_results_refuse_nonfinite_masses(clean, tmp_path):
    m = torch.rand(2, 4, 1, 2, len(SEGMENTS))
    m[1, 2, 0, 1, 3] = float("nan")
    with pytest.raises(ShiftlensError, match=r"head_tests: mass holds 1 non-finite values \(first: "
                                             r"tuned, prompt 2, layer 7, head 1\)"):
        head_tests(m, [7])
    res = instruction_attention(clean, _prompts(3), progress=False)
    bad = dataclasses.replace(res, mass=res.mass.clone())
    bad.mass[0, 1, 1, 2, 0] = float("inf")
    with pytest.raises(ShiftlensError, match=rf"mass holds 1 non-finite values \(first: base, "
                                             rf"prompt {res.prompt_ids[1]!r}, layer 1, head 2\)"):
        shiftlens.load(bad.save(tmp_path / "bad"))


def test_drop_nonfinite_counts_prompts_not_ids():
    """Two prompts may share an id: the exclusion goes by position, the record by id."""
    m = torch.rand(2, 3, 1, 2, len(SEGMENTS))
    m[0, 1, 0, 0, 0] = float("nan")
    names = {"base": "B", "tuned": "T"}
    with pytest.warns(ShiftlensWarning, match="1 of 3 prompts excluded"):
        mass, ids, used, cells = drop_nonfinite(m, ["a", "a", "b"], [False, True, False], [4],
                                                names)
    assert ids == ["a", "b"] and used == [False, False]
    torch.testing.assert_close(mass, m[:, [0, 2]])
    assert cells.to_dict("records") == [{"id": "a", "role": "base", "model": "B", "layer": 4,
                                         "heads": 1}]
    m[1, :, 0, 1, 2] = float("inf")
    with pytest.raises(ShiftlensError, match="for 3 of 3 prompts: base model 'B': prompt 'a' "
                                             r"\(layer 4\); tuned model 'T': prompt 'a' \(layer 4\), "
                                             r"prompt 'b' \(layer 4\)\..*No prompt is left"):
        drop_nonfinite(m, ["a", "a", "b"], [False] * 3, [4], names)


def test_filters_refuse_nonfinite_vectors():
    V = torch.randn(6, 4)
    V[3, 1] = float("nan")
    with pytest.raises(ShiftlensError, match=r"1 word vectors hold NaN .*first rows \[3\]"):
        cosine_threshold(V)
    with pytest.raises(ShiftlensError, match=r"the vectors of 1 words hold NaN .*\['d'\]"):
        VectorFilter({w: V[i].tolist() for i, w in enumerate("abcdef")})
    with pytest.raises(ShiftlensError, match="qk_word_pairs: W_Q: 1 non-finite"):
        W = torch.randn(2, 4, 3)
        W[1, 0, 2] = float("inf")
        qk_word_pairs(torch.randn(6, 4), W, torch.randn(2, 4, 3))


# ----------------------------------------------------------------------------- bad arguments
def _bad_calls(pair, vocab):
    """(what, call, the message it must give): every public function, every kind of bad value."""
    m, ps = pair.base, _prompts(2)
    E, W = torch.randn(30, 32), torch.randn(4, 32, 8)
    return [
        ("layer=True", lambda: word_pairs(m, True, 0, vocab), "layer must be a layer index.*True"),
        ("head=True", lambda: word_pairs(m, 0, True, vocab), "head must be a head index.*True"),
        ("head=[True]", lambda: word_pairs(m, 0, [True], vocab), "head True of layer 0"),
        ("layer=1.0", lambda: word_pairs(m, 1.0, 0, vocab), "layer must be .*1.0"),
        ("layer='0'", lambda: word_pairs(m, "0", 0, vocab), "layer must be .*'0'"),
        ("layer=5", lambda: word_pairs(m, 5, 0, vocab), "layer 5 out of range"),
        ("head=-1", lambda: word_pairs(m, 0, -1, vocab), "head -1 of layer 0 out of range"),
        ("top_k=True", lambda: word_pairs(m, 0, 0, vocab, top_k=True), "top_k must be an integer"),
        ("top_k=0", lambda: word_pairs(m, 0, 0, vocab, top_k=0), "top_k must be >= 1, got 0"),
        ("top_k=2.5", lambda: word_pairs(m, 0, 0, vocab, top_k=2.5), "top_k .* got 2.5"),
        ("top_dims=0", lambda: word_pairs(m, 0, 0, vocab, top_dims=0), "top_dims must be >= 1"),
        ("top_dims=True", lambda: word_pairs(m, 0, 0, vocab, top_dims=True), "top_dims .*True"),
        ("filter=3", lambda: word_pairs(m, 0, 0, vocab, filter=3), "filter int has no bind"),
        ("filter='glove'", lambda: word_pairs(m, 0, 0, vocab, filter="glove"), "unknown filter"),
        ("bound_filter=3", lambda: word_pairs(m, 0, 0, vocab, bound_filter=3), "bound_filter"),
        ("filter answers badly", lambda: word_pairs(
            m, 0, 0, vocab, bound_filter=lambda q, k: True), "the pair filter answered"),
        ("exclude_self='no'", lambda: word_pairs(m, 0, 0, vocab, exclude_self="no"),
         "exclude_self must be True or False, got 'no'"),
        ("fold_norm=None", lambda: word_pairs(m, 0, 0, vocab, fold_norm=None), "fold_norm"),
        ("progress=1", lambda: word_pairs(m, 0, 0, vocab, progress=1), "progress must be True"),
        ("device='nodev'", lambda: word_pairs(m, 0, 0, vocab, device="nodev"),
         "device 'nodev' cannot be used"),
        ("vocab=list", lambda: word_pairs(m, 0, 0, ["the"]), "expected a shiftlens.weights"),
        ("model=pair", lambda: word_pairs(pair, 0, 0, vocab), "pass pair.base or pair.tuned"),
        ("word_pairs_layer(True)", lambda: word_pairs_layer(m, True, vocab), "layer True"),
        ("EmbeddingFilter(n_baseline=1)", lambda: EmbeddingFilter(n_baseline=1),
         "n_baseline must be >= 2, got 1"),
        ("EmbeddingFilter(z=True)", lambda: EmbeddingFilter(z=True), "z must be a number"),
        ("cosine_threshold(n_baseline=0)", lambda: cosine_threshold(E, n_baseline=0),
         "n_baseline must be >= 2"),
        ("VectorFilter ragged", lambda: VectorFilter({"a": [1.0, 2.0], "b": [1.0]}),
         "2 numeric vectors of equal length"),
        ("VectorFilter(3)", lambda: VectorFilter(3), "vectors must be"),
        ("qk_word_pairs shapes", lambda: qk_word_pairs(E, torch.randn(4, 31, 8), W),
         "d_model differs"),
        ("qk_word_pairs kv_map", lambda: qk_word_pairs(E, W, W, kv_map=torch.tensor([0, 9, 0, 0])),
         "kv_map points outside"),
        ("qk_word_pairs 3 kv", lambda: qk_word_pairs(E, W, torch.randn(3, 32, 8)),
         "4 query heads cannot share 3 key heads"),
        ("top_pairs k=0", lambda: top_pairs(m, 0, 0, vocab, k=0), "k must be >= 1, got 0"),
        ("top_pairs k=True", lambda: top_pairs(m, 0, 0, vocab, k=True), "k must be an integer"),
        ("top_pairs head=True", lambda: top_pairs(m, 0, True, vocab), "head must be"),
        ("pair_diff(model)", lambda: pair_diff(m, 0, 0, vocab), "pair must be a shiftlens.ModelPair"),
        ("pair_diff k=-1", lambda: pair_diff(pair, 0, 0, vocab, k=-1), "k must be >= 1"),
        ("qk_scores layers", lambda: qk_scores(m, [0, 1], 0, "the", "a"), "one layer and one head"),
        ("qk_scores word", lambda: qk_scores(m, 0, 0, "the", "qqqqzz", vocab),
         r"\['qqqqzz'\] not in the vocabulary"),
        ("qk_scores int words", lambda: qk_scores(m, 0, 0, [1], ["the"]), "q_words must hold"),
        ("qk_score list", lambda: qk_score(m, 0, 0, ["the"], "a"), "q_word must be one word"),
        ("ia batch_size=0", lambda: instruction_attention(pair, ps, batch_size=0, progress=False),
         "batch_size must be >= 1, got 0"),
        ("ia seed=True", lambda: instruction_attention(pair, ps, seed=True), "seed must be an int"),
        ("ia ci='yes'", lambda: instruction_attention(pair, ps, ci="yes"), "ci must be True"),
        ("ia layers=True", lambda: instruction_attention(pair, ps, layers=True), "layers must be"),
        ("ia layers=[]", lambda: instruction_attention(pair, ps, layers=[]), "empty list"),
        ("ia alternative", lambda: instruction_attention(pair, ps, alternative="up"),
         "alternative must be one of"),
        ("ia query", lambda: instruction_attention(pair, ps, query=1), "query must be one of"),
        ("ia prompts=str", lambda: instruction_attention(pair, "Write"), "wrap text"),
        ("ia pair=model", lambda: instruction_attention(m, ps), "pair must be a shiftlens"),
        ("sa nonfinite", lambda: segment_attention(m, ps, nonfinite="drop"),
         "nonfinite must be one of"),
        ("sa batch_size", lambda: segment_attention(m, ps, batch_size=True), "batch_size"),
        ("head_tests shape", lambda: head_tests(torch.rand(2, 3, 1, 2), [0]),
         "mass must be a float tensor"),
        ("head_tests layers", lambda: head_tests(torch.rand(2, 3, 1, 2, 5), [0, 1]),
         "layers must list the 1 layer"),
        ("head_tests ci", lambda: head_tests(torch.rand(2, 3, 1, 2, 5), [0], ci=None), "ci must"),
        ("vs n_words=True", lambda: verb_shift(pair, None, n_words=True), "n_words must be an int"),
        ("vs top_k=0", lambda: verb_shift(pair, vocab, top_k=0), "top_k must be >= 1"),
        ("vs group_names=()", lambda: verb_shift(pair, vocab, group_names=()), "group_names"),
        ("vs group_names='abc'", lambda: verb_shift(pair, vocab, group_names="abc"),
         "group_names must be a list of words, got 'abc'"),
        ("vs group_names dup", lambda: verb_shift(pair, vocab, group_names=("a", "a")),
         "distinct"),
        ("vs instruction='write'", lambda: verb_shift(pair, vocab, instruction="write"),
         r"instruction must be a list of words, got 'write' \(write \['write'\]\)"),
        ("vs general=[1]", lambda: verb_shift(pair, vocab, general=[1]), "general must hold str"),
        ("vs min_dims=0", lambda: verb_shift(pair, vocab, min_dims=0), "min_dims must be >= 1"),
        ("vs keep_pairs", lambda: verb_shift(pair, vocab, keep_pairs="no"), "keep_pairs must"),
        ("vs filter", lambda: verb_shift(pair, vocab, filter=3), "filter int has no bind"),
        ("vs pair", lambda: verb_shift(m, vocab), "pair must be a shiftlens.ModelPair"),
        ("counts(list)", lambda: pair_word_counts([1, 2]), "pairs must be a DataFrame"),
        ("counts(words=str)", lambda: pair_word_counts(pd.DataFrame(
            columns=["layer", "head", "dim", "q_word", "k_word"]), "write"), "words must be a list"),
        ("counts columns", lambda: pair_word_counts(pd.DataFrame({"layer": [0]})),
         "lacks the columns"),
    ]


def test_every_bad_argument_is_a_named_error(clean, vocab, unchecked):
    failures = []
    for what, call, match in _bad_calls(clean, vocab):
        try:
            call()
        except ShiftlensError as e:
            if not re.search(match, str(e)):
                failures.append(f"{what}: message {str(e)!r} lacks {match!r}")
        except Exception as e:  # noqa: BLE001 - the point: nothing but ShiftlensError
            failures.append(f"{what}: {type(e).__name__}: {e}")
        else:
            failures.append(f"{what}: no error")
    assert failures == []


# ----------------------------------------------------------------------------- fuzz
ANY = st.one_of(st.none(), st.booleans(), st.integers(-3, 9),
                st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=3),
                st.lists(st.integers(-2, 5), max_size=3))
FUZZ = settings(max_examples=30, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


def _mostly(valid: st.SearchStrategy) -> st.SearchStrategy:
    """A valid value five times in six, anything at all otherwise (so that most examples reach
    the computation with one or two bad arguments)."""
    return st.integers(0, 5).flatmap(lambda i: ANY if i == 0 else valid)


def _returns_or_names(call, check):
    try:
        out = call()
    except ShiftlensError:
        return
    check(out)


LAYER = _mostly(st.sampled_from([None, 0, 1, [1, 0], [0]]))
HEAD = _mostly(st.sampled_from([None, 0, 3, [2, 1]]))
FLAG = _mostly(st.booleans())


@FUZZ
@given(layer=LAYER, head=HEAD, top_dims=_mostly(st.none() | st.integers(1, 12)),
       top_k=_mostly(st.integers(1, 40)), exclude_self=FLAG,
       filt=_mostly(st.sampled_from(["embedding", None, "none"])))
def test_fuzz_word_pairs(clean, vocab, unchecked, layer, head, top_dims, top_k, exclude_self,
                         filt):
    def check(df):
        assert isinstance(df, pd.DataFrame) and {"layer", "head", "score"} <= set(df.columns)
        assert (df.score > 0).all() and np.isfinite(df.score).all()
        c = df.attrs["counts"]
        assert c["candidates"] == c["self"] + c["opposite_sign"] + c["unrelated"] + c["kept"]
        assert c["kept"] == len(df)

    _returns_or_names(lambda: word_pairs(clean.base, layer, head, vocab, top_dims=top_dims,
                                         top_k=top_k, exclude_self=exclude_self, filter=filt,
                                         progress=False), check)


@FUZZ
@given(layer=LAYER, head=HEAD, k=_mostly(st.integers(1, 30)), exclude_self=FLAG,
       filt=_mostly(st.sampled_from(["embedding", None])))
def test_fuzz_full_scores(clean, vocab, unchecked, layer, head, k, exclude_self, filt):
    def check(df):
        assert isinstance(df, pd.DataFrame) and np.isfinite(df.delta).all()
        assert ((df.change == "gained") == (df.delta > 0)).all()
        assert df.groupby(["layer", "head", "change"]).size().max() <= k

    _returns_or_names(lambda: pair_diff(clean, layer, head, vocab, k=k, exclude_self=exclude_self,
                                        filter=filt, progress=False), check)


@FUZZ
@given(query=_mostly(st.sampled_from(["response", "last"])), layers=LAYER,
       batch_size=_mostly(st.integers(1, 4)),
       alternative=_mostly(st.sampled_from(["two-sided", "greater", "less"])), ci=FLAG,
       seed=_mostly(st.integers(0, 2**31)))
def test_fuzz_instruction_attention(clean, unchecked, query, layers, batch_size, alternative, ci,
                                    seed):
    def check(res):
        assert isinstance(res, InstructionAttentionResult)
        res.validate()
        assert isinstance(res.summary()["sentence"], str) and torch.isfinite(res.mass).all()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ShiftlensWarning)
        _returns_or_names(lambda: instruction_attention(
            clean, _prompts(2), query, layers=layers, batch_size=batch_size,
            alternative=alternative, ci=ci, seed=seed, progress=False), check)
