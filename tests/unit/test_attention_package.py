"""Lens 2 as a package: one naming of the word-pair functions (old names kept), both Results on
the Result base (round trip, meta, refused when inconsistent), the shared prompt ids, the
report section through the ReportContext protocol, and the weight view on a second device."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import torch

import shiftlens
from shiftlens import ModelPair, ShiftlensError, ShiftlensWarning
from shiftlens.checks import prompt_id
from shiftlens.lenses.attention import (
    InstructionAttentionResult,
    VerbShiftResult,
    cosine_threshold,
    instruction_attention,
    layer_word_pairs,
    model_word_pairs,
    qk_word_pairs,
    verb_shift,
    word_pairs,
    word_pairs_layer,
)
from shiftlens.lenses.registry import Finding, Section
from shiftlens.prompts import InstructionPrompt, default_prompts
from shiftlens.stats import change_sentence
from shiftlens.vocab import default_vocab

OLD_ALL = ["SegmentAttention", "segment_attention", "instruction_attention",
           "InstructionAttentionResult", "PairFilter", "BoundFilter", "CosineThreshold",
           "cosine_threshold", "EmbeddingFilter", "VectorFilter", "resolve_filter",
           "word_embeddings", "LayerPairs", "project_vocab", "layer_word_pairs", "word_pairs",
           "word_pairs_layer", "model_word_pairs", "pair_word_counts", "instruction_verbs",
           "general_verbs", "verb_shift", "VerbShiftResult"]


@pytest.fixture(scope="module")
def lpair(tiny_dirs) -> ModelPair:
    base, tuned = tiny_dirs("llama")
    return ModelPair.from_pretrained(base, tuned)


@pytest.fixture(scope="module")
def small(lpair):
    return default_vocab(lpair.tokenizer, 600)


def _prompts() -> list[InstructionPrompt]:
    ps = [p for p in default_prompts() if p.reference][:4]
    return [dataclasses.replace(ps[0], id=""), *ps[1:],
            InstructionPrompt("The weather was warm and the market was busy.")]  # no id, no spans


@pytest.fixture(scope="module")
def ia(lpair) -> InstructionAttentionResult:
    with pytest.warns(ShiftlensWarning, match="no instruction tokens"):
        return instruction_attention(lpair, _prompts(), progress=False, seed=3)


@pytest.fixture(scope="module")
def vs(lpair, small) -> VerbShiftResult:
    return verb_shift(lpair, small, instruction=["write", "explain", "list"],
                      general=["go", "make", "take", "see"], top_dims=4, top_k=20,
                      progress=False, seed=3)


# ----------------------------------------------------------------------------- names
def test_old_import_path_and_names_are_the_package_api():
    import shiftlens.attention as old
    import shiftlens.lenses.attention as lens

    assert set(OLD_ALL) <= set(old.__all__)
    for name in old.__all__:
        assert getattr(old, name) is getattr(lens, name), name
    assert layer_word_pairs is qk_word_pairs


def test_word_pairs_any_scope_gives_the_rows_of_its_heads(lpair, small):
    kw = dict(top_dims=4, top_k=20)
    every = word_pairs(lpair.base, vocab=small, progress=False, **kw)
    assert set(every.layer) == {0, 1} and set(every["head"]) == {0, 1, 2, 3}
    pd.testing.assert_frame_equal(every, model_word_pairs(lpair.base, small, progress=False,
                                                          **kw))
    some = word_pairs(lpair.base, [1, 0], [3, 1], small, **kw)  # layers sorted, heads as given
    rows = [every[(every.layer == layer) & (every["head"] == h)]
            for layer in (0, 1) for h in (3, 1)]
    pd.testing.assert_frame_equal(some, pd.concat(rows, ignore_index=True))
    one_layer = word_pairs_layer(lpair.base, 1, small, heads=[3, 1], **kw)
    pd.testing.assert_frame_equal(one_layer, some[some.layer == 1].reset_index(drop=True))
    assert one_layer.attrs["n_words"] == len(small)
    with pytest.raises(ShiftlensError, match="head 7 of layer 0 out of range"):
        word_pairs(lpair.base, None, [0, 7], small)
    with pytest.raises(ShiftlensError, match="empty list of heads"):
        word_pairs(lpair.base, 0, [], small)


# ----------------------------------------------------------------------------- results
def test_prompt_ids_are_the_shared_format(ia):
    ps = _prompts()
    assert ia.prompt_ids == [prompt_id(p, i) for i, p in enumerate(ps[:4])]
    assert ia.prompt_ids[0] == "#0" and ia.excluded == ["#4"]  # position in the given list
    per = ia.to_frame(per_prompt=True)
    assert list(per.columns[:2]) == ["id", "layer"]
    assert list(dict.fromkeys(per["id"])) == ia.prompt_ids


def test_results_round_trip_with_meta(ia, vs, lpair, small, tmp_path):
    for res in (ia, vs):
        d = res.save(tmp_path / type(res).__name__)
        back = shiftlens.load(d)
        assert type(back) is type(res) and res.equals(back), res.differences(back)
        assert back.meta["models"] == dict(lpair.names) and back.meta["seed"] == 3
        assert {"models", "seed", "params", "versions"} <= set(back.meta)
    assert (ia.query, ia.alternative, ia.seed, ia.n_layers) == ("response", "two-sided", 3, 2)
    assert ia.model_names == dict(lpair.names) and ia.summary()["models"] == ia.model_names
    assert ia.params == {"query": "response", "layers": None, "alternative": "two-sided",
                         "ci": True}
    assert vs.params["filter"] == "EmbeddingFilter(z=1.96, n_baseline=3000)"
    assert vs.params["layers"] == [0, 1] and vs.meta["general_verbs"] == ["go", "make", "take",
                                                                          "see"]
    s = vs.summary()
    missing = [w for w in vs.meta["instruction_verbs"] + vs.meta["general_verbs"]
               if w not in small.words]  # added to the vocabulary by verb_shift
    assert s["n_words"] == len(small) + len(missing) and s["seed"] == 3
    assert s["missing_verbs"] == []


def test_inconsistent_results_are_refused_on_load(ia, vs, tmp_path):
    bad = dataclasses.replace(ia, prompt_ids=ia.prompt_ids[:-1])
    d = bad.save(tmp_path / "ia")
    with pytest.raises(ShiftlensError, match="prompt ids"):
        shiftlens.load(d)
    bad = dataclasses.replace(ia, tests=ia.tests.iloc[:-1])
    with pytest.raises(ShiftlensError, match="one per head"):
        InstructionAttentionResult.load(bad.save(tmp_path / "ia2"))
    bad = dataclasses.replace(vs, counts=vs.counts.iloc[1:])
    with pytest.raises(ShiftlensError, match=r"one row per \(layer, head, verb\)"):
        shiftlens.load(bad.save(tmp_path / "vs"))
    bad = dataclasses.replace(vs, tests=vs.tests.iloc[::-1])
    with pytest.raises(ShiftlensError, match="tests has groups"):
        shiftlens.load(bad.save(tmp_path / "vs2"))


# ----------------------------------------------------------------------------- section
class _Ctx:
    """A minimal ReportContext: records what the section hands it."""

    def __init__(self, pair, prompts):
        self.pair, self.prompts, self.seed, self.progress, self.debug = pair, prompts, 0, False, True
        self.options = {"verb_words": 300, "view_heads": 2}
        self.figures: list[str] = []
        self.tables: dict[str, pd.DataFrame] = {}
        self.results: dict[str, object] = {}

    def prompts_for(self, key):
        return list(self.prompts)

    def limit_note(self, key, used):
        return f"all {used} prompts"

    def figure(self, sec, fig, name, text, *, key="", alt=""):
        import matplotlib.pyplot as plt

        assert fig.axes and name not in self.figures
        plt.close(fig)
        self.figures.append(name)
        f = Finding(text, "<img>", key)
        sec.findings.append(f)
        return f

    def csv(self, sec, frame, name):
        self.tables[name] = frame
        sec.tables.append(name)
        return name

    def save_result(self, result, name):
        self.results[name] = result

    def attempt(self, sec, what, fn):
        return fn()  # debug: failures raise


def test_section_states_the_lens_numbers(lpair):
    from shiftlens.lenses import get_lens

    prompts = [p for p in default_prompts() if p.reference][:4]
    ctx, sec = _Ctx(lpair, prompts), Section("attention", "Attention")
    get_lens("attention").run_section()(ctx, sec)
    res = instruction_attention(lpair, prompts, progress=False)
    im = res.summary()["instruction_mass"]
    key = change_sentence(
        "the share of attention that response tokens put on the instruction (mean over all "
        "heads)", im["mean_b"], im["mean_a"], p=im["pvalue"],
        test="paired t-test across prompts", ci=(im["ci_low"], im["ci_high"]), n=im["n_a"])
    assert sec.findings[0].key == key and sec.findings[0].text.startswith(key)
    assert "per layer group" in sec.findings[1].text and not sec.findings[1].key
    assert sec.findings[2].text.startswith("Word pairs encoded by the heads' Q/K weights")
    assert ctx.figures == ["head_delta", "verb_shift"]
    assert list(ctx.tables) == ["segment_mass", "head_tests", "verb_tests", "verb_fractions"]
    pd.testing.assert_frame_equal(ctx.tables["head_tests"], res.tests)
    assert set(ctx.results) == {"attention", "attention_verbs"}
    assert set(sec.summaries) == {"instruction_attention", "verb_shift"}
    assert sec.n_prompts == {"instruction_attention": 4} and len(sec.views) == 1
    assert sec.errors == []


# ----------------------------------------------------------------------------- devices
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_weight_view_on_cuda_equals_cpu(lpair, small):
    g = torch.Generator().manual_seed(0)
    E = torch.randn(300, 16, generator=g)
    W_Q, W_K = torch.randn(4, 16, 4, generator=g), torch.randn(2, 16, 4, generator=g)
    bound = cosine_threshold(E, n_baseline=100)  # CPU: indices are moved to it and back
    km = torch.tensor([0, 0, 1, 1])  # CPU index into CUDA tensors
    cpu = qk_word_pairs(E, W_Q, W_K, top_dims=3, top_k=12, pair_filter=bound, kv_map=km)
    gpu = qk_word_pairs(E.cuda(), W_Q.cuda(), W_K.cuda(), top_dims=3, top_k=12,
                        pair_filter=bound, kv_map=km)
    assert gpu.q_word.is_cuda
    for f in ("head", "dim", "q_word", "k_word"):
        assert torch.equal(getattr(cpu, f), getattr(gpu, f).cpu()), f
    a = word_pairs(lpair.base, 1, None, small, top_dims=4, top_k=20, device="cpu")
    b = word_pairs(lpair.base, 1, None, small, top_dims=4, top_k=20, device="cuda")
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-4, atol=1e-6)
