"""Lens 3 (feed-forward concepts) on the embedded pair (shiftlens.zoo), where the shift is known:
the toy was tuned to translate into made-up "zorbish" words.
"""

from __future__ import annotations

import pytest

from shiftlens import ffn
from shiftlens.vocab import default_vocab


@pytest.fixture(scope="module")
def toy_case(toy):
    """The embedded toy pair (the session's, read-only) and a vocabulary of its grammar's words."""
    from shiftlens.zoo import grammar

    words = [w for ws in (grammar.ADJECTIVES, grammar.INPUT_WORDS, grammar.NUMBER_WORDS,
                          tuple(grammar.TRANSLATION.values()), grammar.PRONOUNS) for w in ws]
    return toy, default_vocab(toy.tokenizer, words=words), grammar


@pytest.mark.slow
def test_toy_pair_rotation_and_concept_words(toy_case):
    pair, vocab, _ = toy_case
    rot = ffn.rotation(pair, vocab=vocab, progress=False)
    df = rot.to_frame()
    assert len(df) == pair.cfg.n_layers
    assert (df["overlap"] < 1 - 1e-6).any()  # tuning changed W_out
    # the tuned top-k subspace captures the most tuned variance of any k-dim subspace (Ky Fan)
    assert (df["tuned_var_by_base"] <= df["tuned_var_by_tuned"] + 1e-9).all()
    cw = ffn.concept_words(pair.tuned, pair.cfg.n_layers - 1, k=4, top_words=8, vocab=vocab)
    assert all(len(ws) == 8 and set(ws) <= set(vocab.words) for ws in cw.words)


@pytest.mark.slow
def test_toy_pair_concepts_rotate_toward_its_translation_task(toy_case):
    """Known shift: the toy was tuned to translate into made-up 'zorbish' words. With those
    words as the translation lexicon, tuned W_out components carry translation concepts more
    often than base ones."""
    pair, vocab, grammar = toy_case
    tasks = {"tasks": {"translation": {"words": [*grammar.TRANSLATION.values()]}}}
    lex = ffn.load_lexicons(tasks=tasks)
    res = ffn.concept_shift(pair, ffn.LexiconAnnotator(lexicons=lex), k=16, top_words=15,
                            vocab=vocab, progress=False)
    tr = res.summary()["task"]["translation"]
    assert tr["tuned_mean"] > tr["base_mean"] + 0.1
    assert tr["p"] < 0.05


def test_toy_pair_from_its_checkpoint_files_equals_the_bridges(toy):
    """Issue 17: the lens read from the checkpoint files, one layer at a time, gives the
    bridge path's results bit for bit on the embedded pair."""
    from shiftlens.zoo import pair_dirs

    base, tuned = pair_dirs()
    vocab = default_vocab(toy.tokenizer, 300)
    rb = ffn.rotation(toy, 16, vocab=vocab, progress=False)
    rf = ffn.rotation((base, tuned), 16, vocab=vocab, progress=False)
    assert rb.equals(rf), rb.differences(rf)
    cb = ffn.concept_shift(toy, k=8, top_words=10, layers=[0, 3], vocab=vocab, progress=False)
    cf = ffn.concept_shift((base, tuned), k=8, top_words=10, layers=[0, 3], vocab=vocab,
                           progress=False)
    assert cb.equals(cf), cb.differences(cf)


def test_toy_base_against_itself_keeps_exactly_all_the_variance(toy):
    """Issue 15: var_retained was 1 - 6e-9 for identical models (a float32 denominator)."""
    import warnings

    from shiftlens import ModelPair, ShiftlensWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ShiftlensWarning)  # identical weights
        same = ModelPair.from_models(toy.base, toy.base)
    df = ffn.rotation(same, 32, vocab=default_vocab(toy.tokenizer, 300), n_moved=0,
                      progress=False).to_frame()
    assert (df["var_retained"] == 1.0).all() and (df["overlap"] > 1 - 1e-12).all()
