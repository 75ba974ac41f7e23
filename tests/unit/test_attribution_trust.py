"""Issue 15 (a report a researcher can trust) and issue 16 (bring your own attributions) for
lens 1 (attribution), on tiny random models and hand-built results.

Known truths: scipy's two-sided Welch/paired tests; hand-made scores with a clear drop (the
sentence must say "fell significantly", not "not significant"); a byte-level tokenizer's raw
``Ġ``/``Ċ`` entries (never shown to people); the matrices ``instruction_sensitivity`` stores
(fed back through ``SensitivityResult.from_matrices`` they give its Result exactly).
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as st

from shiftlens import ShiftlensError, ShiftlensWarning
from shiftlens import attribution as A
from shiftlens.generate import DEFAULT_MAX_NEW_TOKENS
from shiftlens.pair import load_bridge
from shiftlens.prompts import InstructionPrompt
from shiftlens.result import make_meta
from shiftlens.viz.style import layout_problems, pyplot

PROMPTS = [
    InstructionPrompt("Sort the words: red cat dog\nResponse:", instruction=["Sort the words:"],
                      context=["red cat dog"], id="sort-1", category="sort",
                      reference=" cat dog red"),
    InstructionPrompt("Reverse: blue fish\nResponse:", instruction=["Reverse:"], id="rev-1",
                      category="reverse", reference=" fish blue"),
    InstructionPrompt("Count the words: a b c\nResponse:", instruction=["Count the words:"],
                      id="count-1", category="count", reference=" 3"),
    InstructionPrompt("just some words here\nResponse:", id="noins", category="count",
                      reference=" ok"),
]


def _hand(base, tuned, *, alternative=None, resp=(" a", " a"), n_resp=(3, 3)):
    n = len(base)
    frame = pd.DataFrame({
        "id": [f"p{i}" for i in range(n)], "category": ["c"] * n, "n_input": 3,
        "n_instruction": 1, "base_score": base, "tuned_score": tuned,
        "base_n_response": n_resp[0], "tuned_n_response": n_resp[1], "base_response": resp[0],
        "tuned_response": resp[1], "base_mean_prob": 0.5, "tuned_mean_prob": 0.5,
        "base_mode": "reverse", "tuned_mode": "reverse", "reference": " a", "note": "",
    })
    params = {"levels": 10, "threshold": 7, "p": 4,
              "response": "reference" if resp[0] == resp[1] else "generate"}
    if alternative:
        params["alternative"] = alternative
    return A.SensitivityResult(frame, {"base": [None] * n, "tuned": [None] * n},
                               [torch.tensor([True, False, False])] * n,
                               make_meta(models={"base": "b", "tuned": "t"}, seed=0,
                                         params=params))


# ====================================================================== item 1: two-sided
def test_a_clear_drop_reads_fell_significantly_two_sided():
    """The issue's first finding: base 0.476 -> tuned 0.117 read 'one-sided ... p = 1 ... not
    significant'. Two-sided by default, the same numbers read 'fell significantly'."""
    rng = np.random.default_rng(1)
    b, t = rng.normal(0.476, 0.08, 28), rng.normal(0.117, 0.08, 28)
    res = _hand(b, t)
    s = res.summary()
    ref = st.ttest_ind(t, b, equal_var=False)
    assert s["alternative"] == "two-sided" and s["overall"]["alternative"] == "two-sided"
    assert s["overall"]["pvalue"] == pytest.approx(ref.pvalue) and ref.pvalue < 1e-10
    assert "fell significantly from" in s["sentence"]
    assert "two-sided Welch t-test p = " in s["sentence"]
    assert "not significant" not in s["sentence"] and "one-sided" not in s["sentence"]
    fig = res.plot()
    title = fig.axes[0].get_title()
    pyplot().close(fig)
    assert "two-sided Welch t-test" in title and "one-sided" not in title
    # the report section words the finding the same way
    from shiftlens.lenses.attribution.section import _finding_text

    text, key = _finding_text(s)
    assert "fell significantly" in key and "two-sided Welch t-test across prompts" in key
    assert key.startswith("With the same reference response for both models, the instruction")


