"""The residual lens on the embedded pair (shiftlens.zoo): only what holds for any pair."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shiftlens.residual import output_shift, patching, similarity
from shiftlens.zoo import toy_prompts


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_toy_pair_guaranteed_properties(toy):
    """Only what holds for any pair: lens = logits, KL >= 0, cosine <= 1, the resid identity,
    and 100% from the final residual iff the heads match (checked against the lens)."""
    p = toy
    prompts = toy_prompts(14)
    L = p.cfg.n_layers
    kl = output_shift(p, prompts, progress=False)
    assert kl.lens_check_max_abs_diff < 1e-3
    assert (kl.to_frame().kl > -1e-9).all()
    sim = similarity(p, prompts, progress=False)
    assert (sim.to_frame().cosine <= 1 + 1e-9).all()
    pr = patching(p, prompts, components=["resid_pre", "resid_post"], response="greedy",
                  max_new_tokens=8, directions=["tuned->base"], progress=False)
    f = pr.to_frame()
    for layer in range(L - 1):
        a = f[(f.component == "resid_post") & (f.layer == layer)].sort_values("prompt_id")
        b = f[(f.component == "resid_pre") & (f.layer == layer + 1)].sort_values("prompt_id")
        np.testing.assert_allclose(a.lp_patched.to_numpy(), b.lp_patched.to_numpy(), atol=1e-4)
