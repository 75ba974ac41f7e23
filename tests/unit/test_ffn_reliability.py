"""Issue 14 for lens 3 (feed-forward concepts): nothing silent.

A NaN or infinite weight (a model built or edited in memory: checkpoints are checked at load)
stops every function of the lens with a ShiftlensError naming the role, the model, the layer and
the weight, never a statistic over it and never a raw LinAlgError; undefined annotation shares
(a model, seed and layer group without any explainable concept) are recorded exclusions named
in the summary; every bad argument is a ShiftlensError naming the argument and its value.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from shiftlens import ModelPair, ShiftlensError, ffn
from shiftlens.lenses.ffn.subspaces import ComponentCache
from shiftlens.vocab import default_vocab
from shiftlens.weights import WordVocab


@pytest.fixture(scope="module")
def pair(tiny_dirs):
    """A read-only tiny Llama pair (2 layers, d_model 32, d_mlp 64)."""
    return ModelPair.from_pretrained(*tiny_dirs("llama"))


@pytest.fixture(scope="module")
def vocab(pair):
    return default_vocab(pair.tokenizer, 200)


def _down_proj(model, layer):
    return model.original_model.model.layers[layer].mlp.down_proj.weight  # [d_model, d_mlp]


# ------------------------------------------------------------------------------ broken weights
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_w_out_is_an_error_naming_role_model_layer_and_weight(llama_pair, bad):
    """One NaN (or inf) in layer 1's tuned down-projection, edited after loading."""
    pair = llama_pair
    with torch.no_grad():
        _down_proj(pair.tuned, 1)[5, 3] = bad  # W_out[neuron 3, dim 5]
    vocab = default_vocab(pair.tokenizer, 200)
    tuned = pair.names["tuned"]
    where = rf"tuned model '{tuned}' layer 1 W_out.*1 non-finite value\(s\) \(first at index \(3, 5\)"
    with pytest.raises(ShiftlensError, match=where):
        ffn.concept_shift(pair, k=4, top_words=10, vocab=vocab, progress=False)
    with pytest.raises(ShiftlensError, match=where):
        ffn.rotation(pair, 4, vocab=vocab, progress=False)
    one = rf"model '{tuned}' layer 1 W_out.*non-finite"
    with pytest.raises(ShiftlensError, match=one):
        ffn.principal_components(pair.tuned, 1, k=4)
    with pytest.raises(ShiftlensError, match=one):
        ffn.concept_words(pair.tuned, 1, k=4, vocab=vocab)
    # the same pair built in memory (from_models does not read every weight)
    same = ModelPair.from_models(pair.base, pair.tuned)
    with pytest.raises(ShiftlensError, match=where):
        ffn.rotation(same, 4, vocab=vocab, progress=False)
    # the clean layer is still readable: the user can leave the broken one out explicitly
    rot = ffn.rotation(pair, 4, layers=[0], vocab=vocab, progress=False)
    assert rot.layers["layer"].tolist() == [0] and np.isfinite(rot.layers["overlap"]).all()
    assert ffn.principal_components(pair.tuned, 0, k=4).k == 4


def test_a_non_finite_unembedding_is_an_error_naming_it(llama_pair):
    pair = llama_pair
    with torch.no_grad():
        pair.base.original_model.lm_head.weight[7, 0] = float("nan")
    vocab = default_vocab(pair.tokenizer, 200)
    base = pair.names["base"]
    where = rf"base model '{base}' unembedding W_U.*non-finite"
    with pytest.raises(ShiftlensError, match=where):
        ffn.concept_shift(pair, k=4, top_words=10, vocab=vocab, progress=False)
    with pytest.raises(ShiftlensError, match=where):
        ffn.rotation(pair, 4, vocab=vocab, progress=False)
    with pytest.raises(ShiftlensError, match=rf"model '{base}' unembedding W_U"):
        ffn.word_directions(pair.base, vocab)


