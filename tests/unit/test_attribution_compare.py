"""instruction_sensitivity as validate / accumulate / assemble, and Results that refuse to load
when their fields disagree.

Known truths: the one-call result (records computed in the one-process order) must equal, field
by field, the result assembled from the same records computed in another order; a saved result
whose fields were made inconsistent before saving must be refused on load (the manifest is
intact, so only ``validate`` can catch it).
"""

from __future__ import annotations

import copy
import random
import re
import warnings

import pandas as pd
import pytest
import torch

import shiftlens
from shiftlens import ShiftlensError, ShiftlensWarning
from shiftlens import attribution as A
from shiftlens.prompts import InstructionPrompt

PROMPTS = [
    InstructionPrompt("Sort the words: red cat dog\nResponse:", instruction=["Sort the words:"],
                      context=["red cat dog"], id="sort-1", category="sort",
                      reference=" cat dog red"),
    InstructionPrompt("Reverse: blue fish\nResponse:", instruction=["Reverse:"],
                      category="reverse", reference=" fish blue"),  # no id: '#1'
    InstructionPrompt("just some words here\nResponse:", id="noins", category="sort",
                      reference=" ok"),
]


@pytest.fixture(scope="module")
def pair(tiny_dirs):
    base, tuned = tiny_dirs("llama")
    return shiftlens.ModelPair.from_pretrained(base, tuned)


@pytest.fixture(scope="module")
def one_call(pair):
    with pytest.warns(ShiftlensWarning, match="noins"):
        return A.instruction_sensitivity(pair, PROMPTS, max_new_tokens=3, seed=3, progress=False)


def _records(pair, plan, keys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ShiftlensWarning)
        return [A.accumulate_sensitivity(getattr(pair, role), plan, i, role) for i, role in keys]


def test_assembled_from_records_in_any_order_equals_one_call(pair, one_call):
    plan = A.validate_sensitivity(pair, PROMPTS, max_new_tokens=3, seed=3)
    assert plan.ids == ("sort-1", "#1", "noins") and len(plan) == 3
    keys = plan.keys()
    assert keys == [(0, "base"), (0, "tuned"), (1, "base"), (1, "tuned"), (2, "base"),
                    (2, "tuned")]
    shuffled = list(reversed(keys))
    random.Random(0).shuffle(shuffled)
    recs = _records(pair, plan, shuffled)
    back = A.assemble_sensitivity(plan, recs)
    assert back.equals(one_call), back.differences(one_call)
    assert list(back.frame["id"]) == ["sort-1", "#1", "noins"]
    # each record is one model's attribution of one prompt: its matrix is the result's
    for r in recs:
        assert torch.equal(r.matrix, one_call.matrices[r.role][r.index])
        assert r.score == one_call.frame.loc[r.index, f"{r.role}_score"] or (
            r.index == 2 and pd.isna(r.score))


def test_assemble_refuses_missing_duplicate_and_foreign_records(pair, one_call):
    plan = A.validate_sensitivity(pair, PROMPTS, max_new_tokens=3, seed=3)
    recs = _records(pair, plan, plan.keys())
    with pytest.raises(ShiftlensError, match=r"1 records missing.*'noins', 'tuned'"):
        A.assemble_sensitivity(plan, recs[:-1])
    with pytest.raises(ShiftlensError, match="two records for prompt 'sort-1'"):
        A.assemble_sensitivity(plan, recs + recs[:1])
    other = A.validate_sensitivity(pair, PROMPTS[::-1], max_new_tokens=3, seed=3)
    with pytest.raises(ShiftlensError, match="another plan"):
        A.assemble_sensitivity(other, recs)
    with pytest.raises(ShiftlensError, match="role must be one of"):
        A.accumulate_sensitivity(pair.base, plan, 0, "instruct")
    with pytest.raises(ShiftlensError, match="index must be <= 2"):
        A.accumulate_sensitivity(pair.base, plan, 3, "base")


def test_validate_checks_parameters_before_any_model_runs(pair):
    for kw, msg in ((dict(levels=0), "levels must be >= 1"),
                    (dict(threshold=10), "threshold must be <= 9"),
                    (dict(p=1), "p must be > 1"),
                    (dict(mode="sideways"), "mode must be one of"),
                    (dict(chunk_size=0), "chunk_size must be >= 1"),
                    (dict(max_new_tokens=0), "max_new_tokens must be >= 1"),
                    (dict(response="mine"), "response must be 'generate'"),
                    (dict(response=[" a"]), "1 responses given for 3 prompts")):
        with pytest.raises(ShiftlensError, match=msg):
            A.validate_sensitivity(pair, PROMPTS, **kw)


