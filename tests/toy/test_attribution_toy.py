"""Lens 1 (attribution) on the embedded toy pair, where the shift is known: given the same
(reference) responses, the tuned model's instruction score is higher than the base model's."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as st

from shiftlens import ShiftlensError
from shiftlens import attribution as A


def test_toy_pair_tuned_reads_instruction_more():
    """On the embedded pair, attributed on the same (reference) responses, the tuned model's
    instruction score is higher than the base model's: one-sided Welch p < 0.01 over held-out
    prompts (70, balanced over the 7 tasks). See docs/attribution.md for the numbers, and for
    why the paper's own-response protocol does not show it on this toy pair."""
    zoo = pytest.importorskip("shiftlens.zoo")
    try:
        pair = zoo.toy_pair()
    except (ShiftlensError, FileNotFoundError, OSError) as e:
        pytest.skip(f"embedded toy pair not available: {e}")
    prompts = zoo.toy_prompts(70)
    res = A.instruction_sensitivity(pair, prompts, response="reference", alternative="greater",
                                    progress=False)
    df = res.to_frame()
    assert (df["base_response"] == df["tuned_response"]).all()
    t, b = df["tuned_score"].to_numpy(float), df["base_score"].to_numpy(float)
    assert np.isfinite(t).all() and np.isfinite(b).all()
    ref = st.ttest_ind(t, b, equal_var=False, alternative="greater")
    s = res.summary()["overall"]
    assert s["pvalue"] == pytest.approx(ref.pvalue)
    assert t.mean() > b.mean() and ref.pvalue < 0.01, res.summary()["sentence"]
    # the numbers docs/attribution.md quotes for this check (benchmarks/attribution_protocols.py
    # --results docs/results/bench-attribution-protocols.json) are this run's
    import json
    from pathlib import Path

    quoted = json.loads((Path(__file__).resolve().parents[2] / "docs" / "results"
                         / "bench-attribution-protocols.json").read_text())["values"]
    assert quoted["test_check.n_prompts"] == len(df) == 70
    assert quoted["test_check.mean_a"] == pytest.approx(t.mean(), rel=1e-4)
    assert quoted["test_check.mean_b"] == pytest.approx(b.mean(), rel=1e-4)


def test_toy_pair_both_settings_side_by_side(toy):
    """Issue 15: lens 1 flips with the response setting on the embedded pair, and the Result shows
    both: with the same reference response tuned > base; with each model's own greedy response
    base > tuned, where the base model rambles to the limit and the tuned model answers in a few
    tokens. The headline is the same-response setting and the sentence says why."""
    from shiftlens.zoo import toy_prompts

    rs = A.response_settings(toy, toy_prompts(14), max_new_tokens=12, progress=False)
    s = rs.summary()
    ref, own = s["reference"]["overall"], s["own"]["overall"]
    assert ref["diff"] > 0 and own["diff"] < 0 and not s["agree"], s["sentence"]
    ln = s["response_lengths"]
    assert ln["own"]["base"] > 2 * ln["own"]["tuned"]  # the confound, measured
    assert ln["reference"]["base"] == ln["reference"]["tuned"]
    assert s["headline"] == "reference" and "The two settings point in different directions" in \
        s["sentence"]
    assert f"base {ln['own']['base']:.1f}, tuned {ln['own']['tuned']:.1f} tokens" in s["sentence"]
