"""shiftlens.viz: offline circuitsvis HTML and static figures, checked against independent numbers."""

from __future__ import annotations

import base64
import html
import io
import json
import re

import numpy as np
import pandas as pd
import pytest
import torch

from shiftlens import InstructionPrompt, ShiftlensError
from shiftlens.viz import (
    Visualization,
    attention_patterns,
    circuitsvis_js,
    concept_table,
    figure_html,
    importance_tokens,
    label_models,
    lens_figure,
    props_json,
    pyplot,
    save_figure,
    token_rows,
    token_strings,
)

PROMPT = InstructionPrompt(
    "Sort the words in alphabetical order.\nInput: pear apple fig\nAnswer:",
    instruction=["Sort the words in alphabetical order."],
    context=["pear apple fig"],
    reference=" apple fig pear",
    id="sort-1",
    category="rewriting",
)


def _unescape(s: str) -> object:
    return json.loads(s.replace("<\\/", "</").replace("<\\!--", "<!--"))


def _script_bodies(html: str) -> list[str]:
    return re.findall(r"<script>(.*?)</script>", html, flags=re.S)


# ----------------------------------------------------------------------------- HTML machinery
def test_props_json_escapes_script_end_and_nan():
    props = {"tokens": ["</script>", "<!-- x", "a"], "values": torch.tensor([0.5, float("nan"), 1.0]),
             "skip": None, "n": np.int64(3)}
    s = props_json(props)
    assert "</" not in s and "<!--" not in s
    assert _unescape(s) == {"tokens": ["</script>", "<!-- x", "a"], "values": [0.5, None, 1.0], "n": 3}


def test_page_is_self_contained_with_one_bundle():
    vis = Visualization("two components")
    vis.add_component("ColoredTokens", {"tokens": ["</s>", "b"], "values": [0.1, 0.9]})
    vis.add_component("ColoredTokens", {"tokens": ["c"], "values": [1.0]})
    page = vis.to_html()
    bundle = circuitsvis_js()
    assert page.count(bundle) == 1  # inlined once, not once per component
    assert page.count("CircuitsVis.render(") == 2
    # nothing is fetched: no external script/style/link, no CDN import
    assert not re.search(r"""(src|href)\s*=\s*["']?https?:""", page)
    assert "unpkg.com" not in page and "import " not in page.split(bundle)[1]
    # the token "</s>" cannot close a script early: every <script> closes where it should
    bodies = _script_bodies(page)
    assert len(bodies) == 2 and bodies[0].strip().startswith('"use strict"')
    # the render calls carry the props exactly
    calls = re.findall(r"CircuitsVis\.ColoredTokens,(\{.*?\})\);", bodies[1])
    assert [_unescape(c)["tokens"] for c in calls] == [["</s>", "b"], ["c"]]


def test_repr_html_inlines_bundle_and_divs_match_calls():
    vis = token_rows(["a", "b", "c"], {"x": [0.0, 0.5, 1.0], "y": [-1.0, 0.0, 1.0]}, diverging=["y"])
    frag = vis._repr_html_()
    assert circuitsvis_js() in frag
    ids = re.findall(r'<div id="(sl-cv-[0-9a-f]+)" class="sl-cv sl-circuitsvis"', frag)
    called = re.findall(r'var id="(sl-cv-[0-9a-f]+)"', frag)
    assert len(ids) == 2 and ids == called
    (_, px), (_, py) = vis.components
    assert px["minValue"] == 0.0 and px["maxValue"] == 1.0
    assert py["minValue"] == -1.0 and py["maxValue"] == 1.0 and py["negativeColor"] == "blue"


def test_token_rows_rejects_bad_lengths():
    with pytest.raises(ShiftlensError, match="series 'x' has 2 values for 3 tokens"):
        token_rows(["a", "b", "c"], {"x": [1.0, 2.0]})
    with pytest.raises(ShiftlensError, match="no value series"):
        token_rows(["a"], {})
    with pytest.raises(ShiftlensError, match="segment codes"):
        token_rows(["a", "b"], {"x": [1.0, 2.0]}, segments=[0])