def test_one_sided_only_when_asked_and_then_named():
    rng = np.random.default_rng(1)
    b, t = rng.normal(0.476, 0.08, 28), rng.normal(0.117, 0.08, 28)
    s = _hand(b, t, alternative="greater").summary()
    assert s["overall"]["pvalue"] == pytest.approx(
        st.ttest_ind(t, b, equal_var=False, alternative="greater").pvalue)
    assert "one-sided (tuned > base) Welch t-test" in s["sentence"]
    assert "looked for the opposite direction" in s["sentence"]  # not "not significant"
    s = _hand(b, t, alternative="less").summary()
    assert "fell significantly" in s["sentence"] and "one-sided (tuned < base)" in s["sentence"]


def test_followed_and_position_tests_are_two_sided_by_default():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"id": [f"p{i}" for i in range(12)], "category": "c",
                          "role": ["tuned"] * 12, "score": rng.normal(0.5, 0.1, 12),
                          "followed": [i % 2 == 0 for i in range(12)]})
    frame.loc[frame["followed"], "score"] -= 0.3
    fr = A.FollowedResult(frame, 0, make_meta(models={"base": "b", "tuned": "t"}, seed=0))
    s = fr.summary()
    f, u = frame.loc[frame["followed"], "score"], frame.loc[~frame["followed"], "score"]
    assert s["pooled"]["pvalue"] == pytest.approx(st.ttest_ind(f, u, equal_var=False).pvalue)
    assert "significantly lower than unfollowed ones" in s["sentence"]
    assert "two-sided Welch t-test" in s["sentence"]
    fig = fr.plot()
    assert "two-sided" in fig.axes[0].get_title()
    pyplot().close(fig)
    one = A.FollowedResult(frame, 0, make_meta(seed=0, params={"alternative": "greater"}))
    assert "one-sided (>) Welch t-test" in one.summary()["sentence"]
    rows = [{"item": f"i{k}", "id": f"i{k}@{pos}", "position": pos, "role": role,
             "score": float(rng.normal(0.5, 0.1)) + (0.2 if role == "tuned" else 0),
             "n_input": 5, "n_instruction": 2, "n_response": 1, "response": " x", "note": ""}
            for k in range(6) for pos in A.POSITIONS for role in A.ROLES]
    pr = A.PositionResult(pd.DataFrame(rows), make_meta(models={"base": "b", "tuned": "t"},
                                                        seed=0))
    s = pr.summary()
    df = pd.DataFrame(rows)
    w = df.pivot_table(index=["item"], columns=["role", "position"], values="score")
    ref = st.ttest_rel(w[("tuned", "start")], w[("base", "start")])
    assert s["tuned_vs_base"]["start"]["pvalue"] == pytest.approx(ref.pvalue)
    assert s["tuned_vs_base"]["start"]["alternative"] == "two-sided"
    assert set(s["edges_vs_middle"]["base"]) == {"start-middle", "end-middle"}
    assert "two-sided paired t-tests" in s["sentence"]


# ====================================================================== item 2: both settings
@pytest.fixture(scope="module")
def llama_pair_ro(tiny_dirs):
    from shiftlens import ModelPair

    return ModelPair.from_pretrained(*tiny_dirs("llama"))


@pytest.fixture(scope="module")
def settings(llama_pair_ro):
    with pytest.warns(ShiftlensWarning):  # 'noins' scores NaN (no instruction span)
        return A.response_settings(llama_pair_ro, PROMPTS + [InstructionPrompt(
            "Do it: x\nResponse:", instruction=["Do it:"], id="noref")], max_new_tokens=3,
            progress=False)