# ====================================================================== refused on load
def _refused(result, tmp_path, name, match, **changes):
    """``validate`` names the inconsistency; a load of the saved directory refuses it."""
    result = copy.copy(result)
    for k, v in changes.items():  # set after construction: the constructor checks shapes too
        setattr(result, k, v)
    with pytest.raises(ShiftlensError, match=match):
        result.validate()
    d = result.save(tmp_path / name)  # save does not validate: the directory is well formed
    where = re.escape(repr(str(d)))
    with pytest.raises(ShiftlensError, match=where):
        shiftlens.load(d)
    with pytest.raises(ShiftlensError, match=where):
        type(result).load(d)


def test_inconsistent_sensitivity_result_is_refused(one_call, tmp_path):
    one_call.validate()
    _refused(one_call, tmp_path, "masks", "3 prompts but 2 masks",
             instruction_masks=one_call.instruction_masks[:2])
    mats = {"base": one_call.matrices["base"],
            "tuned": [one_call.matrices["tuned"][0][:-1], *one_call.matrices["tuned"][1:]]}
    _refused(one_call, tmp_path, "shape", "prompt 0, tuned: matrix of shape", matrices=mats)
    frame = one_call.frame.assign(n_instruction=one_call.frame["n_instruction"] + 1)
    _refused(one_call, tmp_path, "count", "prompt 0: mask of", frame=frame)
    _refused(one_call, tmp_path, "cols", r"lacks columns \['note'\]",
             frame=one_call.frame.drop(columns=["note"]))


def test_inconsistent_attribution_result_is_refused(pair, tmp_path):
    att = A.attribute(pair.tuned, PROMPTS[0], " cat dog red")
    assert shiftlens.load(att.save(tmp_path / "ok")).equals(att)
    _refused(att, tmp_path, "probs", r"probs has shape \(5,\) for 6 response tokens",
             probs=att.probs[:-1])
    _refused(att, tmp_path, "matrix", "matrix has shape", matrix=att.matrix[1:])
    _refused(att, tmp_path, "strings", "token strings for",
             token_strings=att.token_strings[:-1])


def test_inconsistent_followed_and_position_results_are_refused(one_call, tmp_path):
    fr = A.followed_comparison(one_call, {"sort-1": True, "#1": False})
    assert fr.n_unlabelled == 2 and fr.params["n_unlabelled"] == 2
    _refused(fr, tmp_path, "fol", "followed must be boolean",
             frame=fr.frame.assign(followed=fr.frame["followed"].astype(int)))
    frame = pd.DataFrame({"item": ["i"], "id": ["i@top"], "position": ["top"],
                          "role": ["base"], "score": [0.5], "n_input": [3],
                          "n_instruction": [1], "n_response": [2], "response": [" a"]})
    _refused(A.PositionResult(frame, one_call.meta), tmp_path, "pos",
             r"unknown positions \['top'\]")


# ====================================================================== runner units
def test_units_one_model_at_a_time_equal_one_call(pair, one_call, tmp_path):
    """The runner's protocol: plan once, one record per (prompt, model) with only that model,
    plain values in between (saved and read back by the Result encoder), assemble."""
    from shiftlens.lenses import get_lens, resolve_ref

    units = resolve_ref(get_lens("attribution").units)
    assert units.name == "attribution.instruction_sensitivity" and units.roles == ("base", "tuned")
    assert resolve_ref(units.function) is A.instruction_sensitivity
    plan = units.plan(pair, PROMPTS, max_new_tokens=3, seed=3)
    records = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ShiftlensWarning)
        for role in ("tuned", "base"):  # role-major, as a runner with one resident model does
            model = getattr(pair, role)
            for i in reversed(range(len(PROMPTS))):
                records[(i, role)] = units.compute(plan, role, model, PROMPTS[i], i)
    # plan and records through a save and a load (tensors, NaN, None, tuples, prompts)
    carrier = copy.copy(one_call)
    carrier.meta = {**one_call.meta, "plan": plan, "records": [[list(k), v]
                                                               for k, v in records.items()]}
    back = shiftlens.load(carrier.save(tmp_path / "carrier")).meta
    got = units.assemble(back["plan"], PROMPTS, {tuple(k): v for k, v in back["records"]})
    assert got.equals(one_call), got.differences(one_call)
    with pytest.raises(ShiftlensError, match="not the plan's prompt 1"):
        units.compute(plan, "base", pair.base, PROMPTS[0], 1)


def test_runner_run_equals_one_call(tiny_dirs, one_call, tmp_path):
    """``shiftlens run attribution`` (models loaded one at a time, records on disk) gives the
    one-call Result."""
    runner = pytest.importorskip("shiftlens.runner")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ShiftlensWarning)
        s = runner.run_lens("attribution", tiny_dirs("llama"), PROMPTS, tmp_path / "run",
                            params={"max_new_tokens": 3, "seed": 3}, progress=False)
    got = s.load()
    assert got.equals(one_call), got.differences(one_call)