def test_token_rows_show_invisible_tokens_visibly():
    """Issue 15.5: a newline token is no blank label, a NUL or zero-width space no empty box."""
    toks = ["<bos>", "\n", "a\x00", "\u200b", " ", ""]
    vis = token_rows(toks, {"x": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]}, segments=[0, 1, 1, 2, 3, 3])
    (_, props), = vis.components
    # ColoredTokens gets HTML: escaped, with every character printable
    assert props["tokens"] == ["&lt;bos&gt;", "\u23ce", "a\\x00", "\\u200b", "\u2423", "\u2205"]
    page = vis._repr_html_()
    spans = re.findall(r'<span class="sl-tok sl-seg-\w+" title="\w+">(.*?)</span>', page)
    assert spans == ["&lt;bos&gt;", "\u23ce", "a\\x00", "\\u200b", "\u2423", "\u2205"]
    assert "\x00" not in page and "\u200b" not in page
    assert vis.data["tokens"] == toks  # the data keeps the token strings themselves


def test_save_requires_html_suffix(tmp_path):
    vis = token_rows(["a"], {"x": [1.0]})
    with pytest.raises(ShiftlensError, match="html"):
        vis.save(tmp_path / "v.png")
    p = vis.save(tmp_path / "sub" / "v.html")
    assert p.read_text().startswith("<!DOCTYPE html>")


def test_render_call_reports_missing_bundle():
    # without the bundle the guard writes an error into the div instead of leaving it blank
    frag = token_rows(["a"], {"x": [1.0]}).fragment(include_js=False)
    assert "circuitsvis bundle not loaded" in frag and circuitsvis_js()[:50] not in frag


# ----------------------------------------------------------------------------- tokens
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_token_strings_reassemble_the_text(arch, tiny_dirs):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dirs(arch)[0])
    text = "Write a short poem about   the sea.\nThen stop."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    parts = token_strings(tok, ids)
    assert len(parts) == len(ids)
    assert "".join(parts) == tok.decode(ids, clean_up_tokenization_spaces=False)
    assert any(p.startswith(" ") for p in parts[1:])  # word-initial spaces kept (Metaspace too)


# ----------------------------------------------------------------------------- attention patterns
def _independent_pattern(model, tokens: torch.Tensor, layer: int) -> torch.Tensor:
    got = {}

    def grab(x, hook=None):
        got["p"] = x.detach().clone()

    with torch.no_grad(), model.hooks(fwd_hooks=[(f"blocks.{layer}.attn.hook_pattern", grab)]):
        model(tokens[None], return_type="logits")
    return got["p"][0]


def test_attention_patterns_match_an_independent_forward_pass(llama_pair):
    pair = llama_pair
    vis = attention_patterns(pair, PROMPT, layers=[1], heads=[0, 2])
    tp = pair.tokenize(PROMPT, response=PROMPT.reference)
    comps = vis.components
    assert [c for c, _ in comps] == ["AttentionHeads"] * 3  # base, tuned, difference
    want = {role: _independent_pattern(m, tp.tokens, 1)[[0, 2]] for role, m in pair}
    for (_, props), role in zip(comps[:2], ("base", "tuned")):
        shown = torch.tensor(props["attention"] if not isinstance(props["attention"], torch.Tensor)
                             else props["attention"].tolist())
        assert shown.shape == (2, len(tp.tokens), len(tp.tokens))
        torch.testing.assert_close(shown, want[role], atol=1e-5, rtol=0)
        assert props["attentionHeadNames"] == ["L1H0", "L1H2"]
    diff = torch.as_tensor(comps[2][1]["attention"])
    torch.testing.assert_close(diff, want["tuned"] - want["base"], atol=1e-5, rtol=0)
    assert comps[2][1]["minValue"] == -comps[2][1]["maxValue"]
    assert len(vis.data["tokens"]) == len(tp.tokens)
    assert "".join(vis.data["tokens"][1:]).strip() == (PROMPT.text + PROMPT.reference).strip()
    # the views label a newline token with a visible mark, never a blank
    raw = vis.data["tokens"]
    nl = [i for i, t in enumerate(raw) if "\n" in t]
    assert nl and all("\n" not in t for _, p in comps for t in p["tokens"])
    assert all("\u23ce" in comps[0][1]["tokens"][i] for i in nl)


