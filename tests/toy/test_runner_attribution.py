"""The runner on the attribution lens and the embedded pair: equal to instruction_sensitivity.

12 toy prompts (the held-out set: every task), greedy responses of at most 8 tokens (the toy
tasks answer in at most 6 tokens and EOS). The reference is ``instruction_sensitivity`` with both
models resident; the runner loads them from their directories one at a time.
"""

from __future__ import annotations

import json

import pytest
from runner_synth import Faulty

from shiftlens.runner import load_run, resolve_units, run_lens, run_status

pytestmark = pytest.mark.slow
PARAMS = {"max_new_tokens": 8}


@pytest.fixture(scope="module")
def setup(toy):
    from shiftlens.lenses.attribution import instruction_sensitivity
    from shiftlens.zoo import pair_dirs, toy_prompts

    prompts = toy_prompts(12)
    ref = instruction_sensitivity(toy, prompts, progress=False, **PARAMS)
    return tuple(str(d) for d in pair_dirs()), prompts, ref


def test_runner_equals_instruction_sensitivity_bit_for_bit(setup, tmp_path):
    dirs, prompts, ref = setup
    s = run_lens("attribution", dirs, prompts, tmp_path / "run", params=PARAMS, progress=False)
    assert s.complete and s.computed == 24
    got = load_run(tmp_path / "run")
    assert got.differences(ref) == []  # every matrix, score, response and the meta
    assert got.frame["tuned_score"].notna().all()
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["units"] == "attribution" and info["params"]["max_new_tokens"] == 8
    assert info["function"] == "shiftlens.lenses.attribution.compare:instruction_sensitivity"


def test_crash_at_prompt_k_then_resume(setup, tmp_path):
    dirs, prompts, ref = setup
    units = resolve_units("attribution")[0]
    k = 5
    first = Faulty(units, crash=(k, "tuned"))
    with pytest.raises(RuntimeError, match="injected crash"):
        run_lens(first, dirs, prompts, tmp_path / "run", params=PARAMS, progress=False)
    assert first.calls == [(i, "base") for i in range(12)] + [(i, "tuned") for i in range(k)]
    assert run_status(tmp_path / "run")["by_role"] == {"base": 12, "tuned": k}
    second = Faulty(units)
    s = run_lens(second, dirs, prompts, tmp_path / "run", params=PARAMS, resume=True,
                 progress=False)
    assert second.calls == [(i, "tuned") for i in range(k, 12)]  # no base model even loaded
    assert not any(role == "base" for role, _ in second.models)
    assert s.done_before == 12 + k and s.computed == 12 - k
    assert sorted(first.calls + second.calls) == sorted(
        (i, r) for r in ("base", "tuned") for i in range(12))  # each record computed once
    # run.json names no importable units (the first session ran a wrapper): found by name
    assert json.loads((tmp_path / "run" / "run.json").read_text())["units"] is None
    assert load_run(tmp_path / "run").differences(ref) == []


def test_two_shards_merged_equal_the_full_run(setup, tmp_path):
    dirs, prompts, ref = setup
    for i in (0, 1):
        s = run_lens("attribution", dirs, prompts, tmp_path / "run", params=PARAMS,
                     shard=(i, 2), progress=False)
        assert s.computed == 12
    assert s.complete
    assert load_run(tmp_path / "run").differences(ref) == []