def test_tensor_functions_refuse_non_finite_input_never_linalg_errors():
    nan = torch.tensor([[1.0, float("nan")], [0.0, 1.0], [2.0, 3.0]])
    with pytest.raises(ShiftlensError, match=r"layer 9: W: 1 non-finite value\(s\) \(first at index \(0, 1\)"):
        ffn.pca(nan, 1, name="layer 9")
    with pytest.raises(ShiftlensError, match="principal_angles: A: 1 non-finite"):
        ffn.principal_angles(nan[:1], torch.eye(2))
    with pytest.raises(ShiftlensError, match="explained_share: W: 1 non-finite"):
        ffn.explained_share(nan, torch.eye(2))
    with pytest.raises(ShiftlensError, match="no variance"):
        ffn.explained_share(torch.ones(4, 2), torch.eye(2))
    with pytest.raises(ShiftlensError, match="top_words: directions: 1 non-finite"):
        ffn.top_words(torch.eye(2), nan)
    v = WordVocab(["a", "b"], [[0], [1]], [])
    with pytest.raises(ShiftlensError, match="W_U: 1 non-finite"):
        ffn.normalized_word_vectors(torch.tensor([[1.0, float("inf")], [0.0, 1.0]]), v)
    with pytest.raises(ShiftlensError, match="overflows float32"):
        ffn.pca(torch.tensor([[3e38, 0.0], [-3e38, 1.0], [1e38, 2.0]]), 1)


# ------------------------------------------------------------------------------ undefined shares
class _ByModel:
    """Explainable 'coding' concepts, except every concept of the words in ``dark`` (which
    this annotator cannot explain) - a way to empty one model's layer."""

    name = "by-model"

    def __init__(self, dark, seeds=(0,), dark_seeds=None):
        self.dark = dark
        self.seeds = tuple(seeds)
        self.dark_seeds = set(self.seeds if dark_seeds is None else dark_seeds)

    def annotate(self, words, *, seed=0):
        if tuple(words) in self.dark and seed in self.dark_seeds:
            return ffn.Annotation("none", None, 1.0, 0.0, False, "cannot tell")
        h = sum(map(ord, "".join(words))) % 3
        return ffn.Annotation(("coding", "none", "writing")[h], "semantics")


def _tuned_layer_words(pair, vocab, layer, k, top):
    cw = ffn.concept_words(pair.tuned, layer, k=k, top_words=top, vocab=vocab)
    base = {tuple(w) for lyr in (0, 1) for w in
            ffn.concept_words(pair.base, lyr, k=k, top_words=top, vocab=vocab).words}
    dark = {tuple(w) for w in cw.words}
    assert not dark & base  # the tuned layer's word lists occur nowhere in the base model
    return dark


def test_a_group_without_explainable_concepts_is_a_recorded_exclusion(pair, vocab):
    """Tuned layer 1 (the 'middle' group) unexplainable for seed 1 of 3: its share is undefined,
    left out of that row and counted, and named in the summary; never averaged in as 0 or
    silently dropped."""
    dark = _tuned_layer_words(pair, vocab, 1, 6, 8)
    ann = _ByModel(dark, seeds=(0, 1, 2), dark_seeds={1})
    res = ffn.concept_shift(pair, ann, k=6, top_words=8, vocab=vocab, progress=False)
    ex = res.exclusions()
    assert ex[["model", "seed", "group", "n_components"]].to_dict("records") == [
        {"model": "tuned", "seed": 1, "group": "middle", "n_components": 6}]
    st = res.stats().set_index(["group", "kind", "label"])
    row = st.loc[("middle", "task", "coding")]
    assert (row["undefined_tuned"], row["undefined_base"]) == (1, 0)
    assert (row["n_tuned"], row["n_base"]) == (2, 3)  # the test used the two defined seeds
    # independent: the mean over the seeds whose share is defined
    df = res.to_frame()
    sub = df[(df.model == "tuned") & (df.group == "middle") & df.explainable]
    per_seed = sub.groupby("seed")["task"].apply(lambda t: (t == "coding").mean())
    assert per_seed.index.tolist() == [0, 2]
    np.testing.assert_allclose(row["tuned_mean"], per_seed.mean())
    assert st.loc[("all", "task", "coding"), "undefined_tuned"] == 0  # layer 0 is defined
    s = res.summary()
    assert s["n_excluded"] == 1 and s["excluded"][0]["seed"] == 1
    assert "Left out, 1 (model, seed, layer group) cell without any explainable concept" \
        in s["sentence"]
    assert "tuned seed 1 in the middle layers (6 concepts)" in s["sentence"]


