"""The runner on the residual lens: per-prompt "pair" records equal similarity()."""

from __future__ import annotations

import pytest

from shiftlens.errors import ShiftlensError
from shiftlens.runner import load_run, resolve_units, run_lens

pytestmark = pytest.mark.slow
UNITS = "shiftlens.lenses.residual.units:SIMILARITY_UNITS"


def test_runner_equals_similarity(toy, tmp_path):
    from shiftlens.lenses.residual import similarity
    from shiftlens.zoo import pair_dirs, toy_prompts

    prompts = toy_prompts(10)
    want = similarity(toy, prompts, per_token=True, progress=False)  # batch_size=8
    s = run_lens(UNITS, pair_dirs(), prompts, tmp_path / "run", params={"per_token": True},
                 progress=False)
    assert s.complete and s.computed == 10 and s.total == 10  # one "pair" record per prompt
    got = load_run(tmp_path / "run")
    assert got.differences(want) == [] and len(got.tokens) > 0
    params = {"hooks": ["resid_mid"], "layers": [2, 0], "with_reference": False, "seed": 3}
    want = similarity(toy, prompts, batch_size=3, progress=False, **params)
    run_lens(UNITS, pair_dirs(), prompts, tmp_path / "sub", params=params, shard="0/1",
             progress=False)
    assert load_run(tmp_path / "sub").differences(want) == []


def test_units_refuse_what_the_function_refuses(tmp_path):
    from shiftlens.zoo import pair_dirs, toy_prompts

    for params, msg in [({"hooks": ["resid_top"]}, "unknown residual hook"),
                        ({"n_boot": 0}, "n_boot"), ({"batch_size": 2}, "unknown parameter")]:
        with pytest.raises(ShiftlensError, match=msg):
            run_lens(UNITS, pair_dirs(), toy_prompts(2), tmp_path / "run", params=params,
                     progress=False)
    with pytest.raises(ShiftlensError, match="several functions"):
        resolve_units("shiftlens.lenses.residual.units:UNITS")
