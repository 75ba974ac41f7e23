"""Lens 3 (feed-forward concepts): PCA of W_out, concept words, annotators, concept shift, rotation.

Truth comes from independent computations (scikit-learn PCA, scipy subspace angles, per-word
loops over the Hugging Face weights) and identical models, on tiny random models. The planted
weight edits are in tests/planted/test_ffn_planted.py, the embedded pair in
tests/toy/test_ffn_toy.py.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from shiftlens import ModelPair, ShiftlensError, ShiftlensWarning, ffn
from shiftlens.io import to_jsonable
from shiftlens.vocab import default_vocab
from shiftlens.weights import WordVocab, mlp_out

# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def pair2(tiny_dirs):
    """A read-only tiny Llama pair (2 layers, d_model 32, d_mlp 64)."""
    base, tuned = tiny_dirs("llama")
    return ModelPair.from_pretrained(base, tuned)


@pytest.fixture(scope="module")
def vocab2(pair2):
    return default_vocab(pair2.tokenizer, 2000)


def _folded_word_vector(model, vocab, word):
    """Independent: gamma_final * lm_head rows, averaged over the word's tokens, unit length."""
    hf = model.original_model
    gamma = hf.model.norm.weight.detach().float()
    rows = hf.lm_head.weight.detach().float()[vocab.token_ids[vocab.words.index(word)]]
    v = (rows * gamma).mean(0)
    return v / v.norm()


# ------------------------------------------------------------------------------ PCA