def test_both_settings_side_by_side_with_lengths(settings, llama_pair_ro, tmp_path):
    rs = settings
    # each setting is exactly instruction_sensitivity on the prompts with a reference
    with pytest.warns(ShiftlensWarning):
        ref = A.instruction_sensitivity(llama_pair_ro, PROMPTS, response="reference",
                                        max_new_tokens=3, progress=False)
        own = A.instruction_sensitivity(llama_pair_ro, PROMPTS, max_new_tokens=3, progress=False)
    assert rs.reference.equals(ref), rs.reference.differences(ref)
    assert rs.own.equals(own), rs.own.differences(own)
    s = rs.summary()
    assert s["headline"] == "reference" and s["left_out"] == ["noref"]
    lengths = s["response_lengths"]
    assert lengths["own"] == own.response_lengths() and lengths["reference"]["base"] == \
        lengths["reference"]["tuned"]
    # one sentence shows both numbers, both lengths, which one leads and why
    for setting in ("reference", "own"):
        o = s[setting]["overall"]
        assert f"from {o['mean_b']:.3f} (base) to {o['mean_a']:.3f} (tuned)" in s["sentence"]
        ln = lengths[setting]
        assert f"base {ln['base']:.1f}, tuned {ln['tuned']:.1f} tokens" in s["sentence"]
    assert "the paper's setting, Wu et al. §3" in s["sentence"]
    assert "The headline holds the response fixed" in s["sentence"]
    assert "1 prompts without a reference response are left out of both settings (noref)" in \
        s["sentence"]
    assert s["sentence"].index("same reference response") < s["sentence"].index("own greedy")
    frame = rs.to_frame()
    assert list(frame["setting"].unique()) == ["reference", "own"] and len(frame) == 8
    fig = rs.show(tmp_path / "settings.png")
    labels = [t.get_text() for ax in fig.axes for t in ax.get_xticklabels()]
    assert f"base\n{lengths['own']['base']:.1f} tokens" in labels
    assert layout_problems(fig) == []
    left, right = (ax.title.get_window_extent() for ax in fig.axes[:2])
    assert left.x1 < right.x0  # the two panels' titles do not run together
    pyplot().close(fig)
    import shiftlens

    assert shiftlens.load(rs.save(tmp_path / "rs")).equals(rs)


def test_headline_own_when_asked_or_without_references(settings):
    own = A.ResponseSettingsResult.from_results(settings.reference, settings.own, headline="own")
    s = own.summary()
    assert s["headline"] == "own" and "as asked (headline='own')" in s["why"]
    assert s["sentence"].index("own greedy") < s["sentence"].index("same reference response")
    one = settings.reference.frame.iloc[:1]
    thin = A.SensitivityResult(one, {r: settings.reference.matrices[r][:1] for r in A.ROLES},
                               settings.reference.instruction_masks[:1], settings.reference.meta)
    own_thin = A.SensitivityResult(settings.own.frame.iloc[:1],
                                   {r: settings.own.matrices[r][:1] for r in A.ROLES},
                                   settings.own.instruction_masks[:1], settings.own.meta)
    auto = A.ResponseSettingsResult.from_results(thin, own_thin)
    assert auto.headline == "own" and "fewer than two prompts" in auto.why()


def test_own_response_sentence_names_the_confound():
    res = _hand([0.5, 0.6, 0.7], [0.1, 0.2, 0.2], resp=(" long base ramble", " a"),
                n_resp=(12, 2))
    s = res.summary()
    assert s["setting"] == "generate" and not s["same_responses"]
    assert "Each model explained its own greedy response (mean length: base 12.0, tuned 2.0 " \
           "tokens): the two models explain different responses" in s["sentence"]


# ====================================================================== item 4: token strings
def test_tokens_are_shown_decoded_never_as_raw_bpe(tiny_dirs, tmp_path, capsys):
    model = load_bridge(tiny_dirs("gpt2")[0])  # byte-level BPE: Ġ for a space, Ċ for newline
    att = A.attribute(model, PROMPTS[0], " cat dog\nred")
    assert any("Ġ" in t for t in att.raw_token_strings) and any("Ċ" in t for t in
                                                                att.raw_token_strings)
    df = att.to_frame()
    assert not df["token"].str.contains("Ġ|Ċ").any()
    assert df["token"].str.match(r"^ \w").any() and "⏎" in list(df["token"])
    assert df["raw_token"].str.contains("Ġ").any()  # kept for whoever needs the vocabulary's
    fig = att.plot()
    ticks = [t.get_text() for ax in fig.axes for t in ax.get_xticklabels() + ax.get_yticklabels()]
    pyplot().close(fig)
    assert ticks and not any(re.search("Ġ|Ċ", t) for t in ticks)
    from shiftlens.cli import main

    rc = main(["attribute", str(tiny_dirs("gpt2")[0]), "--prompt", PROMPTS[0].text,
               "--instruction", "Sort the words:", "--response", " cat dog\nred", "--no-progress",
               "--out", str(tmp_path / "cli")])
    out = capsys.readouterr().out
    assert rc == 0 and re.search(r"' \w+'", out) and "'⏎'" in out
    assert not re.search("Ġ|Ċ", out)
    assert not pd.read_csv(tmp_path / "cli" / "attribution.csv")["token"].str.contains(
        "Ġ|Ċ").any()