def test_a_model_without_explainable_concepts_cannot_be_compared_and_says_why(pair, vocab):
    dark = {tuple(w) for lyr in (0, 1) for w in
            ffn.concept_words(pair.tuned, lyr, k=4, top_words=8, vocab=vocab).words}
    res = ffn.concept_shift(pair, _ByModel(dark), k=4, top_words=8, vocab=vocab, progress=False)
    s = res.summary()
    assert s["headline"].endswith("could not be compared: the tuned model has no explainable "
                                  "component (every concept 'cannot tell').")
    assert "nan" not in s["sentence"].lower()
    assert {(r["model"], r["group"]) for r in s["excluded"]} == {
        ("tuned", "all"), ("tuned", "lower"), ("tuned", "middle")}
    st = res.stats()
    tasks = st[st.kind == "task"]
    assert (tasks["undefined_tuned"] == 1).all() and (tasks["n_tuned"] == 0).all()
    assert tasks["p"].isna().all()  # no test over an empty sample
    fig = res.plot(by_group=True)  # no empty panel without a note; no p where no share
    for ax in fig.axes:
        texts = [t.get_text() for t in ax.texts]
        assert any(b.get_height() > 0 for b in ax.patches) or any("no " in t for t in texts)
        assert not any(t.startswith("p=") for t in texts)


# ------------------------------------------------------------------------------ bad arguments
class _Seeds:
    def __init__(self, seeds):
        self.seeds = seeds

    def annotate(self, words, *, seed=0):
        return ffn.Annotation("none", "syntax")


class _Raises:
    seeds = (0,)

    def annotate(self, words, *, seed=0):
        raise KeyError("no such word")