def test_attention_patterns_prompt_only_and_errors(llama_pair):
    vis = attention_patterns(llama_pair, PROMPT, layers=0, response=False, difference=False)
    n = int(llama_pair.tokenize(PROMPT).tokens.shape[0])
    (_, b), (_, t) = vis.components
    assert torch.as_tensor(b["attention"]).shape == (4, n, n)
    with pytest.raises(ShiftlensError, match="layer 2 out of range"):
        attention_patterns(llama_pair, PROMPT, layers=[2])
    with pytest.raises(ShiftlensError, match="head 4 out of range"):
        attention_patterns(llama_pair, PROMPT, layers=[0], heads=[4])
    with pytest.raises(ShiftlensError, match="response is empty"):
        attention_patterns(llama_pair, PROMPT, layers=[0], response="  ")


def test_attention_patterns_every_architecture(pair):
    vis = attention_patterns(pair, PROMPT, layers=[0], response=False, difference=False)
    n = int(pair.tokenize(PROMPT).tokens.shape[0])
    assert len(vis.data["tokens"]) == n
    for _, props in vis.components:
        a = torch.as_tensor(props["attention"], dtype=torch.float64)
        assert a.shape == (pair.cfg.n_heads, n, n)
        torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:2], dtype=a.dtype), atol=1e-4,
                                   rtol=0)  # softmax rows
        assert float(torch.triu(a, diagonal=1).abs().max()) == 0.0  # causal


# ----------------------------------------------------------------------------- importance tokens
def test_importance_tokens_shows_each_models_density(llama_pair):
    attribute = pytest.importorskip("shiftlens.attribution").attribute

    ab = attribute(llama_pair.base, PROMPT, " apple fig", model_name="base")
    at = attribute(llama_pair.tuned, PROMPT, " apple fig", model_name="tuned")
    vis = importance_tokens(ab, at, tokenizer=llama_pair.tokenizer)
    comps = vis.components
    assert [c for c, _ in comps] == ["ColoredTokens"] * 3
    vals = [torch.as_tensor(p["values"], dtype=torch.float64) for _, p in comps]
    torch.testing.assert_close(vals[0], ab.density().double(), atol=1e-5, rtol=0)
    torch.testing.assert_close(vals[1], at.density().double(), atol=1e-5, rtol=0)
    torch.testing.assert_close(vals[2], (at.density() - ab.density()).double(), atol=1e-5, rtol=0)
    assert comps[2][1]["minValue"] == -comps[2][1]["maxValue"]
    assert len(comps[0][1]["tokens"]) == ab.n_input
    assert vis.data["scores"]["base"] == pytest.approx(ab.score())
    other = attribute(llama_pair.tuned, InstructionPrompt("Count: a b", instruction=["Count:"]), " 2")
    with pytest.raises(ShiftlensError, match="different prompt tokens"):
        importance_tokens(ab, other)


# ----------------------------------------------------------------------------- concept table
def _concepts_frame() -> pd.DataFrame:
    rows = []
    for role, words in (("base", ["cat", "dog", "cow"]), ("tuned", ["code", "loop", "bug"])):
        for c in range(3):
            rows.append(dict(model=role, layer=2, component=c, seed=0,
                             explained_variance_ratio=0.1 * (3 - c), task="none", level="semantics",
                             explainable=c != 2, words="|".join(w + str(c) for w in words),
                             scores="+0.500|-0.250|+0.100"))
    return pd.DataFrame(rows)


def test_concept_table_from_frame():
    vis = concept_table(_concepts_frame(), n_components=2, n_words=2)
    frag = vis.fragment()
    assert vis.components == []  # plain HTML, no JavaScript needed
    cells = re.findall(r'<span class="sl-word"[^>]*>([^<]+)</span>', frag)
    assert cells == ["cat0", "dog0", "code0", "loop0", "cat1", "dog1", "code1", "loop1"]
    assert "title=\"+0.500\"" in frag and "rgba(31,119,180" in frag  # negative score in blue
    assert "30.0% of variance" in frag and "layer 2" in vis.title
    three = concept_table(_concepts_frame(), n_components=3).fragment()
    assert three.count("not explainable") == 2


def test_concept_table_errors():
    df = pd.concat([_concepts_frame(), _concepts_frame().assign(layer=3)])
    with pytest.raises(ShiftlensError, match="pass layer="):
        concept_table(df)
    with pytest.raises(ShiftlensError, match="layer 7 is not in"):
        concept_table(df, layer=7)
    with pytest.raises(ShiftlensError, match="lacks columns"):
        concept_table(pd.DataFrame({"layer": [0]}))
    with pytest.raises(ShiftlensError, match="expected ConceptWords"):
        concept_table(42)


