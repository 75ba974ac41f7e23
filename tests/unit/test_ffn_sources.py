"""Lens 3 from checkpoint files (issue 17): the same numbers as the bridge path, bit for bit.

``concept_shift``, ``rotation``, ``principal_components`` and ``concept_words`` take checkpoint
directories (read one layer at a time by ``shiftlens.weights.CheckpointWeights``) as well as
bridges; the results equal the bridge path exactly on GPT-2 (Conv1D W_out), Llama and Gemma 2
(post-feed-forward norm folded), and only the tensors the lens needs are read.
"""

from __future__ import annotations

import pytest
import torch

from shiftlens import ModelPair, ShiftlensError, ffn
from shiftlens.vocab import default_vocab
from shiftlens.weightfiles import SafetensorsCheckpoint


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2"])
def test_checkpoint_directories_give_the_bridge_results_exactly(arch, tiny_dirs):
    base, tuned = tiny_dirs(arch)
    pair = ModelPair.from_pretrained(base, tuned)
    vocab = default_vocab(pair.tokenizer, 300)
    k = 4
    rb = ffn.rotation(pair, k, vocab=vocab, n_moved=2, progress=False)
    rf = ffn.rotation((base, tuned), k, vocab=vocab, n_moved=2, progress=False)
    assert rb.equals(rf), rb.differences(rf)
    cb = ffn.concept_shift(pair, k=k, top_words=10, vocab=vocab, progress=False)
    cf = ffn.concept_shift({"base": base, "tuned": tuned}, k=k, top_words=10, progress=False,
                           vocab=vocab)
    assert cb.equals(cf), cb.differences(cf)
    mixed = ffn.rotation((pair.base, tuned), k, vocab=vocab, n_moved=2, progress=False)
    assert mixed.equals(rb), mixed.differences(rb)
    for layer in range(pair.cfg.n_layers):
        a = ffn.principal_components(pair.tuned, layer, k=k)
        b = ffn.principal_components(tuned, layer, k=k)
        for f in ("components", "explained_variance", "explained_variance_ratio", "mean"):
            assert torch.equal(getattr(a, f), getattr(b, f)), (layer, f)
    wa = ffn.concept_words(pair.base, 1, k=3, top_words=6, vocab=vocab)
    wb = ffn.concept_words(base, 1, k=3, top_words=6)  # default vocabulary: the dir's tokenizer
    assert wb.words == ffn.concept_words(pair.base, 1, k=3, top_words=6).words
    assert torch.equal(wa.scores, ffn.concept_words(base, 1, k=3, top_words=6, vocab=vocab).scores)


def test_from_files_only_the_needed_tensors_are_read_and_no_model_is_loaded(tiny_dirs,
                                                                           monkeypatch):
    import shiftlens.bridge

    base, tuned = tiny_dirs("llama")
    read: list[str] = []
    original = SafetensorsCheckpoint.read

    def spy(self, name):
        read.append(name)
        return original(self, name)

    def no_load(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(SafetensorsCheckpoint, "read", spy)
    monkeypatch.setattr(shiftlens.bridge, "load_bridge", no_load)
    vocab = default_vocab(ModelPair.from_pretrained(base, tuned).tokenizer, 200)
    read.clear()
    rot = ffn.rotation((base, tuned), 4, layers=[1], vocab=vocab, progress=False)
    assert rot.layers["layer"].tolist() == [1]
    # per model: layer 1's down-projection, read once (the PCA uses the read that the variance
    # shares use), and the unembedding with the final norm for the word directions
    assert set(read) == {"model.layers.1.mlp.down_proj.weight", "lm_head.weight",
                         "model.norm.weight"}
    assert read.count("model.layers.1.mlp.down_proj.weight") == 2  # base and tuned, once each


def test_incompatible_models_are_refused(tiny_dirs):
    llama, _ = tiny_dirs("llama")
    gpt2, _ = tiny_dirs("gpt2")
    with pytest.raises(ShiftlensError, match=r"rotation: incompatible pair .*(d_mlp|d_vocab)"):
        ffn.rotation((llama, gpt2), 2, progress=False)