def _cases(pair, vocab):
    cs = lambda **kw: ffn.concept_shift(pair, **{"k": 2, "top_words": 5, "vocab": vocab,  # noqa: E731
                                                 "progress": False, **kw})
    rot = lambda **kw: ffn.rotation(pair, **{"k": 2, "vocab": vocab, "progress": False,  # noqa: E731
                                             **kw})
    pc = lambda **kw: ffn.principal_components(**{"model": pair.base, "layer": 0, "k": 2,  # noqa: E731
                                                 **kw})
    return [
        (lambda: rot(n_moved=-1), "n_moved must be >= 0, got -1"),
        (lambda: rot(n_moved=True), "n_moved must be an integer, got True"),
        (lambda: rot(k=True), "k must be an integer, got True"),
        (lambda: rot(k=0), "k must be >= 1, got 0"),
        (lambda: rot(k=-3), "k must be >= 1, got -3"),
        (lambda: rot(k=2.5), "k must be an integer, got 2.5"),
        (lambda: cs(k="4"), "k must be an integer, got '4'"),
        (lambda: cs(k=40), "k=40 is larger than the rank"),
        (lambda: cs(top_words=0), "top_words must be >= 1, got 0"),
        (lambda: cs(top_words=True), "top_words must be an integer, got True"),
        (lambda: rot(top_words=1.5), "top_words must be an integer, got 1.5"),
        (lambda: rot(layers=[5]), "layer 5 out of range"),
        (lambda: rot(layers=[-1]), "layer -1 out of range"),
        (lambda: rot(layers=[True]), "layer True out of range"),
        (lambda: rot(layers="0"), "layers must be a list"),
        (lambda: rot(layers=[]), "empty list of layers"),
        (lambda: rot(layers=True), "layers must be a list of layer indices or None, got True"),
        (lambda: cs(layers=1.0), "layers must be a list of layer indices or None, got 1.0"),
        (lambda: rot(method="qr"), "method must be one of"),
        (lambda: rot(device="banana"), "device 'banana' cannot be used"),
        (lambda: cs(device=3), "device must be a string or torch.device, got 3"),
        (lambda: rot(seed=-1), "seed must be >= 0, got -1"),
        (lambda: rot(seed=1.5), "seed must be an integer, got 1.5"),
        (lambda: rot(progress="yes"), "progress must be True or False, got 'yes'"),
        (lambda: cs(cache={}), "cache must be a ComponentCache or None, got dict"),
        (lambda: cs(alternative="bigger"), "alternative must be one of"),
        (lambda: cs(vocab=["a"]), "expected a shiftlens.weights.WordVocab, got list"),
        (lambda: rot(vocab=WordVocab([], [], [])), "empty vocabulary"),
        (lambda: cs(annotator=object()), "has no annotate"),
        (lambda: cs(annotator=_Seeds(5)), "seeds must be a sequence of integers, got 5"),
        (lambda: cs(annotator=_Seeds((-1,))), "seed must be >= 0, got -1"),
        (lambda: cs(annotator=_Seeds((0, 0))), r"repeated seeds \[0, 0\]"),
        (lambda: cs(annotator=_Seeds(())), "has no seeds"),
        (lambda: cs(annotator=_Raises()),
         "layer 0 component 0 seed 0: the annotator raised KeyError"),
        (lambda: ffn.rotation(None, 2), "pair must be a shiftlens.ModelPair or"),
        (lambda: ffn.rotation((pair.base,), 2), "pair must be a shiftlens.ModelPair or"),
        (lambda: ffn.rotation((pair.base, "/nonexistent/dir"), 2, vocab=vocab),
         "is not a Hugging Face model directory"),
        (lambda: pc(model=42), "model must be a TransformerBridge, a checkpoint directory"),
        (lambda: pc(fold_post_norm="yes"), "fold_post_norm must be True or False, got 'yes'"),
        (lambda: pc(seed=-2), "seed must be >= 0, got -2"),
        (lambda: pc(layer=2), "layer 2 out of range"),
        (lambda: pc(layer=np.float64(0)), r"layer .*0\.0.* out of range: a layer is an integer index"),
        (lambda: ffn.concept_words(pair.base, 0, k=2, vocab=vocab, directions="x"),
         "directions must be a 2-D floating-point tensor, got str"),
        (lambda: ffn.concept_words(pair.base, 0, k=2, vocab=vocab, directions=torch.ones(3, 32)),
         r"directions of shape \[3, 32\] for \d+ words x d_model=32"),
        (lambda: ffn.top_words(torch.eye(2), torch.eye(3)), "components have d=2, directions d=3"),
        (lambda: ffn.top_words(torch.eye(2), torch.eye(2), n=True), "n must be an integer"),
        (lambda: ffn.pca([[1.0, 2.0]], 1), "W must be a 2-D floating-point tensor, got list"),
        (lambda: ffn.pca(torch.ones(4), 1), "W must be a 2-D floating-point tensor, got a 1-D"),
        (lambda: ffn.pca(torch.randn(8, 3), 1, seed=-1), "seed must be >= 0"),
        (lambda: ffn.pca(torch.randn(8, 3), 1, device="nowhere"), "device 'nowhere' cannot be used"),
        (lambda: ffn.pca(torch.randn(8, 3), 2).head(3), "k must be <= 2, got 3"),
        (lambda: ffn.principal_angles(torch.eye(3), torch.eye(2)),
         r"need \[k, d\] and \[m, d\]"),
        (lambda: ffn.explained_share(torch.randn(5, 3), torch.eye(2)), "the same width d"),
        (lambda: ffn.GenerativeAnnotator(lambda p: "x", seeds=[-1]), "seed must be >= 0"),
        (lambda: ffn.LexiconAnnotator().annotate("python code"), "words must be a list of strings"),
        (lambda: ffn.LexiconAnnotator().annotate(["python", 3]), "words must be a list of strings"),
        (lambda: ffn.LexiconAnnotator().annotate(None), "words must be a list of strings"),
        (lambda: ffn.ConceptShiftResult.stats(cs_result(pair, vocab), "bigger"),
         "alternative must be one of"),
    ]


def cs_result(pair, vocab):
    return ffn.concept_shift(pair, k=2, top_words=5, vocab=vocab, progress=False)


