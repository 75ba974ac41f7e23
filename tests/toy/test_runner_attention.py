"""The runner on the attention lens: per-prompt records equal instruction_attention."""

from __future__ import annotations

import pytest

from shiftlens.errors import ShiftlensError, ShiftlensWarning
from shiftlens.prompts import InstructionPrompt
from shiftlens.runner import load_run, run_lens

pytestmark = pytest.mark.slow
UNITS = "shiftlens.lenses.attention.units:INSTRUCTION_ATTENTION_UNITS"


@pytest.fixture(scope="module")
def prompts():
    from shiftlens.zoo import toy_prompts

    # one prompt without instruction tokens: excluded by the function and by the units
    return [*toy_prompts(10), InstructionPrompt("the cat sleeps on the mat", id="plain")]


def test_runner_equals_instruction_attention(toy, prompts, tmp_path):
    from shiftlens.lenses.attention import instruction_attention
    from shiftlens.zoo import pair_dirs

    with pytest.warns(ShiftlensWarning, match="1 of 11 prompts have no instruction tokens"):
        want = instruction_attention(toy, prompts, progress=False)  # batch_size=8
    with pytest.warns(ShiftlensWarning, match="no instruction tokens"):
        s = run_lens(UNITS, pair_dirs(), prompts, tmp_path / "run", progress=False)
    assert s.complete and s.computed == 22
    got = load_run(tmp_path / "run")
    assert got.differences(want) == [] and got.excluded == ["plain"]
    params = {"query": "last", "layers": [3, 1], "alternative": "greater", "ci": False,
              "seed": 4}
    with pytest.warns(ShiftlensWarning):
        one = instruction_attention(toy, prompts, batch_size=1, progress=False, **params)
    with pytest.warns(ShiftlensWarning):
        run_lens(UNITS, pair_dirs(), prompts, tmp_path / "last", progress=False, params=params)
    assert load_run(tmp_path / "last").differences(one) == []


def test_units_refuse_what_the_function_refuses(toy, prompts, tmp_path):
    from shiftlens.zoo import pair_dirs

    for k, (params, msg) in enumerate([({"query": "first"}, "query"), ({"layers": [9]}, "layer"),
                        ({"batch_size": 4}, "unknown parameter"),
                        ({"alternative": "bigger"}, "alternative")]):
        with pytest.raises(ShiftlensError, match=msg):
            run_lens(UNITS, pair_dirs(), prompts[:2], tmp_path / "run", params=params,
                     progress=False)
        # a plan the lens refused leaves no run behind: the corrected command just runs
        assert not (tmp_path / "run" / "run.json").exists(), k
    run_lens(UNITS, pair_dirs(), prompts[:2], tmp_path / "run", progress=False)