# ====================================================================== item 5: the figure
@pytest.mark.parametrize("response", [" cat", " cat dog red cat dog red " * 4])
def test_attribution_figure_keeps_everything_inside(tiny_dirs, response):
    model = load_bridge(tiny_dirs("llama")[0])
    att = A.attribute(model, PROMPTS[0], response, model_name="a/rather/long/model-name-here")
    for sparsified in (False, True):
        fig = att.show(sparsified=sparsified)
        assert layout_problems(fig) == [], (att.n_output, sparsified)
        texts = [t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text"))]
        pyplot().close(fig)
        assert any("instruction score" in t for t in texts)
        assert any("importance density" in t for t in texts)


# ====================================================================== item 9: defaults
def test_generation_defaults_are_the_package_default():
    from shiftlens.lenses.attribution.units import SENSITIVITY_UNITS

    for fn in (A.attribute, A.instruction_sensitivity, A.validate_sensitivity,
               A.response_settings, A.position_sensitivity, SENSITIVITY_UNITS.plan):
        d = inspect.signature(fn).parameters["max_new_tokens"].default
        assert d == DEFAULT_MAX_NEW_TOKENS == 32, fn
    for fn in (A.instruction_sensitivity, A.validate_sensitivity, A.followed_comparison,
               A.position_sensitivity, A.response_settings, SENSITIVITY_UNITS.plan):
        assert inspect.signature(fn).parameters["alternative"].default == "two-sided", fn


# ====================================================================== issue 16: your matrices
def test_from_matrices_gives_exactly_instruction_sensitivity(llama_pair_ro):
    with pytest.warns(ShiftlensWarning):
        res = A.instruction_sensitivity(llama_pair_ro, PROMPTS, max_new_tokens=3, seed=4,
                                        progress=False)
    df = res.frame
    kw = dict(prompts=PROMPTS, response="generate", models=res.model_names, seed=4,
              responses={r: list(df[f"{r}_response"]) for r in A.ROLES},
              mean_probs={r: list(df[f"{r}_mean_prob"]) for r in A.ROLES})
    got = A.SensitivityResult.from_matrices(res.matrices, res.instruction_masks, **kw)
    modes = [f"{r}_mode" for r in A.ROLES]
    pd.testing.assert_frame_equal(got.frame.drop(columns=modes), df.drop(columns=modes))
    assert set(got.frame.loc[got.frame["base_n_response"] > 0, "base_mode"]) == {"external"}
    a, b = got.summary(), res.summary()
    for k in ("overall", "by_category", "excluded", "response_lengths", "sentence", "n_scored"):
        assert json.dumps(a[k], sort_keys=True) == json.dumps(b[k], sort_keys=True), k  # NaN-aware
    # transposed matrices ([n_response, n_input], e.g. another library's layout)
    tr = {r: [m.T.clone() for m in res.matrices[r]] for r in A.ROLES}
    got_t = A.SensitivityResult.from_matrices(tr, res.instruction_masks, layout="response_input",
                                              **kw)
    pd.testing.assert_frame_equal(got_t.frame, got.frame)
    # what works on the lens's own result works on these: rescore, followed, figures, saving
    pd.testing.assert_frame_equal(got.rescore(threshold=5).frame.drop(columns=modes),
                                  res.rescore(threshold=5).frame.drop(columns=modes))
    fr = A.followed_comparison(got, A.followed_by_reference(got))
    assert fr.summary()["sentence"]
    fig = got.show()
    assert layout_problems(fig) == []
    pyplot().close(fig)


def test_from_matrices_refuses_wrong_shapes_clearly():
    mask = torch.tensor([True, False, False])
    m = torch.rand(3, 2)
    ok = A.SensitivityResult.from_matrices({"base": [m], "tuned": [m]}, [mask])
    assert ok.frame.loc[0, "n_input"] == 3 and ok.frame.loc[0, "base_n_response"] == 2
    for mats, masks, kw, msg in (
            ({"base": [m.T], "tuned": [m]}, [mask], {},
             r"prompt '#0', base: the instruction mask has 3 input tokens but the matrix "
             r"\(layout='input_response': input tokens along its rows\) has 2; it looks "
             r"transposed: pass layout='response_input'"),
            ({"base": [m], "tuned": [m]}, [mask], {"layout": "response_input"},
             r"has 2; it looks transposed: pass layout='input_response'"),
            ({"base": [torch.rand(4, 2)], "tuned": [m]}, [mask], {}, r"has 4$"),
            ({"base": [m[None]], "tuned": [m]}, [mask], {}, r"matrix must be 2-D, got shape"),
            ({"base": [m[:, :0]], "tuned": [m]}, [mask], {}, r"no response token along its "
                                                              r"columns \(give None"),
            ({"base": [m], "tuned": [m]}, [torch.tensor([1, 0, 0])], {},
             r"instruction mask must be a 1-D boolean tensor"),
            ({"base": [m], "tuned": [m], "chat": [m]}, [mask], {}, r"matrices must be"),
            ({"base": [m, m], "tuned": [m]}, [mask], {}, r"matrices\['base'\]: 2 values for 1"),
            ({"base": [m], "tuned": [m]}, [mask], {"layout": "rows"}, r"layout must be one of"),
            ({"base": [m], "tuned": [m]}, [mask], {"ids": ["a", "a"]}, r"ids: 2 values for 1"),
            ({"base": ["m"], "tuned": [m]}, [mask], {}, r"matrix must be a 2-D tensor or array"),
    ):
        with pytest.raises(ShiftlensError, match=msg):
            A.SensitivityResult.from_matrices(mats, masks, **kw)
    # integer matrices on the paper's 0..10 scale, as numpy arrays, and None for no response
    paper = np.array([[10, 0], [8, 10], [0, 9]])
    res = A.SensitivityResult.from_matrices({"base": [paper], "tuned": [None]}, [mask.numpy()])
    assert res.frame.loc[0, "note"] == "tuned: no matrix" and res.summary()["excluded"] == [
        {"id": "#0", "reason": "tuned: no matrix"}]
    assert res.frame.loc[0, "base_score"] == pytest.approx(
        A.instruction_score(A.importance_density(torch.from_numpy(paper)), mask))


def test_position_analysis_on_your_own_matrices():
    g = torch.Generator().manual_seed(0)
    ids, mats, masks = [], {"base": [], "tuned": []}, []
    for item in ("a", "b", "c"):
        for k, pos in enumerate(A.POSITIONS):
            ids.append(f"{item}@{pos}")
            mask = torch.zeros(6, dtype=torch.bool)
            mask[2 * k: 2 * k + 2] = True
            masks.append(mask)
            for r in A.ROLES:
                mats[r].append(torch.rand(6, 3, generator=g))
    res = A.SensitivityResult.from_matrices(mats, masks, ids=ids)
    pr = A.PositionResult.from_sensitivity(res)
    assert pr.positions == list(A.POSITIONS) and pr.summary()["n_items"] == 3
    w = pr.frame[pr.frame["role"] == "tuned"].pivot_table("score", "item", "position")
    assert pr.summary()["means"]["tuned"]["middle"] == pytest.approx(w["middle"].mean())
    fig = pr.show()
    assert layout_problems(fig) == []
    pyplot().close(fig)


# ====================================================================== docstring examples
@pytest.mark.parametrize("name", ["density", "results", "derived", "core", "placement", "plots",
                                  "external", "compare", "section", "units"])
def test_docstring_examples_run(name):
    mod = importlib.import_module(f"shiftlens.lenses.attribution.{name}")
    res = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert res.failed == 0, f"{res.failed} doctest failures in {name}"
