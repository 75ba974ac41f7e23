"""The crosscoder on the diffing organisms: its tuned-only latents name what the topic organism
was fine-tuned for, and stay silent on the control (base vs a copy trained on shuffled data).

Setting (docs/crosscoder.md, "Organisms"): layer 3 (the last) of the 4-layer embedded pair,
``resid_post``, 64 held-out neutral texts (about 3,100 token positions, none of them an
organism's known token), 128 latents, k = 8, 800 steps of 256 rows. On this 128-wide toy pair the
fine-tunings hardly make a latent *exclusive* to the tuned model: with Minder et al.'s thresholds
(Δ >= 0.9, ν < 0.3) no latent of the topic organism is tuned-only (with 256 latents its largest Δ
was 0.87 and its moon latent kept ν_r = 0.64: the base reconstructs part of the direction
through other latents).
The test therefore uses the relaxed :data:`SMALL_PAIR` thresholds (Δ >= 0.8, ν < 1: the tuned
model's own fit must exceed the base's). Pass: ``organism_score >= 0.5`` (for topic, one of its 2
known tokens in the top 20: chance 0.048); silent: ``<= 0.10`` on the control.
"""

from __future__ import annotations

import os

import pytest
import torch

from shiftlens.lenses.crosscoder import CrosscoderConfig, LatentThresholds, organism_crosscoder
from shiftlens.zoo.organisms import CONTROL, neutral_texts, organism_pair, organism_score

PASS, SILENT = 0.5, 0.10
LAYER = 3
SMALL_PAIR = LatentThresholds(outer=0.2, shared_band=0.1, nu_max=1.0)
CONFIG = CrosscoderConfig(n_latents=128, k=8, steps=800, batch_size=256, lr=2e-3,
                          warmup_steps=20, dead_steps=50, checkpoint_every=0, log_every=50)


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory):
    old = os.environ.get("SHIFTLENS_CACHE")
    os.environ["SHIFTLENS_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("SHIFTLENS_CACHE", None)
    else:
        os.environ["SHIFTLENS_CACHE"] = old


def _run(name):
    torch.set_num_threads(1)
    res = organism_crosscoder(organism_pair(name), neutral_texts(64))  # the table's setting
    p = res.meta["params"]
    assert p["layer"] == LAYER and res.meta["n_latents"] == CONFIG.n_latents
    assert res.meta["k"] == CONFIG.k
    return res


@pytest.mark.slow
def test_topic_organism_tuned_only_latents_name_the_moon():
    res = _run("topic")
    spec = res.model_specific("tuned_only")
    assert len(spec) >= 1
    assert organism_score(res.top_tokens(20), "topic") >= PASS
    # the readout is carried by the latents themselves: some tuned-only latent's own top tokens
    assert any(" moon" in t.split(" | ") for t in spec.top_tokens)
    # every tuned-only latent has contexts from the corpus, the activating token marked
    ctx = res.contexts[res.contexts.kind == "tuned_only"]
    assert set(ctx.latent) == set(spec.latent)
    assert ctx.context.str.contains("⟦").all()


@pytest.mark.slow
def test_control_tuned_only_latents_are_silent():
    res = _run(CONTROL)
    assert organism_score(res.top_tokens(20), CONTROL) <= SILENT