@pytest.mark.parametrize("method", ["gram", "svd"])
@pytest.mark.parametrize("shape", [(64, 32), (20, 48)])
def test_pca_equals_sklearn_up_to_sign(method, shape):
    sk = pytest.importorskip("sklearn.decomposition")
    g = torch.Generator().manual_seed(1)
    W = torch.randn(*shape, generator=g) * torch.linspace(2.0, 0.2, shape[1])
    k = min(shape[0] - 1, shape[1]) - 2
    pc = ffn.pca(W, k, method=method)
    ref = sk.PCA(n_components=k, svd_solver="full").fit(W.double().numpy())
    C = pc.components.double().numpy()
    R = ref.components_
    # equal up to the sign of each component
    signs = np.sign((C * R).sum(1))
    assert np.all(signs != 0)
    np.testing.assert_allclose(C * signs[:, None], R, atol=2e-5)
    np.testing.assert_allclose(pc.explained_variance_ratio.numpy(), ref.explained_variance_ratio_, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(pc.explained_variance.numpy(), ref.explained_variance_, rtol=1e-5)
    np.testing.assert_allclose(pc.mean.numpy(), ref.mean_, atol=1e-6)
    # sign convention: the largest-|.| loading of each component is positive
    big = C[np.arange(k), np.abs(C).argmax(1)]
    assert np.all(big > 0)


def test_pca_lowrank_recovers_top_components_of_a_decaying_spectrum():
    g = torch.Generator().manual_seed(2)
    U, _ = torch.linalg.qr(torch.randn(400, 60, generator=g))
    V, _ = torch.linalg.qr(torch.randn(60, 60, generator=g))
    s = 10.0 * 0.7 ** torch.arange(60.0)
    W = (U * s) @ V.T
    exact = ffn.pca(W, 5, method="svd")
    fast = ffn.pca(W, 5, method="lowrank", seed=0)
    cos = (exact.components * fast.components).sum(1).abs()
    assert torch.all(cos > 1 - 1e-5)
    torch.testing.assert_close(fast.explained_variance_ratio, exact.explained_variance_ratio, rtol=1e-4, atol=0)


def test_principal_components_of_w_out_match_sklearn(pair2):
    sk = pytest.importorskip("sklearn.decomposition")
    W = pair2.base.original_model.model.layers[1].mlp.down_proj.weight.detach().T.double().numpy()
    ref = sk.PCA(n_components=10, svd_solver="full").fit(W)
    pc = ffn.principal_components(pair2.base, 1, k=10)
    assert pc.layer == 1 and pc.components.shape == (10, 32) and pc.n_rows == 64
    C = pc.components.double().numpy()
    np.testing.assert_allclose(np.abs((C * ref.components_).sum(1)), 1.0, atol=1e-5)
    np.testing.assert_allclose(pc.explained_variance_ratio.numpy(), ref.explained_variance_ratio_, rtol=1e-5)


def test_gemma2_post_feedforward_norm_is_folded(tiny_dirs):
    base, _ = tiny_dirs("gemma2")
    from shiftlens.pair import load_bridge

    model = load_bridge(base)
    hf = model.original_model.model.layers[0]
    gain = 1.0 + hf.post_feedforward_layernorm.weight.detach().float()  # Gemma's (1 + w)
    W = hf.mlp.down_proj.weight.detach().T.float() * gain[None, :]
    expected = ffn.pca(W, 6)
    got = ffn.principal_components(model, 0, k=6)
    torch.testing.assert_close(got.components, expected.components, atol=1e-5, rtol=0)
    raw = ffn.principal_components(model, 0, k=6, fold_post_norm=False)
    assert not torch.allclose(raw.components, got.components, atol=1e-3)


@pytest.mark.slow
def test_principal_components_match_sklearn_on_every_architecture(arch, tiny_dirs):
    """W_out layout per architecture: GPT-2's Conv1D c_proj is [d_mlp, d_model], the others'
    down_proj [d_model, d_mlp]; Gemma 2 also folds its post-feed-forward norm gain."""
    sk = pytest.importorskip("sklearn.decomposition")
    from shiftlens.pair import load_bridge

    model = load_bridge(tiny_dirs(arch)[0])
    hf = model.original_model
    if arch == "gpt2":
        W = hf.transformer.h[1].mlp.c_proj.weight.detach().float()
    else:
        layer = hf.model.layers[1]
        W = layer.mlp.down_proj.weight.detach().T.float()
        if arch == "gemma2":
            W = W * (1.0 + layer.post_feedforward_layernorm.weight.detach().float())[None, :]
    ref = sk.PCA(n_components=6, svd_solver="full").fit(W.double().numpy())
    pc = ffn.principal_components(model, 1, k=6)
    C = pc.components.double().numpy()
    np.testing.assert_allclose(np.abs((C * ref.components_).sum(1)), 1.0, atol=1e-5)
    vocab = default_vocab(model.tokenizer, 500)
    cw = ffn.concept_words(model, 1, k=3, top_words=5, vocab=vocab)
    assert len(cw.words) == 3 and all(len(w) == 5 for w in cw.words)


# ------------------------------------------------------------------------------ concept words


def test_concept_words_match_per_word_loop(pair2, vocab2):
    k, t = 5, 12
    cw = ffn.concept_words(pair2.base, 0, k=k, top_words=t, vocab=vocab2)
    comps = ffn.principal_components(pair2.base, 0, k=k).components
    # independent: each word's vector from the HF lm_head and final-norm gain, one at a time
    vecs = torch.stack([_folded_word_vector(pair2.base, vocab2, w) for w in vocab2.words])
    for c in range(k):
        scores = [float(comps[c] @ vecs[i]) for i in range(len(vocab2))]
        order = sorted(range(len(scores)), key=lambda i: -abs(scores[i]))[:t]
        assert cw.words[c] == [vocab2.words[i] for i in order]
        np.testing.assert_allclose(cw.scores[c].numpy(), [scores[i] for i in order], atol=1e-5)
    df = cw.to_frame()
    assert len(df) == k and df["words"][0].split("|") == cw.words[0]
    assert (cw.scores < 0).any() and (cw.scores > 0).any()  # the sign is kept


def test_identical_models_zero_angles_overlap_one(pair2, vocab2):
    with pytest.warns(ShiftlensWarning):
        same = ModelPair.from_models(pair2.base, pair2.base)
    rot = ffn.rotation(same, k=8, vocab=vocab2, progress=False)
    assert torch.all(rot.angles.abs() < 1e-6)
    df = rot.to_frame()
    np.testing.assert_allclose(df["overlap"], 1.0, atol=1e-10)
    np.testing.assert_allclose(df["var_retained"], 1.0, atol=1e-10)
    res = ffn.concept_shift(same, k=6, top_words=15, vocab=vocab2, progress=False)
    st = res.stats()
    np.testing.assert_allclose(st["diff"].fillna(0.0), 0.0, atol=1e-12)


def test_rotation_metrics_match_scipy_and_brute_force(pair2, vocab2):
    from scipy.linalg import subspace_angles

    k = 6
    rot = ffn.rotation(pair2, k, vocab=vocab2, n_moved=2, progress=False)
    for layer in (0, 1):
        Wb, Wt = mlp_out(pair2.base, layer).double(), mlp_out(pair2.tuned, layer).double()
        Vb = ffn.pca(Wb, k).components.double()
        Vt = ffn.pca(Wt, k).components.double()
        ref = np.sort(subspace_angles(Vb.T.numpy(), Vt.T.numpy()))
        np.testing.assert_allclose(rot.angles[layer].double().numpy(), ref, atol=1e-6)
        row = rot.to_frame().iloc[layer]
        np.testing.assert_allclose(row["overlap"], np.mean(np.cos(ref) ** 2), atol=1e-6)
        # share of tuned variance in the base subspace: project every centred row
        X = Wt - Wt.mean(0)
        inside = sum(float(((Vb @ x) ** 2).sum()) for x in X)
        np.testing.assert_allclose(row["tuned_var_by_base"], inside / float((X**2).sum()), rtol=1e-6)
    assert set(rot.moved["side"]) == {"tuned", "base"} and len(rot.moved) == 2 * 2 * 2


def test_principal_angles_small_angles_are_accurate():
    e = torch.eye(4, dtype=torch.float64)
    eps = 1e-7
    B = torch.stack([e[0], e[1] * np.cos(eps) + e[2] * np.sin(eps)])
    ang = ffn.principal_angles(e[:2], B)
    np.testing.assert_allclose(ang.numpy(), [0.0, eps], atol=1e-12)


# ------------------------------------------------------------------------------ annotators


@pytest.mark.parametrize(
    ("words", "task", "level"),
    [
        (["python", "code", "function", "variable", "loop", "class", "string"], "coding", "semantics"),
        (["equation", "sum", "fraction", "seven", "percent", "divide", "angle"], "math", "semantics"),
        (["story", "poem", "novel", "chapter", "essay", "plot", "narrator"], "writing", "semantics"),
        (["french", "spanish", "translate", "der", "und", "les", "que"], "translation", "semantics"),
        (["the", "of", "and", "to", "in", "with", "for", "is"], "none", "syntax"),
        (["cat", "hat", "bat", "mat", "rat", "sat", "flat"], "none", "phonology"),
        (["kindness", "darkness", "sadness", "fitness", "goodness", "weakness"], "none", "morphology"),
        (["zxq", "qwv", "xkcdz", "fjq"], "none", "morphology"),
    ],
)
def test_lexicon_annotator_labels(words, task, level):
    ann = ffn.LexiconAnnotator().annotate(words)
    assert (ann.task, ann.level) == (task, level)
    assert ann.explainable and 0 < ann.level_confidence <= 1 and 0 <= ann.task_confidence <= 1


def test_lexicon_annotator_unexplainable_and_protocol():
    a = ffn.LexiconAnnotator()
    ann = a.annotate(["table", "purple", "however", "jump", "democracy", "violin", "seventeen"])
    assert not ann.explainable and ann.level is None and ann.task == "none"
    assert isinstance(a, ffn.Annotator)
    assert isinstance(ffn.GenerativeAnnotator(lambda p: "x"), ffn.Annotator)
    lex = ffn.load_lexicons()
    assert set(lex.tasks) == set(ffn.USER_TASKS) and all(len(v) > 100 for v in lex.tasks.values())
    with pytest.raises(ShiftlensError, match="empty word list"):
        a.annotate([])


def test_lexicon_annotator_rarely_labels_random_word_lists():
    """Null calibration: random frequent words share no concept, so few lists get a label."""
    from shiftlens.vocab import english_words

    words = english_words(5000)
    rng = np.random.default_rng(0)
    a = ffn.LexiconAnnotator()
    anns = [a.annotate([words[i] for i in rng.choice(len(words), 15, replace=False)])
            for _ in range(200)]
    assert np.mean([x.explainable for x in anns]) < 0.15
    assert np.mean([x.task != "none" for x in anns]) < 0.05


def _fake_generator(prompt: str) -> str:
    """Deterministic: describes by keyword, classifies the description."""
    if "Concept:" in prompt:
        if "python" in prompt:
            return "programming language keywords"
        if "xyz" in prompt:
            return "Cannot tell."
        return "colours and shades"
    if prompt.rstrip().endswith("Task:"):
        return "Coding; maybe writing" if "programming" in prompt else "None"
    return "Semantic" if "programming" in prompt else "Morphology (word forms)"


def test_generative_annotator_two_step_protocol():
    prompts = []

    def gen(p):
        prompts.append(p)
        return _fake_generator(p)

    a = ffn.GenerativeAnnotator(gen, seeds=(0,), top_n=3)
    ann = a.annotate(["python", "def", "class", "hidden-word"])
    assert (ann.task, ann.level, ann.explainable) == ("coding", "semantics", True)
    assert ann.task_confidence == pytest.approx(0.5)  # two tasks named: coding first
    assert ann.description == "programming language keywords"
    assert len(prompts) == 3 and "hidden-word" not in prompts[0]  # top_n words shown
    assert "programming language keywords" in prompts[1] and "python" not in prompts[1]
    assert a.annotate(["red", "blue"]).task == "none"
    cannot = a.annotate(["xyz"])
    assert not cannot.explainable and cannot.level is None


def test_generative_annotator_unknown_label_is_a_clear_error():
    a = ffn.GenerativeAnnotator(lambda p: "bananas", seeds=(0,))
    with pytest.raises(ShiftlensError, match="unknown task label.*bananas"):
        a.annotate(["a", "b"])
    b = ffn.GenerativeAnnotator(lambda p: 42, seeds=(0,))
    with pytest.raises(ShiftlensError, match="not a string"):
        b.annotate(["a"])


def test_generative_annotator_seeds_without_seed_keyword_are_reproducible():
    choices = ["programming terms", "poetry words", "cannot tell"]

    def gen(p):  # samples with torch's global RNG, as a local model would
        if "Concept:" in p:
            return choices[int(torch.randint(0, 3, ()))]
        if p.rstrip().endswith("Task:"):
            return "coding" if "programming" in p else "writing"
        return "semantics"

    a = ffn.GenerativeAnnotator(gen, seeds=range(6))
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    runs = [[a.annotate(["w"], seed=s) for s in a.seeds] for _ in range(2)]
    assert runs[0] == runs[1]  # same seed -> same answer
    assert len({r.description for r in runs[0]}) > 1  # seeds differ
    assert torch.equal(torch.rand(3), before)  # the caller's RNG state is restored


def test_generative_annotator_passes_seed_keyword():
    seen = []

    def gen(p, seed=None):
        seen.append(seed)
        return "cannot tell"

    ffn.GenerativeAnnotator(gen, seeds=(7,)).annotate(["w"], seed=7)
    assert seen == [7]


# ------------------------------------------------------------------------------ concept shift


class _SeededFake:
    """A stochastic annotator: the seed decides (deterministically) a share of 'coding'."""

    name = "seeded-fake"

    def __init__(self, seeds=(0, 1, 2, 3)):
        self.seeds = tuple(seeds)

    def annotate(self, words, *, seed=0):
        h = (sum(map(ord, "".join(words))) + 7 * seed) % 5
        task = ("coding", "none", "writing", "none", "math")[h]
        level = ffn.LEVELS[h % 4]
        return ffn.Annotation(task, level, 0.9, 0.8, h != 3, "fake")


def test_concept_shift_seeds_statistics_match_independent_computation(pair2, vocab2):
    from scipy import stats

    ann = _SeededFake()
    res = ffn.concept_shift(pair2, ann, k=8, top_words=10, vocab=vocab2, progress=False)
    df = res.to_frame()
    assert len(df) == 2 * 2 * 8 * 4  # models x layers x components x seeds
    assert set(df["group"]) == {"lower", "middle"}
    # independent: per-seed share of 'coding' among explainable concepts, all layers
    per = {}
    for role in ("base", "tuned"):
        per[role] = []
        lists = [w for layer in (0, 1) for w in
                 ffn.concept_words(pair2.models[role], layer, k=8, top_words=10, vocab=vocab2).words]
        for s in ann.seeds:
            ex = [a for a in (ann.annotate(w, seed=s) for w in lists) if a.explainable]
            per[role].append(sum(a.task == "coding" for a in ex) / len(ex))
    st = res.stats().set_index(["group", "kind", "label"]).loc[("all", "task", "coding")]
    np.testing.assert_allclose(st["base_mean"], np.mean(per["base"]))
    np.testing.assert_allclose(st["tuned_std"], np.std(per["tuned"], ddof=1))
    ref = stats.ttest_ind(per["tuned"], per["base"], equal_var=False)
    np.testing.assert_allclose(st["p"], ref.pvalue, rtol=1e-9)
    assert st["unit"] == "seeds"
    summ = res.summary()
    assert summ["task"]["coding"]["diff"] == pytest.approx(np.mean(per["tuned"]) - np.mean(per["base"]))
    assert summ["sentence"].startswith("The share of user-oriented concepts")
    uo = summ["task"]["user-oriented"]
    verb = "rose" if uo["tuned_mean"] > uo["base_mean"] else "fell"
    assert f"{verb}, not significantly," in summ["sentence"] or f"{verb} significantly" in summ["sentence"]
    assert "two-sided Welch t-test across seeds" in summ["sentence"]


def test_concept_shift_default_lexicon_and_round_trip(pair2, vocab2, tmp_path):
    res = ffn.concept_shift(pair2, layers=[1], k=6, top_words=15, vocab=vocab2, progress=False)
    assert res.params["annotator"] == "lexicon" and res.params["seeds"] == [0]
    assert set(res.to_frame()["task"]) <= set(ffn.TASKS)
    res.save(tmp_path / "cs")
    back = ffn.ConceptShiftResult.load(tmp_path / "cs")
    assert back.meta == res.meta
    assert back.to_frame().equals(res.to_frame())
    fig = back.show()
    assert len(fig.axes) == 3
    rot = ffn.rotation(pair2, 4, vocab=vocab2, progress=False)
    rot.save(tmp_path / "rot")
    rb = ffn.RotationResult.load(tmp_path / "rot")
    assert rb.to_frame().equals(rot.to_frame()) and rb.moved.equals(rot.moved)
    torch.testing.assert_close(rb.angles, rot.angles)
    assert to_jsonable(rb.summary()) == to_jsonable(rot.summary())
    assert len(rb.show().axes) >= 2


# ------------------------------------------------------------------------------ bad input


def test_k_larger_than_rank(pair2, vocab2):
    with pytest.raises(ShiftlensError, match="k=33 is larger than the rank"):
        ffn.principal_components(pair2.base, 0, k=33)  # d_model 32
    with pytest.raises(ShiftlensError, match="larger than the rank"):
        ffn.pca(torch.randn(5, 10), 5)  # 5 centred rows have rank <= 4
    low = torch.randn(40, 3) @ torch.randn(3, 16)
    with pytest.raises(ShiftlensError, match="numerical rank 3"):
        ffn.pca(low, 5)
    with pytest.raises(ShiftlensError, match="larger than the rank"):
        ffn.rotation(pair2, 40, vocab=vocab2, progress=False)
    with pytest.raises(ShiftlensError, match="larger than the rank"):
        ffn.concept_shift(pair2, k=100, vocab=vocab2, progress=False)
    with pytest.raises(ShiftlensError, match="layer 7 out of range"):
        ffn.rotation(pair2, 4, layers=[7], vocab=vocab2, progress=False)


def test_model_without_dense_mlp_names_the_architecture(pair2, monkeypatch):
    def no_w_out(self):
        raise AttributeError("this block has experts, not a dense W_out")

    monkeypatch.setattr(type(pair2.base), "W_out", property(no_w_out))
    monkeypatch.setattr(type(pair2.base.blocks[0].mlp), "W_out", property(no_w_out), raising=False)
    with pytest.raises(ShiftlensError, match=r"LlamaForCausalLM.*dense") as e:
        ffn.principal_components(pair2.base, 0)
    assert "W_out" in str(e.value)


def test_annotator_returning_unknown_label_is_a_clear_error(pair2, vocab2):
    class Poet:
        seeds = (0,)

        def annotate(self, words, *, seed=0):
            return {"task": "poetry", "level": "semantics"}

    with pytest.raises(ShiftlensError, match=r"layer 0 component 0 seed 0.*poetry"):
        ffn.concept_shift(pair2, Poet(), k=4, vocab=vocab2, progress=False)

    class BadLevel:
        seeds = (0,)

        def annotate(self, words, *, seed=0):
            return ffn.Annotation("coding", "pragmatics")

    with pytest.raises(ShiftlensError, match="unknown linguistic level 'pragmatics'"):
        ffn.concept_shift(pair2, BadLevel(), k=4, vocab=vocab2, progress=False)

    class NotAnAnnotation:
        seeds = (0,)

        def annotate(self, words, *, seed=0):
            return "coding"

    with pytest.raises(ShiftlensError, match="not an Annotation"):
        ffn.concept_shift(pair2, NotAnAnnotation(), k=4, vocab=vocab2, progress=False)
    with pytest.raises(ShiftlensError, match="no annotate"):
        ffn.concept_shift(pair2, object(), k=4, vocab=vocab2, progress=False)


def test_empty_vocabulary(pair2):
    empty = WordVocab([], [], [])
    with pytest.raises(ShiftlensError, match="empty vocabulary"):
        ffn.concept_words(pair2.base, 0, k=2, vocab=empty)
    with pytest.raises(ShiftlensError, match="empty vocabulary"):
        ffn.concept_shift(pair2, k=2, vocab=empty, progress=False)
    with pytest.raises(ShiftlensError, match="empty vocabulary"):
        ffn.rotation(pair2, 2, vocab=empty, progress=False)
    with pytest.raises(ShiftlensError, match="empty vocabulary"):
        default_vocab(pair2.tokenizer, words=["\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9"], max_tokens=1)
    with pytest.raises(ShiftlensError, match="empty vocabulary"):
        ffn.top_words(torch.eye(2), torch.zeros(0, 2))


def test_rotation_with_full_rank_k_warns(pair2, vocab2):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ShiftlensWarning)
        ffn.rotation(pair2, 4, layers=[0], vocab=vocab2, progress=False)
    with pytest.warns(ShiftlensWarning, match="whole"):
        rot = ffn.rotation(pair2, 32, layers=[0], vocab=vocab2, progress=False)
    assert torch.all(rot.angles.abs() < 1e-6)
