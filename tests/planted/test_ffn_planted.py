"""Lens 3 (feed-forward concepts) on planted weight edits: a rank-1 term along one word's
unembedding direction added to one layer's W_out, which the lens must find (the word tops the
first component, the layer is the most rotated, the annotated share rises).
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from shiftlens import ModelPair, ffn
from shiftlens.testing import perturbed_copy, tiny_model_dir
from shiftlens.vocab import default_vocab

PLANT_CANDIDATES = ("story", "write", "words", "list", "question", "answer", "summary", "name")


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def pair4(tmp_path_factory):
    """A 4-layer tiny Llama; tuned = base + 5% noise. Tests that edit it restore the weights."""
    root = tmp_path_factory.mktemp("ffn4")
    base = tiny_model_dir("llama", root / "base", seed=3, n_layers=4)
    tuned = perturbed_copy(base, root / "tuned", scale=0.05, seed=4)
    return ModelPair.from_pretrained(base, tuned)


@pytest.fixture(scope="module")
def vocab4(pair4):
    return default_vocab(pair4.tokenizer, 2000)


def _down_proj(model, layer):
    return model.original_model.model.layers[layer].mlp.down_proj.weight  # [d_model, d_mlp]


def _folded_word_vector(model, vocab, word):
    """Independent: gamma_final * lm_head rows, averaged over the word's tokens, unit length."""
    hf = model.original_model
    gamma = hf.model.norm.weight.detach().float()
    rows = hf.lm_head.weight.detach().float()[vocab.token_ids[vocab.words.index(word)]]
    v = (rows * gamma).mean(0)
    return v / v.norm()


@contextlib.contextmanager
def planted(model, layer, direction, strength=10.0, seed=0):
    """Add ``a u^T`` (a: random centred neuron weights) to W_out of ``layer``; restore after."""
    w = _down_proj(model, layer)
    saved = w.detach().clone()
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(w.shape[1], generator=g)
    a = a - a.mean()
    W = w.detach().T.float()
    spec = torch.linalg.matrix_norm(W - W.mean(0), ord=2)
    a = a / a.norm() * strength * spec
    with torch.no_grad():
        w.add_(torch.outer(direction.to(w.dtype), a.to(w.dtype)))
    try:
        yield
    finally:
        with torch.no_grad():
            w.copy_(saved)


def _pick_word(vocab):
    for w in PLANT_CANDIDATES:
        if w in vocab.words:
            return w
    return vocab.words[10]


# ------------------------------------------------------------------------------ planted edits


def test_planted_word_tops_first_component_and_layer_is_most_rotated(pair4, vocab4):
    layer = 2
    word = _pick_word(vocab4)
    u = _folded_word_vector(pair4.tuned, vocab4, word)
    with planted(pair4.tuned, layer, u):
        cw = ffn.concept_words(pair4.tuned, layer, k=4, top_words=5, vocab=vocab4)
        rot = ffn.rotation(pair4, k=8, vocab=vocab4, progress=False)
    assert cw.words[0][0] == word
    assert abs(float(cw.scores[0, 0])) > 0.98
    df = rot.to_frame()
    assert int(df.loc[df["overlap"].idxmin(), "layer"]) == layer
    assert int(df.loc[df["var_retained"].idxmin(), "layer"]) == layer
    assert int(df.loc[df["max_angle_deg"].idxmax(), "layer"]) == layer
    assert rot.summary()["most_rotated_layer"] == layer
    new = rot.moved.query("layer == @layer and side == 'tuned'").iloc[0]
    assert new["component"] == 0 and new["words_after"].split("|")[0] == word
    assert new["inside_other"] < 0.6
    # without the edit the planted word does not top that component
    assert ffn.concept_words(pair4.tuned, layer, k=1, top_words=1, vocab=vocab4).words[0][0] != word


def test_concept_shift_planted_concept_raises_the_tuned_share(pair4, vocab4):
    word = _pick_word(vocab4)

    class PlantSpotter:
        seeds = (0,)

        def annotate(self, words, *, seed=0):
            hit = word in words[:3]
            return ffn.Annotation("coding" if hit else "none", "semantics")

    u = _folded_word_vector(pair4.tuned, vocab4, word)
    with planted(pair4.tuned, 1, u):
        res = ffn.concept_shift(pair4, PlantSpotter(), k=8, top_words=10, vocab=vocab4,
                                progress=False)
    df = res.to_frame()
    hits = df[df["task"] == "coding"]
    assert ((hits["model"] == "tuned") & (hits["layer"] == 1) & (hits["component"] == 0)).any()
    s = res.summary()
    assert s["task"]["coding"]["tuned_mean"] > s["task"]["coding"]["base_mean"]
    assert s["task"]["coding"]["unit"] == "components"
    assert s["by_group"]["lower"]["coding"]["diff"] > 0  # layer 1 of 4 is in the lower group