def test_bad_arguments_name_the_argument_and_value(pair, vocab, unchecked):
    for fn, match in _cases(pair, vocab):
        with pytest.raises(ShiftlensError, match=match):
            fn()


# ------------------------------------------------------------------------------ fuzz
_any = st.one_of(st.none(), st.booleans(), st.integers(-3, 40), st.floats(-2, 40),
                 st.text(max_size=3), st.just([0]), st.just([1, 0]), st.just([2]))
_VALID = {
    "k": st.one_of(st.none(), st.integers(1, 12)), "top_words": st.integers(1, 20),
    "n_moved": st.integers(0, 5), "layers": st.sampled_from([None, [0], [1], [1, 0], 1]),
    "seed": st.integers(0, 9), "method": st.sampled_from(["auto", "gram", "svd", "lowrank"]),
    "alternative": st.sampled_from(["two-sided", "greater", "less"]),
    "device": st.sampled_from([None, "cpu", torch.device("cpu")]),
}
_BAD = {**dict.fromkeys(_VALID, _any),
        "method": st.one_of(_any, st.just("qr")),
        "alternative": st.one_of(_any, st.just("both")),
        "device": st.one_of(_any, st.sampled_from(["cuda:99", "gpu", "meta:0"]))}


def _draw(data, names, bad, **valid):
    """Valid values for every argument but ``bad`` (None: all valid; "all": none valid)."""
    ok = {**_VALID, **valid}
    return {n: data.draw(_BAD[n] if bad in (n, "all") else ok[n], label=n) for n in names}


_FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])
_ROT = ("k", "top_words", "n_moved", "layers", "seed", "method", "device")
_CS = ("k", "top_words", "layers", "method", "alternative", "device")


@_FUZZ
@given(data=st.data(), bad=st.sampled_from([None, "all", *_ROT]))
def test_fuzz_rotation_error_or_valid_result(pair, vocab, unchecked, data, bad):
    """ShiftlensError or a valid result (it validates, its summary has a finite sentence),
    never another exception."""
    kw = _draw(data, _ROT, bad)
    try:
        rot = ffn.rotation(pair, vocab=vocab, progress=False, **kw)
    except ShiftlensError:
        event("ShiftlensError")
        return
    event("valid result")
    rot.validate()
    s = rot.summary()["sentence"]
    assert "nan" not in s.lower() and bool(torch.isfinite(rot.angles).all())


@settings(_FUZZ, max_examples=25)  # each valid example annotates and bootstraps (~1 s)
@given(data=st.data(), bad=st.sampled_from([None, "all", *_CS]))
def test_fuzz_concept_shift_error_or_valid_result(pair, vocab, unchecked, data, bad):
    kw = _draw(data, _CS, bad, k=st.integers(1, 6))  # annotating 32 components is slow
    try:
        res = ffn.concept_shift(pair, vocab=vocab, progress=False, **kw)
    except ShiftlensError:
        event("ShiftlensError")
        return
    event("valid result")
    res.validate()
    s = res.summary()
    assert isinstance(s["sentence"], str) and "nan" not in s["sentence"].lower()


def test_component_cache_serves_smaller_k_bitwise(pair):
    """The report's shared cache: a smaller k from a cached larger one is bitwise the direct
    computation (exact solvers); nothing is computed twice."""
    cache = ComponentCache()
    big = cache.components(pair.base, 1, 12)
    small = cache.components(pair.base, 1, 5)
    ref = ffn.principal_components(pair.base, 1, k=5)
    assert (cache.hits, cache.misses) == (1, 1) and big.k == 12
    for f in ("components", "explained_variance", "explained_variance_ratio", "mean"):
        assert torch.equal(getattr(small, f), getattr(ref, f)), f
    assert cache.components(pair.base, 1, 20).k == 20 and cache.misses == 2  # larger: computed
    low = [cache.components(pair.base, 1, 5, method="lowrank", seed=s) for s in (0, 0, 1)]
    assert low[0] is low[1] and cache.misses == 4  # randomized: cached per (k, seed)
    cache.clear()
    assert len(cache) == 0