def test_concept_table_from_concept_words(llama_pair):
    from shiftlens.ffn import concept_words

    cws = [concept_words(m, 1, k=3, top_words=6) for _, m in llama_pair]
    vis = concept_table(tuple(cws), n_components=3, n_words=4)
    cells = re.findall(r'<span class="sl-word"[^>]*>([^<]+)</span>', vis.fragment())
    want = [html.escape(w) for c in range(3) for cw in cws for w in cw.words[c][:4]]
    assert cells == want
    assert list(vis.data["roles"]) == ["base", "tuned"]


# ----------------------------------------------------------------------------- figures
def test_instruction_score_figure_bars_are_group_means():
    from shiftlens.lenses.attribution.plots import instruction_score_figure

    df = pd.DataFrame({"prompt_id": list("abcdef"), "category": list("xxxyyy"),
                       "base_score": [0.1, 0.2, 0.3, 0.5, 0.4, 0.6],
                       "tuned_score": [0.4, 0.6, 0.5, 0.5, 0.7, 0.9]})
    fig = instruction_score_figure(df, {"base": "B-model", "tuned": "T-model"})
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]
    want_base = [0.2, 0.5, 0.35]  # x, y, all
    want_tuned = [0.5, 0.7, 0.6]
    np.testing.assert_allclose(heights, want_base + want_tuned, atol=1e-12)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["x", "y", "all"]
    assert ax.get_ylabel() and ax.get_xlabel()
    texts = " ".join(t.get_text() for t in fig.texts) + " ".join(
        t.get_text() for t in ax.get_legend().get_texts())
    assert "B-model" in texts and "T-model" in texts
    long = df.melt(id_vars=["prompt_id", "category"], value_vars=["base_score", "tuned_score"],
                   var_name="role", value_name="score")
    long["role"] = long["role"].str.replace("_score", "")
    fig2 = instruction_score_figure(long)
    np.testing.assert_allclose([p.get_height() for p in fig2.axes[0].patches], heights)
    with pytest.raises(ShiftlensError, match="expected columns"):
        instruction_score_figure(pd.DataFrame({"x": [1.0]}))
    pyplot().close("all")


def test_save_and_embed_figures(tmp_path):
    from PIL import Image

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1], [1, 0])
    label_models(fig, {"base": "m0", "tuned": "m1"})
    label_models(fig, {"base": "m0", "tuned": "m1"})
    assert sum("m0" in t.get_text() for t in fig.texts) == 1
    paths = save_figure(fig, tmp_path / "figs" / "f")
    assert [p.name for p in paths] == ["f.png", "f.svg"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = paths[1].read_text()
    assert "<svg" in svg and "m0" in svg
    img = figure_html(fig)
    raw = base64.b64decode(img.split("base64,")[1].split('"')[0])
    assert Image.open(io.BytesIO(raw)).size[0] > 100
    assert figure_html(fig, "svg").startswith("<svg")
    with pytest.raises(ShiftlensError, match="format"):
        figure_html(fig, "gif")
    with pytest.raises(ShiftlensError, match="unknown figure format"):
        save_figure(fig, tmp_path / "g", ["bmp"])
    with pytest.raises(ShiftlensError, match="no show"):
        lens_figure(object())
    plt.close(fig)


@pytest.mark.parametrize("name", ["shiftlens.viz", "shiftlens.viz.html", "shiftlens.viz.circuits",
                                  "shiftlens.viz.style"])
def test_docstring_examples(name):
    import doctest
    import importlib

    res = doctest.testmod(importlib.import_module(name),
                          optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert res.attempted > 0 and res.failed == 0
    pyplot().close("all")


def test_lens_figure_names_the_models_and_moved_figures_still_import():
    class Fake:
        model_names = {"base": "B0", "tuned": "T0"}

        def show(self):
            fig, ax = pyplot().subplots()
            ax.plot([0, 1])
            return fig

    fig = lens_figure(Fake())
    assert any("B0" in t.get_text() and "T0" in t.get_text() for t in fig.texts)
    import shiftlens.viz as viz
    from shiftlens.lenses.ffn.plots import rotation_figure

    with pytest.warns(DeprecationWarning, match="moved to shiftlens.lenses.ffn.plots"):
        assert viz.rotation_figure is rotation_figure
    pyplot().close("all")
